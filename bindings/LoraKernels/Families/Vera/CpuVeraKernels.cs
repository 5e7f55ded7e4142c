// The VeRA family on the native CPU kernels (native/cpu/vera.cpp): the projections are passed in
// place with vera_A's row stride; BF16 tensors go through the same fp32 staging as the LoRA ops.
using LoraKernels.Backends.Cpu;
using LoraKernels.Interop;

namespace LoraKernels.Families.Vera;

internal sealed unsafe class CpuVeraKernels : IVeraKernels
{
    public void Forward(Tensor x, Tensor w0, Tensor? bias, Tensor veraA, Tensor veraB, Tensor lambdaD, Tensor lambdaB,
                            float dropoutP, ulong seed, Tensor y, Tensor u)
    {
        using var call = new CpuCall();
        long m = x.Shape[0], inFeatures = w0.Shape[1], outFeatures = w0.Shape[0], r = veraA.Shape[0];
        float* yPointer = call.Output(y);
        Check.Cpu(NativeCpu.lk_cpu_vera_forward(m, inFeatures, outFeatures, r, call.Input(x), call.Input(w0), call.Input(bias),
                                                call.Input(veraA), veraA.Shape[1], call.Input(veraB), call.Input(lambdaD),
                                                call.Input(lambdaB), dropoutP, seed, yPointer, call.Output(u)));
        call.WriteBack();
    }

    public void Backward(Tensor w0, Tensor veraA, Tensor veraB, Tensor lambdaD, Tensor lambdaB, Tensor u, Tensor dy,
                             float dropoutP, ulong seed, Tensor? dx, Tensor? dLambdaD, Tensor? dLambdaB)
    {
        using var call = new CpuCall();
        long m = dy.Shape[0], inFeatures = w0.Shape[1], outFeatures = w0.Shape[0], r = veraA.Shape[0];
        Check.Cpu(NativeCpu.lk_cpu_vera_backward(m, inFeatures, outFeatures, r, call.Input(w0), call.Input(veraA), veraA.Shape[1],
                                                 call.Input(veraB), call.Input(lambdaD), call.Input(lambdaB), call.Input(u),
                                                 call.Input(dy), dropoutP, seed, call.Output(dx), call.Output(dLambdaD),
                                                 call.Output(dLambdaB)));
        call.WriteBack();
    }

    public void Merge(Tensor w, Tensor veraA, Tensor veraB, Tensor lambdaD, Tensor lambdaB, float scale)
    {
        using var call = new CpuCall();
        Check.Cpu(NativeCpu.lk_cpu_vera_merge(w.Shape[0], w.Shape[1], veraA.Shape[0], call.InputOutput(w), call.Input(veraA),
                                              veraA.Shape[1], call.Input(veraB), call.Input(lambdaD), call.Input(lambdaB), scale));
        call.WriteBack();
    }
}
