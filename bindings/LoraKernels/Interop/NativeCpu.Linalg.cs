// libloraknl_cpu's dense factorizations (native/include/lora_kernels_linalg.h).
using System.Runtime.InteropServices;

namespace LoraKernels.Interop;

internal static unsafe partial class NativeCpu
{
    /// <summary>Thin SVD of the row-major A [m, n]: U [m, k], S [k] descending, Vt [k, n], k = min(m, n).</summary>
    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_svd(long m, long n, float* a, float* u, float* s, float* vt);
}
