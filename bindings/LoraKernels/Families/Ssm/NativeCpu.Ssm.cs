// libloraknl_cpu's selective-scan and convolution exports (native/include/lora_kernels_ssm.h).
using System.Runtime.InteropServices;

namespace LoraKernels.Interop;

internal static unsafe partial class NativeCpu
{
    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_ssm_scan_forward(long batch, long length, long channels, long states, float* u, long ldU, float* delta,
                                                      long ldDelta, float* deltaBias, float* a, float* b, float* c, long ldBc,
                                                      float* dSkip, float* z, long ldZ, float* h0, float* y, long ldY, float* hLast);

    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_ssm_scan_backward(long batch, long length, long channels, long states, float* u, long ldU,
                                                       float* delta, long ldDelta, float* deltaBias, float* a, float* b, float* c,
                                                       long ldBc, float* dSkip, float* z, long ldZ, float* h0, float* dy, long ldDy,
                                                       float* du, long ldDu, float* dDelta, long ldDDelta, float* dB, float* dC,
                                                       long ldDbc, float* dz, long ldDz);

    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_ssm_step(long batch, long channels, long states, float* u, long ldU, float* delta, long ldDelta,
                                              float* deltaBias, float* a, float* b, float* c, long ldBc, float* dSkip, float* z,
                                              long ldZ, float* h, float* y, long ldY);

    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_ssm_conv_forward(long batch, long length, long channels, long width, float* x, long ldX,
                                                      float* weight, float* bias, float* y, long ldY);

    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_ssm_conv_backward(long batch, long length, long channels, long width, float* x, long ldX,
                                                       float* weight, float* bias, float* dy, long ldDy, float* dx, long ldDx);

    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_ssm_conv_step(long batch, long channels, long width, float* x, long ldX, float* weight,
                                                   float* bias, float* state, float* y, long ldY);

    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_ssm_copy_columns(long rows, long width, float* source, long ldSource, float* destination,
                                                      long ldDestination);
}
