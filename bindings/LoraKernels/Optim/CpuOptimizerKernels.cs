// IOptimizerKernels on the native CPU kernels (native/cpu/optim.cpp).
using LoraKernels.Backends.Cpu;
using LoraKernels.Interop;

namespace LoraKernels.Optim;

internal sealed unsafe class CpuOptimizerKernels : IOptimizerKernels
{
    public void AdamWStep(Tensor param, Tensor grad, Tensor m, Tensor v, float lr, float beta1, float beta2, float eps,
                          float weightDecay, long step)
    {
        using var call = new CpuCall();
        Check.Cpu(NativeCpu.lk_cpu_adamw_step(param.ElementCount, call.InputOutput(param), call.Input(grad), call.InputOutput(m),
                                              call.InputOutput(v), lr, beta1, beta2, eps, weightDecay, step));
        call.WriteBack();
    }
}
