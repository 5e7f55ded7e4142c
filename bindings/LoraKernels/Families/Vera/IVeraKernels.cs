using LoraKernels.Backends.Gpu;

namespace LoraKernels.Families.Vera;

/// <summary>
/// VeRA ops (kernels/vera.cu with kernels/lora.cu, native/cpu/vera.cpp), checked by
/// <see cref="Ops.Vera"/> before the call. <c>veraA</c> [r, maxIn] and <c>veraB</c> [maxOut, r]
/// are the shared projections; a layer of W0 [out, in] reads A_l = veraA[:, :in] (row stride
/// maxIn) and B_l = veraB[:out, :]. λ_d is [r], λ_b [out]; every tensor but u is x's dtype.
/// </summary>
internal interface IVeraKernels
{
    /// <summary>u = dropout(x) A_lᵀ (F32 [M, r]); y = x W0ᵀ + bias + λ_b ⊙ ((λ_d ⊙ u) B_lᵀ).</summary>
    void Forward(Tensor x, Tensor w0, Tensor? bias, Tensor veraA, Tensor veraB, Tensor lambdaD, Tensor lambdaB,
                     float dropoutP, ulong seed, Tensor y, Tensor u);

    /// <summary>dx = dy W0 + dropout'((dv ⊙ λ_d) A_l), dλ_d = Σ_t dv ⊙ u, dλ_b = Σ_t dy ⊙ ((λ_d ⊙ u) B_lᵀ), dv = (dy ⊙ λ_b) B_l; null outputs are skipped.</summary>
    void Backward(Tensor w0, Tensor veraA, Tensor veraB, Tensor lambdaD, Tensor lambdaB, Tensor u, Tensor dy,
                      float dropoutP, ulong seed, Tensor? dx, Tensor? dLambdaD, Tensor? dLambdaB);

    /// <summary>w += scale·diag(λ_b)·B_l·diag(λ_d)·A_l in place (unmerge passes -1).</summary>
    void Merge(Tensor w, Tensor veraA, Tensor veraB, Tensor lambdaD, Tensor lambdaB, float scale);

    /// <summary>The implementation for <paramref name="device"/> (created once per device).</summary>
    static IVeraKernels On(Device device) =>
        device.Kernels<IVeraKernels>(static () => new CpuVeraKernels(), static gpu => new GpuVeraKernels(gpu));
}
