// libloraknl_cpu's Tucker exports (native/include/lora_kernels_tucker.h).
using System.Runtime.InteropServices;

namespace LoraKernels.Interop;

internal static unsafe partial class NativeCpu
{
    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_tucker_batched_matmul(long batch, long m, long n, long k, int transA, float* a, long strideA,
                                                           int transB, float* b, long strideB, float alpha, float beta, float* c,
                                                           long strideC, int reduce);
}
