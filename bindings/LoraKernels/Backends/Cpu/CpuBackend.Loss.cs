// The cross-entropy loss on the native CPU kernel (lk_cpu_cross_entropy); the targets are pinned
// for the call.
using LoraKernels.Interop;
using LoraKernels.Ops;

namespace LoraKernels.Backends.Cpu;

internal sealed unsafe partial class CpuBackend
{
    public float CrossEntropy(Tensor logits, CrossEntropyProblem problem, Tensor? dlogits)
    {
        using var call = new CpuCall();
        float loss;
        fixed (int* targets = problem.Targets)
            Check.Cpu(NativeCpu.lk_cpu_cross_entropy(logits.Shape[0], logits.Shape[1], call.Input(logits), targets, problem.IgnoreIndex,
                                                     problem.LabelSmoothing, &loss, call.Output(dlogits)));
        call.WriteBack();
        return loss;
    }
}
