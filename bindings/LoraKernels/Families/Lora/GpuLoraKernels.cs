// ILoraKernels on a GPU device (kernels/lora.cu): which kernel, grid, block, dynamic shared memory
// and argument order for the LoRA forward, backward and merge. docs/KERNELS.md documents each
// geometry, and tests/native/parity launches the kernels with the same formulas (GpuLaunch).
using LoraKernels.Backends.Gpu;
using LoraKernels.Runtime;

namespace LoraKernels.Families.Lora;

internal sealed class GpuLoraKernels(GpuLaunch gpu) : ILoraKernels
{
    /// <summary>
    /// M ≤ 16 with room in shared memory: one decode launch; else project u, then the tiled forward (on tensor
    /// cores for BF16 where the device has them).
    /// </summary>
    public void Forward(Tensor x, Tensor w0, Tensor? bias, Tensor a, Tensor b, float scale, float dropoutP, ulong seed,
                        Tensor y, Tensor u) =>
        LaunchForward(x, w0, bias, a, b, scale, dropoutP, seed, y, u, Dims(x, w0, a));

    /// <summary>
    /// y = x W0ᵀ + bias alone: the forward's kernels with r = 0 (A, B and u null), the base product that the
    /// Kronecker adapter adds its own term to in place.
    /// </summary>
    internal void BaseForward(Tensor x, Tensor w0, Tensor? bias, Tensor y) =>
        LaunchForward(x, w0, bias, null, null, 0f, 0f, 0, y, null, Dims(x, w0, null));

    private void LaunchForward(Tensor x, Tensor w0, Tensor? bias, Tensor? a, Tensor? b, float scale, float dropoutP, ulong seed,
                               Tensor y, Tensor? u, (int Tokens, int In, int Out, int Rank) dims)
    {
        var (tokens, inFeatures, outFeatures, rank) = dims;
        DType dtype = x.DType;
        if (gpu.DecodeGeometry(tokens, inFeatures, outFeatures, rank) is { } geometry)
        {
            using var args = new KernelArguments()
                .Pointer(x).Pointer(w0).Pointer(bias).Pointer(a)
                .Pointer(b).Pointer(y).Pointer(u)
                .Int(tokens).Int(inFeatures).Int(outFeatures).Int(rank)
                .Float(scale).Float(dropoutP).ULong(seed);
            gpu.Launch(GpuLaunch.KernelFor(dtype, "lk_lora_forward_decode_f32", "lk_lora_forward_decode_bf16"), new Dim3(geometry.Blocks),
                       new Dim3(GpuLaunch.DecodeThreads), geometry.SharedBytes, args);
            return;
        }

        if (rank > 0) LowRankLaunches.Project(gpu, x, a!, u!, tokens, inFeatures, rank, dropoutP, seed);
        using var tiledArgs = new KernelArguments()
            .Pointer(x).Pointer(w0).Pointer(bias).Pointer(u)
            .Pointer(b).Pointer(y)
            .Int(tokens).Int(inFeatures).Int(outFeatures).Int(rank).Float(scale);
        gpu.LaunchProduct(dtype, "lk_lora_forward_tiled_f32", "lk_lora_forward_tiled_bf16", "lk_lora_forward_mma_bf16", tokens, outFeatures,
                          tiledArgs);
    }

    /// <summary>The low-rank delta's parameter gradients (LowRankLaunches), then dx = dy W0 + dropout'(du A) in one pass.</summary>
    public void Backward(Tensor x, Tensor w0, Tensor a, Tensor b, Tensor u, Tensor dy, float scale, float dropoutP, ulong seed,
                         Tensor? dx, Tensor? dA, Tensor? dB)
    {
        var (tokens, inFeatures, outFeatures, rank) = Dims(x, w0, a);
        using Tensor? du = LowRankLaunches.ParameterGradients(gpu, x, b, u, dy, scale, dropoutP, seed, tokens, inFeatures,
                                                              outFeatures, rank, dA, dB, needDu: dx is not null);
        if (dx is null) return;
        LaunchGradX(dy, w0, du, a, dx, (tokens, inFeatures, outFeatures, rank), dropoutP, seed);
    }

    /// <summary>dx = dy W0 alone (grad_x with r = 0), the base gradient the Kronecker adapter adds its own term to.</summary>
    internal void BaseGradX(Tensor dy, Tensor w0, Tensor dx)
    {
        int outFeatures = checked((int)w0.Shape[0]);
        LaunchGradX(dy, w0, null, null, dx, (checked((int)(dy.ElementCount / outFeatures)), checked((int)w0.Shape[1]), outFeatures, 0), 0f, 0);
    }

    private void LaunchGradX(Tensor dy, Tensor w0, Tensor? du, Tensor? a, Tensor dx, (int Tokens, int In, int Out, int Rank) dims,
                             float dropoutP, ulong seed)
    {
        var (tokens, inFeatures, outFeatures, rank) = dims;
        using var args = new KernelArguments()
            .Pointer(dy).Pointer(w0).Pointer(du).Pointer(a)
            .Pointer(dx)
            .Int(tokens).Int(inFeatures).Int(outFeatures).Int(rank).Float(dropoutP).ULong(seed);
        gpu.LaunchProduct(dx.DType, "lk_lora_grad_x_f32", "lk_lora_grad_x_bf16", "lk_lora_grad_x_mma_bf16", tokens, inFeatures, args);
    }

    public void Merge(Tensor w, Tensor a, Tensor b, float scale)
    {
        int outFeatures = checked((int)w.Shape[0]), inFeatures = checked((int)w.Shape[1]);
        int rank = checked((int)a.Shape[0]);
        if (rank == 0) return;
        using var args = new KernelArguments()
            .Pointer(w).Pointer(a).Pointer(b)
            .Int(outFeatures).Int(inFeatures).Int(rank).Float(scale);
        gpu.LaunchTiled(GpuLaunch.KernelFor(w.DType, "lk_lora_merge_f32", "lk_lora_merge_bf16"), outFeatures, inFeatures, args);
    }

    /// <summary>(M, in, out, r): tokens are x's elements over in, so x may have any leading shape.</summary>
    private static (int Tokens, int In, int Out, int Rank) Dims(Tensor x, Tensor w0, Tensor? a)
    {
        int inFeatures = checked((int)w0.Shape[1]);
        return (checked((int)(x.ElementCount / inFeatures)), inFeatures, checked((int)w0.Shape[0]), a is null ? 0 : checked((int)a.Shape[0]));
    }
}
