// The MoE steps on the native CPU kernels (native/cpu/moe.cpp); the routing arrays are passed in place.
using LoraKernels.Backends.Cpu;
using LoraKernels.Interop;

namespace LoraKernels.Families.Moe;

internal sealed unsafe class CpuMoeKernels : IMoeKernels
{
    public void Gather(Tensor x, int[] tokens, Tensor xs)
    {
        using var call = new CpuCall();
        fixed (int* t = tokens)
            Check.Cpu(NativeCpu.lk_cpu_moe_gather(tokens.Length, x.Shape[1], call.Input(x), t, call.Output(xs)));
    }

    public void Combine(Tensor o, int[] positions, int k, Tensor? gates, Tensor? bias, Tensor y)
    {
        using var call = new CpuCall();
        fixed (int* p = positions)
            Check.Cpu(NativeCpu.lk_cpu_moe_combine(y.Shape[0], k, y.Shape[1], call.Input(o), p, call.Input(gates), call.Input(bias),
                                                   call.Output(y)));
    }

    public void CombineBackward(Tensor dy, Tensor? o, int[] tokens, Tensor gates, Tensor? dOutput, Tensor? dGates)
    {
        using var call = new CpuCall();
        fixed (int* t = tokens)
            Check.Cpu(NativeCpu.lk_cpu_moe_combine_backward(tokens.Length, dy.Shape[1], call.Input(dy), call.Input(o), t,
                                                            call.Input(gates), call.Output(dOutput), call.Output(dGates)));
    }

    public void SwiGlu(Tensor g, Tensor u, Tensor h)
    {
        using var call = new CpuCall();
        Check.Cpu(NativeCpu.lk_cpu_moe_swiglu(g.ElementCount, call.Input(g), call.Input(u), call.Output(h)));
    }

    public void SwiGluBackward(Tensor g, Tensor u, Tensor dh, Tensor dg, Tensor du)
    {
        using var call = new CpuCall();
        Check.Cpu(NativeCpu.lk_cpu_moe_swiglu_backward(g.ElementCount, call.Input(g), call.Input(u), call.Input(dh), call.Output(dg),
                                                       call.Output(du)));
    }
}
