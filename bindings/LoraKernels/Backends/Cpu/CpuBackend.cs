// IBackend over the native CPU kernels (libloraknl_cpu). The kernels compute in fp32 on fp32
// storage; a BF16 tensor is widened into a temporary fp32 buffer before the call and an output
// is narrowed back after it (lk_cpu_bf16_to_f32 / lk_cpu_f32_to_bf16, the kernels' rounding).
using System.Runtime.InteropServices;
using LoraKernels.Interop;

namespace LoraKernels.Backends.Cpu;

internal sealed unsafe partial class CpuBackend : IBackend
{
    public void LoraForward(Tensor x, Tensor w0, Tensor? bias, Tensor a, Tensor b, float scale,
                            float dropoutP, ulong seed, Tensor y, Tensor u)
    {
        using var f32 = new Fp32Staging();
        long m = x.Shape[0], inFeatures = x.Shape[1], outFeatures = w0.Shape[0], r = a.Shape[0];
        float* yPointer = f32.Output(y);
        Check.Cpu(NativeCpu.lk_cpu_lora_forward(m, inFeatures, outFeatures, r, f32.Input(x), f32.Input(w0), f32.Input(bias),
                                                f32.Input(a), f32.Input(b), scale, dropoutP, seed, yPointer, f32.Output(u)));
        f32.WriteBack();
    }

    public void LoraBackward(Tensor x, Tensor w0, Tensor a, Tensor b, Tensor u, Tensor dy, float scale,
                             float dropoutP, ulong seed, Tensor? dx, Tensor? dA, Tensor? dB)
    {
        using var f32 = new Fp32Staging();
        long m = x.Shape[0], inFeatures = x.Shape[1], outFeatures = w0.Shape[0], r = a.Shape[0];
        Check.Cpu(NativeCpu.lk_cpu_lora_backward(m, inFeatures, outFeatures, r, f32.Input(x), f32.Input(w0), f32.Input(a),
                                                 f32.Input(b), f32.Input(u), f32.Input(dy), scale, dropoutP, seed,
                                                 f32.Output(dx), f32.Output(dA), f32.Output(dB)));
        f32.WriteBack();
    }

    public void LoraMerge(Tensor w, Tensor a, Tensor b, float scale)
    {
        using var f32 = new Fp32Staging();
        Check.Cpu(NativeCpu.lk_cpu_lora_merge(w.Shape[0], w.Shape[1], a.Shape[0], f32.InputOutput(w), f32.Input(a), f32.Input(b), scale));
        f32.WriteBack();
    }

    public void ReluForward(Tensor x, Tensor y)
    {
        using var f32 = new Fp32Staging();
        Check.Cpu(NativeCpu.lk_cpu_relu_forward(x.ElementCount, f32.Input(x), f32.Output(y)));
        f32.WriteBack();
    }

    public void ReluBackward(Tensor x, Tensor dy, Tensor dx)
    {
        using var f32 = new Fp32Staging();
        Check.Cpu(NativeCpu.lk_cpu_relu_backward(x.ElementCount, f32.Input(x), f32.Input(dy), f32.Output(dx)));
        f32.WriteBack();
    }

    public void Axpy(float alpha, Tensor x, Tensor y)
    {
        using var f32 = new Fp32Staging();
        Check.Cpu(NativeCpu.lk_cpu_axpy(x.ElementCount, alpha, f32.Input(x), f32.InputOutput(y)));
        f32.WriteBack();
    }

    public float MseLoss(Tensor pred, Tensor target, Tensor? dpred)
    {
        using var f32 = new Fp32Staging();
        float loss;
        Check.Cpu(NativeCpu.lk_cpu_mse_loss(pred.ElementCount, f32.Input(pred), f32.Input(target), &loss, f32.Output(dpred)));
        f32.WriteBack();
        return loss;
    }

    public void AdamWStep(Tensor param, Tensor grad, Tensor m, Tensor v, float lr, float beta1, float beta2,
                          float eps, float weightDecay, long step)
    {
        using var f32 = new Fp32Staging();
        Check.Cpu(NativeCpu.lk_cpu_adamw_step(param.ElementCount, f32.InputOutput(param), f32.Input(grad), f32.InputOutput(m),
                                              f32.InputOutput(v), lr, beta1, beta2, eps, weightDecay, step));
        f32.WriteBack();
    }

    public void Cast(Tensor source, Tensor destination)
    {
        long n = source.ElementCount;
        switch (source.DType, destination.DType)
        {
            case (DType.F32, DType.BF16):
                Check.Cpu(NativeCpu.lk_cpu_f32_to_bf16(n, (float*)source.Address, (ushort*)destination.Address));
                break;
            case (DType.BF16, DType.F32):
                Check.Cpu(NativeCpu.lk_cpu_bf16_to_f32(n, (ushort*)source.Address, (float*)destination.Address));
                break;
            default:
                Buffer.MemoryCopy((void*)source.Address, (void*)destination.Address, destination.SizeInBytes, source.SizeInBytes);
                break;
        }
    }

    public void Fill(Tensor tensor, float value)
    {
        long n = tensor.ElementCount;
        for (long done = 0; done < n; done += int.MaxValue)
        {
            int count = (int)Math.Min(int.MaxValue, n - done);
            if (tensor.DType == DType.F32) new Span<float>((float*)tensor.Address + done, count).Fill(value);
            else new Span<ushort>((ushort*)tensor.Address + done, count).Fill(BFloat16.FromSingle(value));
        }
    }

    /// <summary>
    /// fp32 views of the tensors of one native call: an F32 tensor is used in place; a BF16 one
    /// gets a temporary fp32 copy (inputs converted now, outputs converted back by WriteBack).
    /// Temporaries are freed on Dispose, also when the call threw.
    /// </summary>
    private sealed class Fp32Staging : IDisposable
    {
        private readonly List<IntPtr> _temporaries = new();
        private readonly List<(IntPtr Staged, Tensor Target)> _outputs = new();

        public float* Input(Tensor? tensor) => tensor is null ? null : Stage(tensor, convertIn: true, writeBack: false);
        public float* Output(Tensor? tensor) => tensor is null ? null : Stage(tensor, convertIn: false, writeBack: true);
        public float* InputOutput(Tensor tensor) => Stage(tensor, convertIn: true, writeBack: true);

        private float* Stage(Tensor tensor, bool convertIn, bool writeBack)
        {
            if (tensor.DType == DType.F32) return (float*)tensor.Address;
            float* staged = (float*)NativeMemory.AlignedAlloc((nuint)Math.Max(tensor.ElementCount * sizeof(float), 1), 64);
            if (staged is null) throw new OutOfMemoryException($"No host memory for an fp32 copy of {tensor.Describe()}.");
            _temporaries.Add((IntPtr)staged);
            if (convertIn) Check.Cpu(NativeCpu.lk_cpu_bf16_to_f32(tensor.ElementCount, (ushort*)tensor.Address, staged));
            if (writeBack) _outputs.Add(((IntPtr)staged, tensor));
            return staged;
        }

        public void WriteBack()
        {
            foreach (var (staged, target) in _outputs)
                Check.Cpu(NativeCpu.lk_cpu_f32_to_bf16(target.ElementCount, (float*)staged, (ushort*)target.Address));
        }

        public void Dispose()
        {
            foreach (IntPtr temporary in _temporaries) NativeMemory.AlignedFree((void*)temporary);
            _temporaries.Clear();
        }
    }
}
