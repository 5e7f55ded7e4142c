// ILoraKernels on the native CPU kernels (native/cpu/lora.cpp: one packed GEMM over [x | s·u]·[W0 | B]ᵀ
// forward, [dy | du]·[W0 ; A] backward; GEMV paths for M ≤ 16).
using LoraKernels.Backends.Cpu;
using LoraKernels.Interop;

namespace LoraKernels.Families.Lora;

internal sealed unsafe class CpuLoraKernels : ILoraKernels
{
    public void Forward(Tensor x, Tensor w0, Tensor? bias, Tensor a, Tensor b, float scale, float dropoutP, ulong seed,
                        Tensor y, Tensor u)
    {
        using var call = new CpuCall();
        long m = x.Shape[0], inFeatures = x.Shape[1], outFeatures = w0.Shape[0], r = a.Shape[0];
        float* yPointer = call.Output(y);
        Check.Cpu(NativeCpu.lk_cpu_lora_forward(m, inFeatures, outFeatures, r, call.Input(x), call.Input(w0), call.Input(bias),
                                                call.Input(a), call.Input(b), scale, dropoutP, seed, yPointer, call.Output(u)));
        call.WriteBack();
    }

    public void Backward(Tensor x, Tensor w0, Tensor a, Tensor b, Tensor u, Tensor dy, float scale, float dropoutP, ulong seed,
                         Tensor? dx, Tensor? dA, Tensor? dB)
    {
        using var call = new CpuCall();
        long m = x.Shape[0], inFeatures = x.Shape[1], outFeatures = w0.Shape[0], r = a.Shape[0];
        Check.Cpu(NativeCpu.lk_cpu_lora_backward(m, inFeatures, outFeatures, r, call.Input(x), call.Input(w0), call.Input(a),
                                                 call.Input(b), call.Input(u), call.Input(dy), scale, dropoutP, seed,
                                                 call.Output(dx), call.Output(dA), call.Output(dB)));
        call.WriteBack();
    }

    public void Merge(Tensor w, Tensor a, Tensor b, float scale)
    {
        using var call = new CpuCall();
        Check.Cpu(NativeCpu.lk_cpu_lora_merge(w.Shape[0], w.Shape[1], a.Shape[0], call.InputOutput(w), call.Input(a), call.Input(b), scale));
        call.WriteBack();
    }
}
