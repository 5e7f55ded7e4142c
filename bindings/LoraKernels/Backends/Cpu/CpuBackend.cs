// IBackend (the shared ops) over the native CPU kernels (libloraknl_cpu). Every call goes through a
// CpuCall, which leases the memory it passes for the call's duration. The kernels compute in fp32 on fp32
// storage; a BF16 tensor is widened into a temporary fp32 buffer before the call and an output
// is narrowed back after it (lk_cpu_bf16_to_f32 / lk_cpu_f32_to_bf16, the kernels' rounding).
using System.Runtime.InteropServices;
using LoraKernels.Interop;
using LoraKernels.Runtime;

namespace LoraKernels.Backends.Cpu;

internal sealed unsafe partial class CpuBackend : IBackend
{
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
}
