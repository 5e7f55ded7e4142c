// The optimizers' kernels (kernels/optim.cu, native/cpu/optim.cpp), beside the optimizers that use
// them; resolved per device like every family's kernels. Each call updates a whole segment list
// (every parameter of a step, or one chunk of a paged step) in one launch or one CPU call; the
// addresses in the segments are leased by the caller for the call.
using LoraKernels.Backends.Gpu;

namespace LoraKernels.Optim;

internal interface IOptimizerKernels
{
    /// <summary>AdamW with fp32 moments: torch's form, or bitsandbytes' 32-bit form when <paramref name="bnbForm"/>.</summary>
    void AdamW(SegmentList<AdamWSegment> segments, float beta1, float beta2, float gradScale, bool bnbForm);

    /// <summary>bitsandbytes' blockwise 8-bit AdamW.</summary>
    void AdamW8bit(SegmentList<AdamW8bitSegment> segments, float beta1, float beta2, float gradScale);

    /// <summary>Σ g² over every span, in double, in a fixed order (not finite iff a gradient is NaN or ±Inf).</summary>
    double GradSumOfSquares(SegmentList<GradSpan> spans);

    /// <summary>The implementation for <paramref name="device"/> (created once per device).</summary>
    static IOptimizerKernels On(Device device) =>
        device.Kernels<IOptimizerKernels>(static () => new CpuOptimizerKernels(), static gpu => new GpuOptimizerKernels(gpu));
}
