// libloraknl_cpu's Kronecker exports (native/include/lora_kernels_kron.h).
using System.Runtime.InteropServices;

namespace LoraKernels.Interop;

internal static unsafe partial class NativeCpu
{
    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_kron_forward(long m, long outL, long outK, long inM, long inN, float* x, float* w0, float* bias,
                                                  float* w1, float* w2, float scale, float* workspace, float* y);

    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_kron_backward(long m, long outL, long outK, long inM, long inN, float* x, float* w0, float* w1,
                                                   float* w2, float* dy, float scale, float* workspace, float* dx, float* dw1, float* dw2);

    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_kron_merge(long outL, long outK, long inM, long inN, long spatial, float* w, float* w1, float* w2,
                                                float scale);
}
