// sgemm.cpp: lk_cpu_sgemm, the general single-precision GEMM (row-major, BLAS semantics).
//
// Strategy: x * W^T shapes with few rows (trans_a = 0, trans_b = 1, M <= kGemvMaxRows) stream B
// once through the dot-product path (gemv.h); everything else goes to the packed GEMM engine,
// which reads the transposes through its packing strides. alpha == 0 or K == 0 reads neither A
// nor B (C = beta * C, as BLAS does). FLOP 2*M*N*K.
#include "check.h"
#include "gemm.h"
#include "gemv.h"

LK_API lk_status lk_cpu_sgemm(int32_t trans_a, int32_t trans_b, int64_t M, int64_t N, int64_t K,
                              float alpha, const float* A, int64_t lda, const float* B, int64_t ldb,
                              float beta, float* C, int64_t ldc) {
    static const char* const fn = "lk_cpu_sgemm";
    lk::cpu::ArgCheck check(fn);
    if (trans_a != 0 && trans_a != 1)
        return lk::fail(LK_ERR_INVALID_ARGUMENT, "%s: trans_a = %d is neither 0 nor 1", fn,
                        trans_a);
    if (trans_b != 0 && trans_b != 1)
        return lk::fail(LK_ERR_INVALID_ARGUMENT, "%s: trans_b = %d is neither 0 nor 1", fn,
                        trans_b);
    const bool reads_ab = alpha != 0.0f && K > 0;
    check.nonnegative("M", M)
        .nonnegative("N", N)
        .nonnegative("K", K)
        .leading_dimension("lda", lda, trans_a ? M : K)
        .leading_dimension("ldb", ldb, trans_b ? K : N)
        .leading_dimension("ldc", ldc, N)
        .not_null("A", A, reads_ab && M > 0)
        .not_null("B", B, reads_ab && N > 0)
        .not_null("C", C, M > 0 && N > 0);
    if (!check.ok()) return check.status();
    return lk::cpu::guarded(fn, [&] {
        using namespace lk::cpu;
        const int64_t k_used = reads_ab ? K : 0;
        if (!trans_a && trans_b && M <= kGemvMaxRows && k_used > 0) {
            gemv_nt(M, N, K, A, lda, B, ldb, [=](int64_t m, int64_t n, float dot) {
                float* c = C + m * ldc + n;
                *c = beta == 0.0f ? alpha * dot : alpha * dot + beta * *c;
            });
        } else {
            GemmOutput c_out;
            c_out.c = C;
            c_out.ldc = ldc;
            c_out.alpha = alpha;
            c_out.beta = beta;
            gemm(M, N, Operand(matrix_piece(A, lda, trans_a != 0, k_used)),
                 Operand(matrix_piece(B, ldb, trans_b != 0, k_used)), c_out);
        }
        return LK_OK;
    });
}
