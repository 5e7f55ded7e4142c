// IOptimizerKernels on a GPU device (kernels/optim.cu): the AdamW step as a grid-stride kernel (the
// element-wise geometry). The bias corrections 1 - beta^step are computed here in double, as torch
// computes them in Python floats, and passed rounded to float.
using LoraKernels.Backends.Gpu;
using LoraKernels.Runtime;

namespace LoraKernels.Optim;

internal sealed class GpuOptimizerKernels(GpuLaunch gpu) : IOptimizerKernels
{
    public void AdamWStep(Tensor param, Tensor grad, Tensor m, Tensor v, float lr, float beta1, float beta2, float eps,
                          float weightDecay, long step)
    {
        long n = param.ElementCount;
        if (n == 0) return;
        float biasCorrection1 = (float)(1.0 - Math.Pow(beta1, step));
        float biasCorrection2 = (float)(1.0 - Math.Pow(beta2, step));
        using var args = new KernelArguments()
            .Pointer(param).Pointer(grad).Pointer(m).Pointer(v).Long(n)
            .Float(lr).Float(beta1).Float(beta2).Float(eps).Float(weightDecay)
            .Float(biasCorrection1).Float(biasCorrection2);
        gpu.LaunchElementwise("lk_optim_adamw_f32", n, args);
    }
}
