// dora_kernels.h: the per-ISA piece of the DoRA weight norm (dora.cpp), kept apart from isa.h's
// table (owned by the GEMM engine) but under the same rule: dora_avx512.cpp, compiled with
// -mavx512f, includes only this header and the intrinsics headers.
#pragma once

#include <cstdint>

namespace lk::cpu {

// Products one fp32 partial sum of dora_project accumulates before it is added in double (the
// bound's L; lora_kernels_dora.h's LK_DORA_PARTIAL_TERMS, static_asserted equal in dora.cpp).
constexpr int64_t kDoraPartialTerms = 64;

// P[i * ldp + a] = sum_k X[i * ldx + k] * A[a * lda + k] for i < rows, a < r, k < K, with every
// product added into an fp32 partial sum of at most kDoraPartialTerms terms and the partial sums
// added in double. One thread; the caller splits rows among threads and gives each a scratch of
// kDoraProjectScratchPerRank * r doubles.
constexpr int64_t kDoraProjectScratchPerRank = 64;
void dora_project_avx512(int64_t rows, int64_t r, int64_t K, const float* X, int64_t ldx,
                         const float* A, int64_t lda, double* P, int64_t ldp, double* scratch);

// out[j] = Σ_k (w_j[k] + s·Σ_a b_j[a]·A[a·in + k])² in double for rows j < rows <= 4 (the direct
// recomputation of lora_kernels_dora.h): each b·A product exact, summed over a in order, then
// w + s·v by one FMA, squares summed in 8 double lanes. The caller takes the square roots.
constexpr int kDoraDirectRows = 4;
void dora_direct_sqnorms_avx512(int rows, int64_t in, int64_t r, const float* const* w, const float* A,
                                const float* const* b, double s, double* out);

}  // namespace lk::cpu
