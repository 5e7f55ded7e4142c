// Launch code for kernels/cross_entropy.cu: the targets go up in a temporary buffer; one block per
// row at a time (GpuLaunch.RowGrid), each block writing the double sum of its rows' losses, which
// are added here in block order and divided by the count (deterministic).
using System.Runtime.InteropServices;
using LoraKernels.Ops;
using LoraKernels.Runtime;

namespace LoraKernels.Backends.Gpu;

internal sealed partial class GpuBackend
{
    public float CrossEntropy(Tensor logits, CrossEntropyProblem problem, Tensor? dlogits)
    {
        int rows = checked((int)logits.Shape[0]), classes = checked((int)logits.Shape[1]);
        if (rows == 0) return float.NaN;
        using DeviceBuffer targets = Launcher.Device.Allocate((long)rows * sizeof(int));
        Launcher.Device.Upload(targets, 0, MemoryMarshal.AsBytes(problem.Targets.AsSpan()));
        double sum = 0;
        foreach (double partial in Launcher.RowPartials<double>("lk_loss_cross_entropy_f32", rows,
                     (args, partials) => args.Pointer(logits).Pointer(targets).Int(rows).Int(classes).Int(problem.IgnoreIndex)
                                             .Float(problem.LabelSmoothing).Int(problem.Count).Pointer(partials).Pointer(dlogits)))
            sum += partial;
        // The mean over no rows is NaN, as in torch and the CPU kernel.
        return problem.Count > 0 ? (float)(sum / problem.Count) : float.NaN;
    }
}
