// libloraknl_cpu's convolution exports (native/include/lora_kernels_conv.h).
using System.Runtime.InteropServices;

namespace LoraKernels.Interop;

/// <summary>lk_conv2d_shape: x [N, C, H, W], w [O, C, KH, KW], stride, padding and dilation per axis.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct LkConv2dShape
{
    public long N, C, H, W, O, KH, KW, StrideH, StrideW, PadH, PadW, DilationH, DilationW;
}

internal static unsafe partial class NativeCpu
{
    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_conv2d_forward(LkConv2dShape* shape, float* x, float* w, float* bias, float alpha, float beta, float* y);

    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_conv2d_backward_data(LkConv2dShape* shape, float* dy, float* w, float alpha, float beta, float* dx);

    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_conv2d_backward_weight(LkConv2dShape* shape, float* x, float* dy, float alpha, float beta, float* dw);
}
