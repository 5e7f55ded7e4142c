// Launch code for kernels/elementwise.cu: grid-stride kernels of 256 threads whose grid is the
// element count's blocks, capped at a few blocks per multiprocessor (the loop covers the rest).
// docs/KERNELS.md documents the geometry.
using LoraKernels.Runtime;

namespace LoraKernels.Backends.Gpu;

internal sealed partial class GpuBackend
{
    internal const uint ElementwiseThreads = 256;  // kEwThreads and kOptimThreads
    internal const int ElementwiseBlocksPerMultiprocessor = 8;  // enough resident warps to saturate memory

    public void ReluForward(Tensor x, Tensor y)
    {
        long n = x.ElementCount;
        if (n == 0) return;
        using var args = new KernelArguments().Pointer(x).Pointer(y).Long(n);
        LaunchElementwise("lk_ew_relu_forward_f32", n, args);
    }

    public void ReluBackward(Tensor x, Tensor dy, Tensor dx)
    {
        long n = x.ElementCount;
        if (n == 0) return;
        using var args = new KernelArguments().Pointer(x).Pointer(dy).Pointer(dx).Long(n);
        LaunchElementwise("lk_ew_relu_backward_f32", n, args);
    }

    public void Axpy(float alpha, Tensor x, Tensor y)
    {
        long n = x.ElementCount;
        if (n == 0) return;
        using var args = new KernelArguments().Float(alpha).Pointer(x).Pointer(y).Long(n);
        LaunchElementwise("lk_ew_axpy_f32", n, args);
    }

    public float MseLoss(Tensor pred, Tensor target, Tensor? dpred)
    {
        long n = pred.ElementCount;
        // The kernel adds one partial sum of squares per block into a zeroed float; the mean is
        // taken here. n == 0 gives 0/0 = NaN, as torch and the CPU kernel do.
        using Tensor sum = Tensor.Empty(pred.Device, DType.F32, 1);
        Fill(sum, 0f);
        if (n > 0)
        {
            using var args = new KernelArguments()
                .Pointer(pred).Pointer(target).Pointer(sum).Pointer(dpred)
                .Long(n);
            LaunchElementwise("lk_ew_mse_loss_f32", n, args);
        }
        return (float)((double)sum.ToArray()[0] / n);
    }

    public void Cast(Tensor source, Tensor destination)
    {
        long n = source.ElementCount;
        if (n == 0) return;
        if (source.DType == destination.DType)
        {
            _device.CopyDeviceToDevice(source.Buffer, 0, destination.Buffer, 0, source.SizeInBytes);
            return;
        }
        string kernel = (source.DType, destination.DType) switch
        {
            (DType.F32, DType.BF16) => "lk_ew_cast_f32_to_bf16",
            (DType.BF16, DType.F32) => "lk_ew_cast_bf16_to_f32",
            _ => throw new NotSupportedException($"No cast kernel from {source.DType} to {destination.DType}."),
        };
        using var args = new KernelArguments().Pointer(source).Pointer(destination).Long(n);
        LaunchElementwise(kernel, n, args);
    }

    public void Fill(Tensor tensor, float value)
    {
        long n = tensor.ElementCount;
        if (n == 0) return;
        string kernel = KernelFor(tensor.DType, "lk_ew_fill_f32", "lk_ew_fill_bf16");
        using var args = new KernelArguments().Pointer(tensor).Float(value).Long(n);
        LaunchElementwise(kernel, n, args);
    }

    /// <summary>Grid for a grid-stride kernel over n elements.</summary>
    internal static uint ElementwiseGrid(long n, int multiprocessors)
    {
        long blocks = Math.Min((n + ElementwiseThreads - 1) / ElementwiseThreads,
                               (long)Math.Max(multiprocessors, 1) * ElementwiseBlocksPerMultiprocessor);
        return (uint)Math.Max(blocks, 1);
    }

    private void LaunchElementwise(string kernel, long n, KernelArguments args) =>
        _device.Launch(kernel, new Dim3(ElementwiseGrid(n, _device.MultiprocessorCount)), new Dim3(ElementwiseThreads), 0,
                       args);
}
