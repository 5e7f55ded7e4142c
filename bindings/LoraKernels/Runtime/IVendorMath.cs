namespace LoraKernels.Runtime;

/// <summary>
/// Dense linear algebra that a GPU op takes from a vendor library rather than from
/// <c>kernels/</c>: cuBLAS on CUDA, the CPU kernels under the emulator (DESIGN.md, "Devices and
/// backends"). Row-major, fp32; pointers are device addresses of the owning device.
/// </summary>
public interface IVendorMath
{
    /// <summary>C[M,N] = alpha * op(A) * op(B) + beta * C, row-major, as <c>lk_cpu_sgemm</c>.</summary>
    void Sgemm(bool transA, bool transB, int m, int n, int k, float alpha,
               ulong a, int lda, ulong b, int ldb, float beta, ulong c, int ldc);

    /// <summary>
    /// C[M,N] = alpha * op(A) * op(B) + beta * C, row-major, A and B BF16, C of <paramref name="cType"/>
    /// (BF16 or F32), every product and sum in fp32; a BF16 C is read and written rounded (cuBLAS'
    /// <c>cublasGemmEx</c> with <c>CUBLAS_COMPUTE_32F</c>, tensor cores on sm_80+).
    /// </summary>
    void GemmBf16(bool transA, bool transB, int m, int n, int k, float alpha,
                  ulong a, int lda, ulong b, int ldb, float beta, ulong c, int ldc, DType cType);

    /// <summary>
    /// Thin SVD of the row-major A [m, n], k = min(m, n), as <c>lk_cpu_svd</c>: U [m, k], S [k]
    /// descending, Vt [k, n] (row-major), A = U·diag(S)·Vt. A is not modified. Singular-vector
    /// signs are the library's (not unique).
    /// </summary>
    void Svd(int m, int n, ulong a, ulong u, ulong s, ulong vt);
}
