// libloraknl_cpu's segmented (multi-adapter) exports (native/include/lora_kernels_segmented.h).
using System.Runtime.InteropServices;

namespace LoraKernels.Interop;

internal static unsafe partial class NativeCpu
{
    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_segmented_forward(long m, long inFeatures, long outFeatures, long r, long adapters, float* x,
                                                       float* w0, float* w0Table, float* bias, float* aTable, float* bTable,
                                                       float* scales, int* segments, long segmentCount, float* y, float* u);

    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_segmented_backward(long m, long inFeatures, long outFeatures, long r, long adapters, float* x,
                                                        float* w0, float* w0Table, float* aTable, float* bTable, float* scales,
                                                        float* u, float* dy, int* segments, long segmentCount, float* dx,
                                                        float* dATable, float* dBTable);
}
