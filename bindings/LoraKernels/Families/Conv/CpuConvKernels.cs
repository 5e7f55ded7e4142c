// The convolution family on the native CPU kernels (native/cpu/conv.cpp: im2col and the packed GEMM engine).
using LoraKernels.Backends.Cpu;
using LoraKernels.Interop;

namespace LoraKernels.Families.Conv;

internal sealed unsafe class CpuConvKernels : IConvKernels
{
    /// <summary>One native convolution call: the call's memory, the shape, and the (staged) output.</summary>
    private delegate int NativeConv(CpuCall call, LkConv2dShape* shape, float* output);

    public void Forward(in ConvShape s, Tensor x, Tensor w, Tensor? bias, float alpha, float beta, Tensor y) =>
        Run(s, y, beta, (call, shape, output) =>
            NativeCpu.lk_cpu_conv2d_forward(shape, call.Input(x), call.Input(w), call.Input(bias), alpha, beta, output));

    public void BackwardData(in ConvShape s, Tensor dy, Tensor w, float alpha, float beta, Tensor dx) =>
        Run(s, dx, beta, (call, shape, output) => NativeCpu.lk_cpu_conv2d_backward_data(shape, call.Input(dy), call.Input(w), alpha, beta, output));

    public void BackwardWeight(in ConvShape s, Tensor x, Tensor dy, float alpha, float beta, Tensor dw) =>
        Run(s, dw, beta, (call, shape, output) => NativeCpu.lk_cpu_conv2d_backward_weight(shape, call.Input(x), call.Input(dy), alpha, beta, output));

    /// <summary>Leases the call's memory (the output read too when beta is not 0), runs it, and writes a staged output back.</summary>
    private static void Run(in ConvShape s, Tensor output, float beta, NativeConv native)
    {
        using var call = new CpuCall();
        LkConv2dShape shape = new()
        {
            N = s.N, C = s.C, H = s.H, W = s.W, O = s.O, KH = s.KH, KW = s.KW,
            StrideH = s.Geometry.StrideH, StrideW = s.Geometry.StrideW, PadH = s.Geometry.PaddingH, PadW = s.Geometry.PaddingW,
            DilationH = s.Geometry.DilationH, DilationW = s.Geometry.DilationW,
        };
        float* target = beta == 0f ? call.Output(output) : call.InputOutput(output);
        Check.Cpu(native(call, &shape, target));
        call.WriteBack();
    }
}
