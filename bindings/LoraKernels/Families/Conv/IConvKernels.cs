using LoraKernels.Backends.Gpu;

namespace LoraKernels.Families.Conv;

/// <summary>
/// One convolution's dimensions, as the kernels take them: x [N, C, H, W], w [O, C, KH, KW], y [N, O, HO, WO].
/// </summary>
internal readonly record struct ConvShape(long N, long C, long H, long W, long O, long KH, long KW, long HO, long WO,
                                          Ops.Conv2dGeometry Geometry);

/// <summary>
/// The convolution family's kernels (kernels/conv.cu, native/cpu/conv.cpp), F32, shapes checked by
/// <see cref="Ops.Conv2d"/> first. Each writes alpha·(product) + beta·(what the output held); beta 0 does not read it.
/// </summary>
internal interface IConvKernels
{
    /// <summary>y = alpha·conv(x, w) + bias + beta·y.</summary>
    void Forward(in ConvShape s, Tensor x, Tensor w, Tensor? bias, float alpha, float beta, Tensor y);

    /// <summary>dx = alpha·convᵀ(dy, w) + beta·dx.</summary>
    void BackwardData(in ConvShape s, Tensor dy, Tensor w, float alpha, float beta, Tensor dx);

    /// <summary>dw = alpha·Σ dy ⊗ patches(x) + beta·dw (summed over the batch in a fixed order).</summary>
    void BackwardWeight(in ConvShape s, Tensor x, Tensor dy, float alpha, float beta, Tensor dw);

    /// <summary>The implementation for <paramref name="device"/> (created once per device).</summary>
    static IConvKernels On(Device device) =>
        device.Kernels<IConvKernels>(static () => new CpuConvKernels(), static gpu => new GpuConvKernels(gpu));
}
