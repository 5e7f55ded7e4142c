using LoraKernels.Backends.Gpu;

namespace LoraKernels.Families.Kron;

/// <summary>
/// The factor shapes of a Kronecker adapter: w1 [OutL, InM], w2 [OutK, InN], so kron(w1, w2) is [OutL·OutK, InM·InN].
/// </summary>
internal readonly record struct KronShape(long OutL, long OutK, long InM, long InN)
{
    public long Out => OutL * OutK;
    public long In => InM * InN;
}

/// <summary>
/// The Kronecker family's kernels (kernels/kron.cu with kernels/lora.cu's base product, native/cpu/kron.cpp),
/// checked by <see cref="Ops.Kron"/> first: one dtype and device, dense factors. The [out, in] product is never
/// formed by the forward or the backward.
/// </summary>
internal interface IKronKernels
{
    /// <summary>y = x W0ᵀ + bias + scale·x·kron(w1, w2)ᵀ for x [M, in].</summary>
    void Forward(Tensor x, Tensor w0, Tensor? bias, Tensor w1, Tensor w2, in KronShape shape, float scale, Tensor y);

    /// <summary>dx = dy (W0 + scale·kron(w1, w2)), dw1 and dw2 (null outputs are skipped).</summary>
    void Backward(Tensor x, Tensor w0, Tensor w1, Tensor w2, Tensor dy, in KronShape shape, float scale, Tensor? dx, Tensor? dw1,
                  Tensor? dw2);

    /// <summary>w += scale·kron(w1, w2) for a linear weight (spatial 1) or a convolution weight (spatial = kh·kw).</summary>
    void Merge(Tensor w, Tensor w1, Tensor w2, in KronShape shape, long spatial, float scale);

    /// <summary>The implementation for <paramref name="device"/> (created once per device).</summary>
    static IKronKernels On(Device device) =>
        device.Kernels<IKronKernels>(static () => new CpuKronKernels(), static gpu => new GpuKronKernels(gpu));
}
