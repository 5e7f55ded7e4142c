namespace LoraKernels.Backends;

/// <summary>
/// One method per kernel op. <see cref="Ops"/> checks shapes, dtypes and devices before calling,
/// so implementations assume valid, same-device tensors. <c>u</c> and <c>du</c>-like
/// intermediates are F32; other tensors share the input's dtype.
/// Implemented by <see cref="Cpu.CpuBackend"/> (native CPU kernels) and
/// <see cref="Gpu.GpuBackend"/> (kernels/*.cu on CUDA or the SIMT emulator).
/// </summary>
internal partial interface IBackend
{
    /// <summary>y = x W0ᵀ + bias + scale·u Bᵀ with u = dropout(x) Aᵀ written to <paramref name="u"/> (F32 [M, r]).</summary>
    void LoraForward(Tensor x, Tensor w0, Tensor? bias, Tensor a, Tensor b, float scale,
                     float dropoutP, ulong seed, Tensor y, Tensor u);

    /// <summary>dx = dy W0 + dropout'(du A), dA = duᵀ dropout(x), dB = scale·dyᵀ u, du = scale·dy B; null outputs are skipped.</summary>
    void LoraBackward(Tensor x, Tensor w0, Tensor a, Tensor b, Tensor u, Tensor dy, float scale,
                      float dropoutP, ulong seed, Tensor? dx, Tensor? dA, Tensor? dB);

    /// <summary>w += scale·B·A in place (unmerge passes -scale).</summary>
    void LoraMerge(Tensor w, Tensor a, Tensor b, float scale);

    void ReluForward(Tensor x, Tensor y);
    void ReluBackward(Tensor x, Tensor dy, Tensor dx);

    /// <summary>y += alpha·x.</summary>
    void Axpy(float alpha, Tensor x, Tensor y);

    /// <summary>Returns mean((pred - target)²); writes 2(pred - target)/n to <paramref name="dpred"/> when given.</summary>
    float MseLoss(Tensor pred, Tensor target, Tensor? dpred);

    /// <summary>The smallest flat index of a NaN or ±Inf element of <paramref name="tensor"/>, or -1 when every element is finite.</summary>
    long FirstNonFinite(Tensor tensor);

    /// <summary>One torch.optim.AdamW step on F32 tensors; <paramref name="step"/> counts from 1.</summary>
    void AdamWStep(Tensor param, Tensor grad, Tensor m, Tensor v, float lr, float beta1, float beta2,
                   float eps, float weightDecay, long step);

    /// <summary>Element-wise conversion between dtypes (same shape).</summary>
    void Cast(Tensor source, Tensor destination);

    void Fill(Tensor tensor, float value);
}
