using LoraKernels.Backends.Gpu;

namespace LoraKernels.Families.Dora;

/// <summary>
/// What a weight-norm call did (lk_dora_norm_report): rows whose expansion could not be certified to
/// the norm's tolerance and were recomputed directly, and rows whose norm is exactly 0.
/// </summary>
internal readonly record struct DoraNormReport(long RecomputedRows, long ZeroRows);

/// <summary>
/// DoRA ops (kernels/dora.cu, native/cpu/dora.cpp), checked by <see cref="Ops.Dora"/> before the call.
/// The weight norm, ‖w‖² and the intermediates u are F32; magnitude, z and the gradients share x's dtype.
/// </summary>
internal interface IDoraKernels
{
    /// <summary>sqnorm [out] (F32) = Σ_k W0[i,k]².</summary>
    void RowSquaredNorm(Tensor w0, Tensor sqnorm);

    /// <summary>
    /// norm [out] (F32) = ‖W0 + scale·B·A‖_row from ‖W0‖² without forming B·A as a matrix, accurate relative
    /// to the true norm on every row (lora_kernels_dora.h: the certified expansion, uncertified rows recomputed
    /// directly). A row whose norm is exactly 0 is written as 0 and counted in the report.
    /// </summary>
    DoraNormReport WeightNorm(Tensor w0, Tensor w0SquaredNorm, Tensor a, Tensor b, float scale, Tensor norm);

    /// <summary>u = x Aᵀ (F32), z = x W0ᵀ + scale·u Bᵀ (written when not null), y = (m / norm) ⊙ z + bias.</summary>
    void Forward(Tensor x, Tensor w0, Tensor? bias, Tensor a, Tensor b, float scale, Tensor magnitude, Tensor norm,
                     Tensor y, Tensor u, Tensor? z);

    /// <summary>dm = Σ_t dy ⊙ z / norm; dz = dy ⊙ m / norm, then the LoRA backward on dz; null outputs are skipped.</summary>
    void Backward(Tensor x, Tensor w0, Tensor a, Tensor b, Tensor u, Tensor z, Tensor dy, float scale,
                      Tensor magnitude, Tensor norm, Tensor? dx, Tensor? dA, Tensor? dB, Tensor? dMagnitude);

    /// <summary>
    /// QDoRA's norm: <see cref="WeightNorm"/> over a 4-bit base, n = ‖deq(W) + scale·B·A‖_row, with
    /// w0SquaredNorm = ‖deq(W)‖²_row; deq(W) is not formed except, on a call where some rows need the
    /// direct recomputation, on the GPU backend (a temporary for that call). F32 only.
    /// </summary>
    DoraNormReport WeightNormQuantized(QuantizedWeight w0, Tensor w0SquaredNorm, Tensor a, Tensor b, float scale, Tensor norm);

    /// <summary>y = (m / norm) ⊙ z + bias, the forward's column scale alone (z may be y).</summary>
    void ScaleColumns(Tensor z, Tensor magnitude, Tensor norm, Tensor? bias, Tensor y);

    /// <summary>dm = Σ_t dy ⊙ z / norm and dz = dy ⊙ m / norm, the backward's first pass alone; null outputs are skipped.</summary>
    void ScaleGrad(Tensor dy, Tensor z, Tensor magnitude, Tensor norm, Tensor? dMagnitude, Tensor? dz);

    /// <summary>y = x ⊙ mask, the LoRA kernels' hashed dropout mask on flat element i (F32; x may be y).</summary>
    void Dropout(Tensor x, float p, ulong seed, Tensor y);

    /// <summary>
    /// Merge: w_i ← (m_i / norm_i)·(w_i + scale·B_i·A); unmerge (<paramref name="unmerge"/>): w_i ← (norm_i / m_i)·w_i −
    /// scale·B_i·A; each element in double, rounded once. Every m_i and norm_i is finite and non-zero (checked by Ops.Dora).
    /// </summary>
    void Merge(Tensor w, Tensor a, Tensor b, Tensor magnitude, Tensor norm, float scale, bool unmerge);

    /// <summary>The implementation for <paramref name="device"/> (created once per device).</summary>
    static IDoraKernels On(Device device) =>
        device.Kernels<IDoraKernels>(static () => new CpuDoraKernels(), static gpu => new GpuDoraKernels(gpu));
}
