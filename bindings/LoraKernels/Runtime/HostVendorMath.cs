// IVendorMath on host memory: the CPU library's GEMM and SVD stand in for cuBLAS and cuSOLVER under
// the emulator, so a GPU op that calls vendor math runs the same code path on every CI machine.
using LoraKernels.Interop;

namespace LoraKernels.Runtime;

internal sealed unsafe class HostVendorMath : IVendorMath
{
    public HostVendorMath() => NativeLibraryResolver.Load(LibraryNames.Cpu);

    public void Sgemm(bool transA, bool transB, int m, int n, int k, float alpha,
                      ulong a, int lda, ulong b, int ldb, float beta, ulong c, int ldc) =>
        Check.Cpu(NativeCpu.lk_cpu_sgemm(transA ? 1 : 0, transB ? 1 : 0, m, n, k, alpha,
                                         (float*)a, lda, (float*)b, ldb, beta, (float*)c, ldc));

    public void Svd(int m, int n, ulong a, ulong u, ulong s, ulong vt) =>
        Check.Cpu(NativeCpu.lk_cpu_svd(m, n, (float*)a, (float*)u, (float*)s, (float*)vt));
}
