// IBackend over the native CPU kernels (libloraknl_cpu). Every call goes through a CpuCall, which
// leases the memory it passes for the call's duration. The kernels compute in fp32 on fp32
// storage; a BF16 tensor is widened into a temporary fp32 buffer before the call and an output
// is narrowed back after it (lk_cpu_bf16_to_f32 / lk_cpu_f32_to_bf16, the kernels' rounding).
using System.Runtime.InteropServices;
using LoraKernels.Interop;
using LoraKernels.Runtime;

namespace LoraKernels.Backends.Cpu;

internal sealed unsafe partial class CpuBackend : IBackend
{
    public void LoraForward(Tensor x, Tensor w0, Tensor? bias, Tensor a, Tensor b, float scale,
                            float dropoutP, ulong seed, Tensor y, Tensor u)
    {
        using var call = new CpuCall();
        long m = x.Shape[0], inFeatures = x.Shape[1], outFeatures = w0.Shape[0], r = a.Shape[0];
        float* yPointer = call.Output(y);
        Check.Cpu(NativeCpu.lk_cpu_lora_forward(m, inFeatures, outFeatures, r, call.Input(x), call.Input(w0), call.Input(bias),
                                                call.Input(a), call.Input(b), scale, dropoutP, seed, yPointer, call.Output(u)));
        call.WriteBack();
    }

    public void LoraBackward(Tensor x, Tensor w0, Tensor a, Tensor b, Tensor u, Tensor dy, float scale,
                             float dropoutP, ulong seed, Tensor? dx, Tensor? dA, Tensor? dB)
    {
        using var call = new CpuCall();
        long m = x.Shape[0], inFeatures = x.Shape[1], outFeatures = w0.Shape[0], r = a.Shape[0];
        Check.Cpu(NativeCpu.lk_cpu_lora_backward(m, inFeatures, outFeatures, r, call.Input(x), call.Input(w0), call.Input(a),
                                                 call.Input(b), call.Input(u), call.Input(dy), scale, dropoutP, seed,
                                                 call.Output(dx), call.Output(dA), call.Output(dB)));
        call.WriteBack();
    }

    public void LoraMerge(Tensor w, Tensor a, Tensor b, float scale)
    {
        using var call = new CpuCall();
        Check.Cpu(NativeCpu.lk_cpu_lora_merge(w.Shape[0], w.Shape[1], a.Shape[0], call.InputOutput(w), call.Input(a), call.Input(b), scale));
        call.WriteBack();
    }

    public void ReluForward(Tensor x, Tensor y)
    {
        using var call = new CpuCall();
        Check.Cpu(NativeCpu.lk_cpu_relu_forward(x.ElementCount, call.Input(x), call.Output(y)));
        call.WriteBack();
    }

    public void ReluBackward(Tensor x, Tensor dy, Tensor dx)
    {
        using var call = new CpuCall();
        Check.Cpu(NativeCpu.lk_cpu_relu_backward(x.ElementCount, call.Input(x), call.Input(dy), call.Output(dx)));
        call.WriteBack();
    }

    public void Axpy(float alpha, Tensor x, Tensor y)
    {
        using var call = new CpuCall();
        Check.Cpu(NativeCpu.lk_cpu_axpy(x.ElementCount, alpha, call.Input(x), call.InputOutput(y)));
        call.WriteBack();
    }

    public float MseLoss(Tensor pred, Tensor target, Tensor? dpred)
    {
        using var call = new CpuCall();
        float loss;
        Check.Cpu(NativeCpu.lk_cpu_mse_loss(pred.ElementCount, call.Input(pred), call.Input(target), &loss, call.Output(dpred)));
        call.WriteBack();
        return loss;
    }

    public long FirstNonFinite(Tensor tensor)
    {
        using var call = new CpuCall();
        long index;
        Check.Cpu(NativeCpu.lk_cpu_first_nonfinite(tensor.ElementCount, call.Input(tensor), &index));
        return index;
    }

    public void AdamWStep(Tensor param, Tensor grad, Tensor m, Tensor v, float lr, float beta1, float beta2,
                          float eps, float weightDecay, long step)
    {
        using var call = new CpuCall();
        Check.Cpu(NativeCpu.lk_cpu_adamw_step(param.ElementCount, call.InputOutput(param), call.Input(grad), call.InputOutput(m),
                                              call.InputOutput(v), lr, beta1, beta2, eps, weightDecay, step));
        call.WriteBack();
    }

    public void Cast(Tensor source, Tensor destination)
    {
        using var call = new CpuCall();
        long n = source.ElementCount;
        void* from = call.Raw(source), to = call.Raw(destination);
        switch (source.DType, destination.DType)
        {
            case (DType.F32, DType.BF16):
                Check.Cpu(NativeCpu.lk_cpu_f32_to_bf16(n, (float*)from, (ushort*)to));
                break;
            case (DType.BF16, DType.F32):
                Check.Cpu(NativeCpu.lk_cpu_bf16_to_f32(n, (ushort*)from, (float*)to));
                break;
            default:
                Buffer.MemoryCopy(from, to, destination.SizeInBytes, source.SizeInBytes);
                break;
        }
    }

    public void Fill(Tensor tensor, float value)
    {
        using var call = new CpuCall();
        void* storage = call.Raw(tensor);
        long n = tensor.ElementCount;
        for (long done = 0; done < n; done += int.MaxValue)
        {
            int count = (int)Math.Min(int.MaxValue, n - done);
            if (tensor.DType == DType.F32) new Span<float>((float*)storage + done, count).Fill(value);
            else new Span<ushort>((ushort*)storage + done, count).Fill(BFloat16.FromSingle(value));
        }
    }

    /// <summary>
    /// The memory of one native call. Every tensor or buffer whose address it hands out is leased
    /// until Dispose (BufferLeases), so the call cannot outlive its memory; an F32 tensor is used in
    /// place, a BF16 one gets a temporary fp32 copy (inputs converted now, outputs converted back by
    /// WriteBack). Temporaries and leases are released on Dispose, also when the call threw.
    /// </summary>
    private sealed class CpuCall : IDisposable
    {
        private readonly BufferLeases _leases = new();
        private readonly List<IntPtr> _temporaries = new();
        private readonly List<(IntPtr Staged, long Count, IntPtr Target)> _outputs = new();

        public float* Input(Tensor? tensor) => tensor is null ? null : Stage(tensor, convertIn: true, writeBack: false);
        public float* Output(Tensor? tensor) => tensor is null ? null : Stage(tensor, convertIn: false, writeBack: true);
        public float* InputOutput(Tensor tensor) => Stage(tensor, convertIn: true, writeBack: true);

        /// <summary>The tensor's own storage, whatever its dtype (for dtype-aware code such as casts).</summary>
        public void* Raw(Tensor tensor) => (void*)_leases.Address(tensor);

        public byte* Bytes(DeviceBuffer? buffer) => (byte*)_leases.Address(buffer);
        public float* Floats(DeviceBuffer? buffer) => (float*)_leases.Address(buffer);

        /// <summary>The statistics of <paramref name="weight"/> as the CPU kernels read them, their buffers leased.</summary>
        public LkQuantStats Stats(QuantizedWeight weight) => new()
        {
            QuantType = (int)weight.QuantType,
            BlockSize = weight.BlockSize,
            Absmax = Floats(weight.Absmax),
            QAbsmax = Bytes(weight.QAbsmax),
            Absmax2 = Floats(weight.Absmax2),
            Offset = weight.IsNested ? weight.Offset : 0f,
        };

        private float* Stage(Tensor tensor, bool convertIn, bool writeBack)
        {
            void* storage = Raw(tensor);
            if (tensor.DType == DType.F32) return (float*)storage;
            long bytes = Math.Max(tensor.ElementCount * sizeof(float), 1);
            float* staged;
            try
            {
                staged = (float*)NativeMemory.AlignedAlloc((nuint)bytes, 64);
            }
            catch (OutOfMemoryException e)
            {
                throw new OutOfMemoryException($"LoraKernels could not allocate {bytes} bytes of host memory for an fp32 copy of {tensor.Describe()}.", e);
            }
            _temporaries.Add((IntPtr)staged);
            if (convertIn) Check.Cpu(NativeCpu.lk_cpu_bf16_to_f32(tensor.ElementCount, (ushort*)storage, staged));
            if (writeBack) _outputs.Add(((IntPtr)staged, tensor.ElementCount, (IntPtr)storage));
            return staged;
        }

        public void WriteBack()
        {
            foreach (var (staged, count, target) in _outputs)
                Check.Cpu(NativeCpu.lk_cpu_f32_to_bf16(count, (float*)staged, (ushort*)target));
        }

        public void Dispose()
        {
            foreach (IntPtr temporary in _temporaries) NativeMemory.AlignedFree((void*)temporary);
            _temporaries.Clear();
            _leases.Dispose();
        }
    }
}
