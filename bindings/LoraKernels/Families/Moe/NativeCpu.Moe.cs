// libloraknl_cpu's mixture-of-experts exports (native/include/lora_kernels_moe.h).
using System.Runtime.InteropServices;

namespace LoraKernels.Interop;

internal static unsafe partial class NativeCpu
{
    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_moe_gather(long assignments, long width, float* x, int* tokens, float* xs);

    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_moe_combine(long tokens, long k, long width, float* o, int* positions, float* gates, float* bias,
                                                 float* y);

    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_moe_combine_backward(long assignments, long width, float* dy, float* o, int* tokens, float* gates,
                                                          float* dOutput, float* dGates);

    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_moe_swiglu(long n, float* g, float* u, float* h);

    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_moe_swiglu_backward(long n, float* g, float* u, float* dh, float* dg, float* du);
}
