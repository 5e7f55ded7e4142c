// The VeRA family on the native CPU kernels (native/cpu/vera.cpp): the projections are passed in
// place with vera_A's row stride; BF16 tensors go through the same fp32 staging as the LoRA ops.
using LoraKernels.Interop;

namespace LoraKernels.Backends.Cpu;

internal sealed unsafe partial class CpuBackend
{
    public void VeraForward(Tensor x, Tensor w0, Tensor? bias, Tensor veraA, Tensor veraB, Tensor lambdaD, Tensor lambdaB,
                            float dropoutP, ulong seed, Tensor y, Tensor u)
    {
        using var f32 = new Fp32Staging();
        long m = x.Shape[0], inFeatures = w0.Shape[1], outFeatures = w0.Shape[0], r = veraA.Shape[0];
        float* yPointer = f32.Output(y);
        Check.Cpu(NativeCpu.lk_cpu_vera_forward(m, inFeatures, outFeatures, r, f32.Input(x), f32.Input(w0), f32.Input(bias),
                                                f32.Input(veraA), veraA.Shape[1], f32.Input(veraB), f32.Input(lambdaD),
                                                f32.Input(lambdaB), dropoutP, seed, yPointer, f32.Output(u)));
        f32.WriteBack();
    }

    public void VeraBackward(Tensor w0, Tensor veraA, Tensor veraB, Tensor lambdaD, Tensor lambdaB, Tensor u, Tensor dy,
                             float dropoutP, ulong seed, Tensor? dx, Tensor? dLambdaD, Tensor? dLambdaB)
    {
        using var f32 = new Fp32Staging();
        long m = dy.Shape[0], inFeatures = w0.Shape[1], outFeatures = w0.Shape[0], r = veraA.Shape[0];
        Check.Cpu(NativeCpu.lk_cpu_vera_backward(m, inFeatures, outFeatures, r, f32.Input(w0), f32.Input(veraA), veraA.Shape[1],
                                                 f32.Input(veraB), f32.Input(lambdaD), f32.Input(lambdaB), f32.Input(u),
                                                 f32.Input(dy), dropoutP, seed, f32.Output(dx), f32.Output(dLambdaD),
                                                 f32.Output(dLambdaB)));
        f32.WriteBack();
    }

    public void VeraMerge(Tensor w, Tensor veraA, Tensor veraB, Tensor lambdaD, Tensor lambdaB, float scale)
    {
        using var f32 = new Fp32Staging();
        Check.Cpu(NativeCpu.lk_cpu_vera_merge(w.Shape[0], w.Shape[1], veraA.Shape[0], f32.InputOutput(w), f32.Input(veraA),
                                              veraA.Shape[1], f32.Input(veraB), f32.Input(lambdaD), f32.Input(lambdaB), scale));
        f32.WriteBack();
    }
}
