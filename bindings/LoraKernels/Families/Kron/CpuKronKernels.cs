// The Kronecker family on the native CPU kernels (native/cpu/kron.cpp over the packed GEMM engine). The workspace
// the kernels need (one [in_m, out_k] matrix per token) is a tensor of the CPU device, so the device's live-byte
// count sees every byte the op uses.
using LoraKernels.Backends.Cpu;
using LoraKernels.Interop;

namespace LoraKernels.Families.Kron;

internal sealed unsafe class CpuKronKernels : IKronKernels
{
    public void Forward(Tensor x, Tensor w0, Tensor? bias, Tensor w1, Tensor w2, in KronShape s, float scale, Tensor y)
    {
        long m = x.ElementCount / s.In;
        using Tensor workspace = Workspace(m, s);
        using var call = new CpuCall();
        float* yPointer = call.Output(y);
        Check.Cpu(NativeCpu.lk_cpu_kron_forward(m, s.OutL, s.OutK, s.InM, s.InN, call.Input(x), call.Input(w0), call.Input(bias),
                                                call.Input(w1), call.Input(w2), scale, call.Output(workspace), yPointer));
        call.WriteBack();
    }

    public void Backward(Tensor x, Tensor w0, Tensor w1, Tensor w2, Tensor dy, in KronShape s, float scale, Tensor? dx, Tensor? dw1,
                         Tensor? dw2)
    {
        long m = dy.ElementCount / s.Out;
        using Tensor workspace = Workspace(m, s);
        using var call = new CpuCall();
        Check.Cpu(NativeCpu.lk_cpu_kron_backward(m, s.OutL, s.OutK, s.InM, s.InN, call.Input(x), call.Input(w0), call.Input(w1),
                                                 call.Input(w2), call.Input(dy), scale, call.Output(workspace), call.Output(dx),
                                                 call.Output(dw1), call.Output(dw2)));
        call.WriteBack();
    }

    public void Merge(Tensor w, Tensor w1, Tensor w2, in KronShape s, long spatial, float scale)
    {
        using var call = new CpuCall();
        Check.Cpu(NativeCpu.lk_cpu_kron_merge(s.OutL, s.OutK, s.InM, s.InN, spatial, call.InputOutput(w), call.Input(w1), call.Input(w2), scale));
        call.WriteBack();
    }

    /// <summary>T (or the backward's E) for every token: [M·in_m, out_k] fp32.</summary>
    private static Tensor Workspace(long m, in KronShape s) => Tensor.Empty(Device.Cpu, DType.F32, m * s.InM, s.OutK);
}
