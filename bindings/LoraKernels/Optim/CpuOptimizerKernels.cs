// IOptimizerKernels on the native CPU kernels (native/cpu/optim.cpp).
using LoraKernels.Interop;

namespace LoraKernels.Optim;

internal sealed unsafe class CpuOptimizerKernels : IOptimizerKernels
{
    public void AdamW(SegmentList<AdamWSegment> segments, float beta1, float beta2, float gradScale, bool bnbForm)
    {
        fixed (AdamWSegment* list = segments.Items)
            Check.Cpu(NativeCpu.lk_cpu_adamw(list, segments.Count, beta1, beta2, gradScale, bnbForm ? 1 : 0));
    }

    public void AdamW8bit(SegmentList<AdamW8bitSegment> segments, float beta1, float beta2, float gradScale)
    {
        fixed (AdamW8bitSegment* list = segments.Items)
            Check.Cpu(NativeCpu.lk_cpu_adamw8bit(list, segments.Count, beta1, beta2, gradScale));
    }

    public double GradSumOfSquares(SegmentList<GradSpan> spans)
    {
        double sum;
        fixed (GradSpan* list = spans.Items) Check.Cpu(NativeCpu.lk_cpu_grad_sumsq(list, spans.Count, &sum));
        return sum;
    }
}
