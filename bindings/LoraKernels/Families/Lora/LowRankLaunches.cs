// The low-rank delta's own launches on a GPU device (kernels/lora.cu), whatever the frozen base:
// u = dropout(x) Aᵀ before a tiled forward, and the parameter gradients du = scale·dy B,
// dB = scale·dyᵀ u, dA = duᵀ dropout(x), none of which reads the base weight. The LoRA backward and
// the QLoRA backward both run these and differ only in their fused base-plus-delta dx kernel; DoRA's
// norm reuses Project for W0·Aᵀ and A·Aᵀ.
using LoraKernels.Backends.Gpu;
using LoraKernels.Runtime;

namespace LoraKernels.Families.Lora;

internal static class LowRankLaunches
{
    /// <summary>u [rows, r] (F32) = dropout(x) Aᵀ for x [rows, in] (lk_lora_project, the tile engine).</summary>
    public static void Project(GpuLaunch gpu, Tensor x, Tensor a, Tensor u, int rows, int inFeatures, int rank, float dropoutP,
                               ulong seed)
    {
        using var args = new KernelArguments()
            .Pointer(x).Pointer(a).Pointer(u)
            .Int(rows).Int(inFeatures).Int(rank).Float(dropoutP).ULong(seed);
        gpu.LaunchTiled(GpuLaunch.KernelFor(x.DType, "lk_lora_project_f32", "lk_lora_project_bf16"), rows, rank, args);
    }

    /// <summary>
    /// dB and dA when requested, and du = scale·dy B, returned (F32 [M, r], owned by the caller) when
    /// dA or the caller's dx needs it (<paramref name="needDu"/>); null otherwise.
    /// </summary>
    public static Tensor? ParameterGradients(GpuLaunch gpu, Tensor x, Tensor b, Tensor u, Tensor dy, float scale, float dropoutP,
                                             ulong seed, int tokens, int inFeatures, int outFeatures, int rank, Tensor? dA,
                                             Tensor? dB, bool needDu)
    {
        DType dtype = x.DType;
        Tensor? du = rank > 0 && (dA is not null || needDu) ? Tensor.Empty(x.Device, DType.F32, tokens, rank) : null;
        try
        {
            if (du is not null)
            {
                using var args = new KernelArguments()
                    .Pointer(dy).Pointer(b).Pointer(du)
                    .Int(tokens).Int(outFeatures).Int(rank).Float(scale);
                gpu.LaunchTiled(GpuLaunch.KernelFor(dtype, "lk_lora_grad_u_f32", "lk_lora_grad_u_bf16"), tokens, rank, args);
            }
            if (dB is not null && rank > 0)
            {
                using var args = new KernelArguments()
                    .Pointer(dy).Pointer(u).Pointer(dB)
                    .Int(tokens).Int(outFeatures).Int(rank).Float(scale);
                gpu.LaunchTiled(GpuLaunch.KernelFor(dtype, "lk_lora_grad_b_f32", "lk_lora_grad_b_bf16"), outFeatures, rank, args);
            }
            if (dA is not null && du is not null)
            {
                using var args = new KernelArguments()
                    .Pointer(du).Pointer(x).Pointer(dA)
                    .Int(tokens).Int(inFeatures).Int(rank).Float(dropoutP).ULong(seed);
                gpu.LaunchTiled(GpuLaunch.KernelFor(dtype, "lk_lora_grad_a_f32", "lk_lora_grad_a_bf16"), rank, inFeatures, args);
            }
            return du;
        }
        catch
        {
            du?.Dispose();
            throw;
        }
    }
}
