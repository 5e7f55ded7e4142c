using LoraKernels.Backends.Gpu;

namespace LoraKernels.Families.Dora;

/// <summary>
/// DoRA ops (kernels/dora.cu, native/cpu/dora.cpp), checked by <see cref="Ops.Dora"/> before the call.
/// The weight norm, ‖w‖² and the intermediates u are F32; magnitude, z and the gradients share x's dtype.
/// </summary>
internal interface IDoraKernels
{
    /// <summary>sqnorm [out] (F32) = Σ_k W0[i,k]².</summary>
    void RowSquaredNorm(Tensor w0, Tensor sqnorm);

    /// <summary>norm [out] (F32) = ‖W0 + scale·B·A‖_row from ‖W0‖² without forming B·A.</summary>
    void WeightNorm(Tensor w0, Tensor w0SquaredNorm, Tensor a, Tensor b, float scale, Tensor norm);

    /// <summary>u = x Aᵀ (F32), z = x W0ᵀ + scale·u Bᵀ (written when not null), y = (m / norm) ⊙ z + bias.</summary>
    void Forward(Tensor x, Tensor w0, Tensor? bias, Tensor a, Tensor b, float scale, Tensor magnitude, Tensor norm,
                     Tensor y, Tensor u, Tensor? z);

    /// <summary>dm = Σ_t dy ⊙ z / norm; dz = dy ⊙ m / norm, then the LoRA backward on dz; null outputs are skipped.</summary>
    void Backward(Tensor x, Tensor w0, Tensor a, Tensor b, Tensor u, Tensor z, Tensor dy, float scale,
                      Tensor magnitude, Tensor norm, Tensor? dx, Tensor? dA, Tensor? dB, Tensor? dMagnitude);

    /// <summary>
    /// QDoRA's norm: as <see cref="WeightNorm"/> with P given transposed, pt = (W0 Aᵀ)ᵀ [r, out] F32
    /// (A·deq(W)ᵀ from the 4-bit matmul); G = A Aᵀ is formed here. F32 layers only.
    /// </summary>
    void WeightNormTransposed(Tensor w0SquaredNorm, Tensor pt, Tensor a, Tensor b, float scale, Tensor norm);

    /// <summary>y = (m / norm) ⊙ z + bias, the forward's column scale alone (z may be y).</summary>
    void ScaleColumns(Tensor z, Tensor magnitude, Tensor norm, Tensor? bias, Tensor y);

    /// <summary>dm = Σ_t dy ⊙ z / norm and dz = dy ⊙ m / norm, the backward's first pass alone; null outputs are skipped.</summary>
    void ScaleGrad(Tensor dy, Tensor z, Tensor magnitude, Tensor norm, Tensor? dMagnitude, Tensor? dz);

    /// <summary>y = x ⊙ mask, the LoRA kernels' hashed dropout mask on flat element i (F32; x may be y).</summary>
    void Dropout(Tensor x, float p, ulong seed, Tensor y);

    /// <summary>w[i, :] *= m_i / norm_i, or norm_i / m_i when <paramref name="invert"/>.</summary>
    void ScaleRows(Tensor w, Tensor magnitude, Tensor norm, bool invert);

    /// <summary>The implementation for <paramref name="device"/> (created once per device).</summary>
    static IDoraKernels On(Device device) =>
        device.Kernels<IDoraKernels>(static () => new CpuDoraKernels(), static gpu => new GpuDoraKernels(gpu));
}
