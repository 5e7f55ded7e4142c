// Launch code for kernels/elementwise.cu: grid-stride kernels (GpuLaunch's element-wise geometry:
// 256 threads, the grid capped at a few blocks per multiprocessor, the loop covering the rest).
// docs/KERNELS.md documents the geometry.
using LoraKernels.Runtime;

namespace LoraKernels.Backends.Gpu;

internal sealed partial class GpuBackend
{
    public void ReluForward(Tensor x, Tensor y)
    {
        long n = x.ElementCount;
        if (n == 0) return;
        using var args = new KernelArguments().Pointer(x).Pointer(y).Long(n);
        Launcher.LaunchElementwise("lk_ew_relu_forward_f32", n, args);
    }

    public void ReluBackward(Tensor x, Tensor dy, Tensor dx)
    {
        long n = x.ElementCount;
        if (n == 0) return;
        using var args = new KernelArguments().Pointer(x).Pointer(dy).Pointer(dx).Long(n);
        Launcher.LaunchElementwise("lk_ew_relu_backward_f32", n, args);
    }

    public void Axpy(float alpha, Tensor x, Tensor y)
    {
        long n = x.ElementCount;
        if (n == 0) return;
        using var args = new KernelArguments().Float(alpha).Pointer(x).Pointer(y).Long(n);
        Launcher.LaunchElementwise("lk_ew_axpy_f32", n, args);
    }

    public float MseLoss(Tensor pred, Tensor target, Tensor? dpred)
    {
        long n = pred.ElementCount;
        // n == 0 gives 0/0 = NaN, as torch and the CPU kernel do.
        if (n == 0) return float.NaN;
        // One double partial sum of squares per block, added here in block order: deterministic.
        double sum = 0;
        foreach (double partial in Launcher.BlockPartials<double>("lk_ew_mse_loss_f32", n,
                     (args, partials) => args.Pointer(pred).Pointer(target).Pointer(partials).Pointer(dpred).Long(n)))
            sum += partial;
        return (float)(sum / n);
    }

    public long FirstNonFinite(Tensor tensor)
    {
        long n = tensor.ElementCount;
        if (n == 0) return -1;
        string kernel = GpuLaunch.KernelFor(tensor.DType, "lk_ew_first_nonfinite_f32", "lk_ew_first_nonfinite_bf16");
        long first = n;
        foreach (long blockFirst in Launcher.BlockPartials<long>(kernel, n, (args, partials) => args.Pointer(tensor).Long(n).Pointer(partials)))
            first = Math.Min(first, blockFirst);
        return first < n ? first : -1;
    }

    public void Cast(Tensor source, Tensor destination)
    {
        long n = source.ElementCount;
        if (n == 0) return;
        if (source.DType == destination.DType)
        {
            Launcher.Device.CopyDeviceToDevice(source.Buffer, 0, destination.Buffer, 0, source.SizeInBytes);
            return;
        }
        string kernel = (source.DType, destination.DType) switch
        {
            (DType.F32, DType.BF16) => "lk_ew_cast_f32_to_bf16",
            (DType.BF16, DType.F32) => "lk_ew_cast_bf16_to_f32",
            _ => throw new NotSupportedException($"No cast kernel from {source.DType} to {destination.DType}."),
        };
        using var args = new KernelArguments().Pointer(source).Pointer(destination).Long(n);
        Launcher.LaunchElementwise(kernel, n, args);
    }

    public void Fill(Tensor tensor, float value)
    {
        long n = tensor.ElementCount;
        if (n == 0) return;
        string kernel = GpuLaunch.KernelFor(tensor.DType, "lk_ew_fill_f32", "lk_ew_fill_bf16");
        using var args = new KernelArguments().Pointer(tensor).Float(value).Long(n);
        Launcher.LaunchElementwise(kernel, n, args);
    }
}
