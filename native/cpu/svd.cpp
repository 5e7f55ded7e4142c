// svd.cpp: lk_cpu_svd, the thin SVD of a row-major A [m, n] through LAPACK's sgesdd
// (divide and conquer), k = min(m, n).
//
// Row-major without a transpose: A's buffer read column-major is A^T [n, m], so LAPACK factors
// A^T = U' S V'^T and A = V' S U'^T. Read back row-major, LAPACK's column-major U' [n, k]
// (ldu = n) is exactly Vt [k, n] and its column-major V'^T [k, m] (ldvt = k) is exactly U [m, k]:
// the outputs are written straight into the caller's Vt and U, no transposes. sgesdd destroys
// its input, so A is copied once (4*m*n bytes); the workspace is sized by LAPACK's own query
// (lwork = -1) and iwork holds 8k integers. FLOP ~ O(m*n*k) (LAPACK's; roughly 4mnk + 8k^3
// with vectors). LAPACK's integers are 32-bit (the reference LAPACK and OpenBLAS's default
// builds), so m, n and m*n must fit. info != 0 (no convergence) is LK_ERR_INTERNAL with info.
// A holding NaN or +-Inf is LK_ERR_INVALID_ARGUMENT naming the first such index, before LAPACK
// sees it: sgesdd rejects NaN as an "illegal argument" and never returns on +Inf.
#include <climits>
#include <vector>

#include "check.h"

extern "C" void sgesdd_(const char* jobz, const int* m, const int* n, float* a, const int* lda,
                        float* s, float* u, const int* ldu, float* vt, const int* ldvt, float* work,
                        const int* lwork, int* iwork, int* info, size_t jobz_len);

LK_API lk_status lk_cpu_svd(int64_t m, int64_t n, const float* A, float* U, float* S, float* Vt) {
    static const char* const fn = "lk_cpu_svd";
    const bool any = m > 0 && n > 0;
    lk::cpu::ArgCheck check(fn);
    check.nonnegative("m", m)
        .nonnegative("n", n)
        .not_null("A", A, any)
        .not_null("U", U, any)
        .not_null("S", S, any)
        .not_null("Vt", Vt, any);
    if (!check.ok()) return check.status();
    if (m > INT_MAX || n > INT_MAX || m * n > INT_MAX)
        return lk::fail(LK_ERR_INVALID_ARGUMENT,
                        "%s: m = %lld, n = %lld exceed LAPACK's 32-bit sizes", fn, (long long)m,
                        (long long)n);
    if (!any) return LK_OK;
    int64_t bad = -1;
    const lk_status scanned = lk_cpu_first_nonfinite(m * n, A, &bad);
    if (scanned != LK_OK) return scanned;
    if (bad >= 0)
        return lk::fail(LK_ERR_INVALID_ARGUMENT,
                        "%s: A[%lld] (row %lld, column %lld) = %g is not finite; an SVD needs finite values",
                        fn, (long long)bad, (long long)(bad / n), (long long)(bad % n), (double)A[bad]);
    return lk::cpu::guarded(fn, [&]() -> lk_status {
        // LAPACK's view: the column-major matrix A^T with rows = n, cols = m.
        const int rows = (int)n, cols = (int)m, k = (int)(m < n ? m : n);
        std::vector<float> a(A, A + m * n);
        std::vector<int> iwork((size_t)(8 * k));
        const char jobz = 'S';
        int lwork = -1, info = 0;
        float query = 0.0f;
        sgesdd_(&jobz, &rows, &cols, a.data(), &rows, S, Vt, &rows, U, &k, &query, &lwork,
                iwork.data(), &info, 1);
        if (info != 0)
            return lk::fail(LK_ERR_INTERNAL, "%s: LAPACK sgesdd workspace query failed, info = %d",
                            fn, info);
        lwork = (int)query + 1;
        std::vector<float> work((size_t)lwork);
        sgesdd_(&jobz, &rows, &cols, a.data(), &rows, S, Vt, &rows, U, &k, work.data(), &lwork,
                iwork.data(), &info, 1);
        if (info != 0)
            return lk::fail(LK_ERR_INTERNAL, "%s: LAPACK sgesdd failed, info = %d (%s)", fn, info,
                            info < 0 ? "an illegal argument" : "no convergence");
        return LK_OK;
    });
}
