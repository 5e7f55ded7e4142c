// The optimizers' kernels (kernels/optim.cu, native/cpu/optim.cpp), beside the optimizers that use
// them; resolved per device like every family's kernels.
using LoraKernels.Backends.Gpu;

namespace LoraKernels.Optim;

internal interface IOptimizerKernels
{
    /// <summary>One torch.optim.AdamW step on F32 tensors; <paramref name="step"/> counts from 1.</summary>
    void AdamWStep(Tensor param, Tensor grad, Tensor m, Tensor v, float lr, float beta1, float beta2, float eps, float weightDecay,
                   long step);

    /// <summary>The implementation for <paramref name="device"/> (created once per device).</summary>
    static IOptimizerKernels On(Device device) =>
        device.Kernels<IOptimizerKernels>(static () => new CpuOptimizerKernels(), static gpu => new GpuOptimizerKernels(gpu));
}
