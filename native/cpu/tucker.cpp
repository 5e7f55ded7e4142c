// tucker.cpp: the Tucker family's mode products on the CPU (same argument order as
// kernels/tucker.cu's lk_tucker_batched_matmul): the strided batched products of batched_gemm.h,
// exported with the C ABI's checks. FLOP 2*batch*M*N*K.
#include "batched_gemm.h"
#include "check.h"

using lk::cpu::ArgCheck;

LK_API lk_status lk_cpu_tucker_batched_matmul(int64_t batch, int64_t M, int64_t N, int64_t K, int32_t trans_a,
                                              const float* A, int64_t stride_a, int32_t trans_b, const float* B,
                                              int64_t stride_b, float alpha, float beta, float* C,
                                              int64_t stride_c, int32_t reduce) {
    static const char* const fn = "lk_cpu_tucker_batched_matmul";
    const bool has_output = batch > 0 && M > 0 && N > 0;
    ArgCheck check(fn);
    check.nonnegative("batch", batch)
        .nonnegative("M", M)
        .nonnegative("N", N)
        .nonnegative("K", K)
        .nonnegative("stride_a", stride_a)
        .nonnegative("stride_b", stride_b)
        .nonnegative("stride_c", stride_c)
        .not_null("A", A, has_output && K > 0)
        .not_null("B", B, has_output && K > 0)
        .not_null("C", C, has_output)
        .finite("alpha", alpha)
        .finite("beta", beta);
    if (!check.ok()) return check.status();
    const char* const flag_names[] = {"trans_a", "trans_b", "reduce"};
    const int32_t flags[] = {trans_a, trans_b, reduce};
    for (int i = 0; i < 3; ++i)
        if (flags[i] != 0 && flags[i] != 1)
            return lk::fail(LK_ERR_INVALID_ARGUMENT, "%s: %s = %d is neither 0 nor 1", fn, flag_names[i], flags[i]);
    return lk::cpu::guarded(fn, [&] {
        lk::cpu::batched_gemm(batch, M, N, K, {A, stride_a, trans_a != 0}, {B, stride_b, trans_b != 0}, alpha, beta,
                              C, stride_c, reduce != 0);
        return LK_OK;
    });
}
