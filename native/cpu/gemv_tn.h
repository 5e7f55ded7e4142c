// gemv_tn.h: the small-M path of a product with a row-major weight on the right,
// c[m, k] += sum_j a[m, j] * w[j, k] for M <= kGemvMaxRows (the backward's dx += dy * W0).
//
// Strategy: the product is bound by reading w ([J, K], usually far larger than the caches), so
// w is read from memory exactly once, row by row: each row j adds a[:, j] * w[j, :] to every row
// of c (an axpy per row of c). Threads take contiguous ranges of w's rows (each streams one
// contiguous stretch of memory, like gemv.h) into private copies of c, summed into c at the
// end (M*K floats per thread, from L2). Within a thread, w is taken 8 rows at a time in
// 256-column stretches: the 8 x 256 stretch of w (8 KiB) and the M x 256 stretch of the copy
// of c (<= 16 KiB, from L2) sit in L1 while every row of c loads its stretch once, takes 8
// FMAs per element (register-tiled over 8 rows of c on AVX-512, 4 on AVX2) and stores it once.
// Measured against giving each thread a column range of c (and the matching slice of every w
// row; no reduction), 2 threads, A/B in one process, J = K = 4096: this row split was 5-9%
// faster at M = 1, 1-11% at M = 4, level at M = 16 (at J = K = 1024 the column split was up to
// 10% faster for M = 4 and 16: 0.20 vs 0.22 ms).
// Bytes: 4*J*K (w, once) + 4*M*K (c written) + copies of c from L2; FLOP: 2*M*J*K.
//
// The inner loops are compiled per ISA with GCC target attributes (and chosen by the loaded ISA
// table's isa_bits, so LORAKERNELS_CPU_ISA lowers them too); they have internal linkage, so no
// wider-ISA copy of a shared inline function can leak to other translation units.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "gemv.h"
#include "isa.h"

#if defined(LK_CPU_X86)
#include <immintrin.h>
#endif

namespace lk::cpu {
namespace gemv_tn_detail {

constexpr int kRowsPerPass = 8;      // rows of w per pass over a stretch of c
constexpr int64_t kStretch = 256;    // columns of c (and w) per L1-resident stretch
constexpr int64_t kColumnUnit = 16;  // a cache line: row padding of the copies of c, and the
                                     // granule of the reduction's column ranges

// c[m, 0:n] += sum_{i < rows} a[m*lda + i] * w[i*ldw + 0:n] for m < M; rows <= kRowsPerPass.
using PanelFn = void (*)(int64_t M, int rows, int64_t n, const float* a, int64_t lda,
                         const float* w, int64_t ldw, float* c, int64_t ldc);

static void panel_portable(int64_t M, int rows, int64_t n, const float* a, int64_t lda,
                           const float* w, int64_t ldw, float* c, int64_t ldc) {
    for (int64_t m = 0; m < M; ++m) {
        float* cm = c + m * ldc;
        for (int i = 0; i < rows; ++i) {
            const float ai = a[m * lda + i];
            const float* wi = w + i * ldw;
            for (int64_t k = 0; k < n; ++k) cm[k] += ai * wi[k];
        }
    }
}

#if defined(LK_CPU_X86)
// Rows [m_begin, m_end) of c, columns [k_begin, n): one row of c at a time, 16 columns a step.
__attribute__((target("avx512f,avx2,fma"))) static void rows_avx512(
    int64_t m_begin, int64_t m_end, int64_t k_begin, int rows, int64_t n, const float* a,
    int64_t lda, const float* w, int64_t ldw, float* c, int64_t ldc) {
    const int64_t full = k_begin + ((n - k_begin) & ~(int64_t)15);
    const __mmask16 tail = (__mmask16)((1u << (n - full)) - 1u);
    for (int64_t m = m_begin; m < m_end; ++m) {
        float* cm = c + m * ldc;
        __m512 coef[kRowsPerPass];
        for (int i = 0; i < rows; ++i) coef[i] = _mm512_set1_ps(a[m * lda + i]);
        for (int64_t k = k_begin; k < full; k += 16) {
            __m512 acc = _mm512_loadu_ps(cm + k);
            for (int i = 0; i < rows; ++i)
                acc = _mm512_fmadd_ps(coef[i], _mm512_loadu_ps(w + i * ldw + k), acc);
            _mm512_storeu_ps(cm + k, acc);
        }
        if (tail != 0) {
            __m512 acc = _mm512_maskz_loadu_ps(tail, cm + full);
            for (int i = 0; i < rows; ++i)
                acc = _mm512_fmadd_ps(coef[i], _mm512_maskz_loadu_ps(tail, w + i * ldw + full),
                                      acc);
            _mm512_mask_storeu_ps(cm + full, tail, acc);
        }
    }
}

// Full passes (8 rows of w) over blocks of 8 rows of c are register-tiled 8 x 32: each w vector
// loaded serves 8 rows of c and each c vector is loaded and stored once per pass (10 loads per
// 16 FMAs instead of 9 per 8).
__attribute__((target("avx512f,avx2,fma"))) static void panel_avx512(
    int64_t M, int rows, int64_t n, const float* a, int64_t lda, const float* w, int64_t ldw,
    float* c, int64_t ldc) {
    constexpr int kTileRows = 8;
    int64_t m0 = 0;
    if (rows == kRowsPerPass) {
        const int64_t n32 = n & ~(int64_t)31;
        for (; m0 + kTileRows <= M; m0 += kTileRows) {
            const float* am = a + m0 * lda;
            float* cm = c + m0 * ldc;
            for (int64_t k = 0; k < n32; k += 32) {
                __m512 acc[kTileRows][2];
#pragma GCC unroll 8
                for (int t = 0; t < kTileRows; ++t) {
                    acc[t][0] = _mm512_loadu_ps(cm + t * ldc + k);
                    acc[t][1] = _mm512_loadu_ps(cm + t * ldc + k + 16);
                }
#pragma GCC unroll 8
                for (int i = 0; i < kRowsPerPass; ++i) {
                    const __m512 w0 = _mm512_loadu_ps(w + i * ldw + k);
                    const __m512 w1 = _mm512_loadu_ps(w + i * ldw + k + 16);
#pragma GCC unroll 8
                    for (int t = 0; t < kTileRows; ++t) {
                        const __m512 coef = _mm512_set1_ps(am[t * lda + i]);
                        acc[t][0] = _mm512_fmadd_ps(coef, w0, acc[t][0]);
                        acc[t][1] = _mm512_fmadd_ps(coef, w1, acc[t][1]);
                    }
                }
#pragma GCC unroll 8
                for (int t = 0; t < kTileRows; ++t) {
                    _mm512_storeu_ps(cm + t * ldc + k, acc[t][0]);
                    _mm512_storeu_ps(cm + t * ldc + k + 16, acc[t][1]);
                }
            }
            if (n32 < n) rows_avx512(m0, m0 + kTileRows, n32, rows, n, a, lda, w, ldw, c, ldc);
        }
    }
    rows_avx512(m0, M, 0, rows, n, a, lda, w, ldw, c, ldc);
}

// Rows [m_begin, m_end) of c, columns [k_begin, n): one row of c at a time, 8 columns a step.
__attribute__((target("avx2,fma"))) static void rows_avx2(int64_t m_begin, int64_t m_end,
                                                         int64_t k_begin, int rows, int64_t n,
                                                         const float* a, int64_t lda,
                                                         const float* w, int64_t ldw, float* c,
                                                         int64_t ldc) {
    const int64_t full = k_begin + ((n - k_begin) & ~(int64_t)7);
    for (int64_t m = m_begin; m < m_end; ++m) {
        float* cm = c + m * ldc;
        __m256 coef[kRowsPerPass];
        for (int i = 0; i < rows; ++i) coef[i] = _mm256_set1_ps(a[m * lda + i]);
        for (int64_t k = k_begin; k < full; k += 8) {
            __m256 acc = _mm256_loadu_ps(cm + k);
            for (int i = 0; i < rows; ++i)
                acc = _mm256_fmadd_ps(coef[i], _mm256_loadu_ps(w + i * ldw + k), acc);
            _mm256_storeu_ps(cm + k, acc);
        }
        for (int64_t k = full; k < n; ++k) {
            float acc = cm[k];
            for (int i = 0; i < rows; ++i) acc += a[m * lda + i] * w[i * ldw + k];
            cm[k] = acc;
        }
    }
}

// As panel_avx512 with a 4 x 16 register tile (8 of the 16 ymm registers accumulate).
__attribute__((target("avx2,fma"))) static void panel_avx2(int64_t M, int rows, int64_t n,
                                                          const float* a, int64_t lda,
                                                          const float* w, int64_t ldw, float* c,
                                                          int64_t ldc) {
    constexpr int kTileRows = 4;
    int64_t m0 = 0;
    if (rows == kRowsPerPass) {
        const int64_t n16 = n & ~(int64_t)15;
        for (; m0 + kTileRows <= M; m0 += kTileRows) {
            const float* am = a + m0 * lda;
            float* cm = c + m0 * ldc;
            for (int64_t k = 0; k < n16; k += 16) {
                __m256 acc[kTileRows][2];
#pragma GCC unroll 4
                for (int t = 0; t < kTileRows; ++t) {
                    acc[t][0] = _mm256_loadu_ps(cm + t * ldc + k);
                    acc[t][1] = _mm256_loadu_ps(cm + t * ldc + k + 8);
                }
#pragma GCC unroll 8
                for (int i = 0; i < kRowsPerPass; ++i) {
                    const __m256 w0 = _mm256_loadu_ps(w + i * ldw + k);
                    const __m256 w1 = _mm256_loadu_ps(w + i * ldw + k + 8);
#pragma GCC unroll 4
                    for (int t = 0; t < kTileRows; ++t) {
                        const __m256 coef = _mm256_broadcast_ss(am + t * lda + i);
                        acc[t][0] = _mm256_fmadd_ps(coef, w0, acc[t][0]);
                        acc[t][1] = _mm256_fmadd_ps(coef, w1, acc[t][1]);
                    }
                }
#pragma GCC unroll 4
                for (int t = 0; t < kTileRows; ++t) {
                    _mm256_storeu_ps(cm + t * ldc + k, acc[t][0]);
                    _mm256_storeu_ps(cm + t * ldc + k + 8, acc[t][1]);
                }
            }
            if (n16 < n) rows_avx2(m0, m0 + kTileRows, n16, rows, n, a, lda, w, ldw, c, ldc);
        }
    }
    rows_avx2(m0, M, 0, rows, n, a, lda, w, ldw, c, ldc);
}
#endif

inline PanelFn active_panel() {
#if defined(LK_CPU_X86)
    const int32_t bits = active_kernels().isa_bits;
    if (bits & 2) return panel_avx512;
    if (bits & 1) return panel_avx2;
#endif
    return panel_portable;
}

}  // namespace gemv_tn_detail

// One term of a gemv_tn sum: a [M, J] (row stride lda) times w [J, K] (row stride ldw).
struct GemvTnTerm {
    int64_t J;
    const float* a;
    int64_t lda;
    const float* w;
    int64_t ldw;
};

// c [M, K] (row stride ldc) = (zero_c ? 0 : c) + sum over terms of a * w, every w read once.
template <size_t NTerms>
void gemv_tn(int64_t M, int64_t K, const GemvTnTerm (&terms)[NTerms], bool zero_c, float* c,
             int64_t ldc) {
    using namespace gemv_tn_detail;
    if (M <= 0 || K <= 0) return;
    const PanelFn panel = active_panel();
    double macs = 0.0;
    for (const GemvTnTerm& t : terms) macs += (double)M * (double)t.J * (double)K;
    const int threads = (int)std::max<double>(
        1.0, std::min<double>((double)thread_count(), macs / kGemvMacPerThread));
    // Each thread accumulates its share of w's rows into a private copy of c whose rows are
    // padded by a cache line: with c's own row stride (a multiple of 4 KiB when K is) the M rows
    // of a stretch would all fall in the same L1 sets and evict each other. The copies live in
    // one buffer the calling thread keeps between calls (allocated here, outside the parallel
    // region, so a failed allocation reaches the caller's guard instead of escaping OpenMP).
    const int64_t units = (K + kColumnUnit - 1) / kColumnUnit;
    const int64_t ldp = (units + 1) * kColumnUnit;
    thread_local std::vector<float> t_copies;
    if (t_copies.size() < (size_t)(threads * M * ldp)) t_copies.resize((size_t)(threads * M * ldp));
    float* const copies = t_copies.data();
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        const int team = omp_get_num_threads(), tid = omp_get_thread_num();
        float* const acc = copies + tid * M * ldp;
        for (int64_t m = 0; m < M; ++m) std::fill(acc + m * ldp, acc + m * ldp + K, 0.0f);
        for (const GemvTnTerm& t : terms) {
            const int64_t j_lo = t.J * tid / team, j_hi = t.J * (tid + 1) / team;
            for (int64_t j0 = j_lo; j0 < j_hi; j0 += kRowsPerPass) {
                const int rows = (int)std::min<int64_t>(kRowsPerPass, j_hi - j0);
                for (int64_t s = 0; s < K; s += kStretch)
                    panel(M, rows, std::min(kStretch, K - s), t.a + j0, t.lda,
                          t.w + j0 * t.ldw + s, t.ldw, acc + s, ldp);
            }
        }
#pragma omp barrier
        // Reduction: each thread sums the copies over its cache-line-aligned column range.
        const int64_t k0 = std::min(K, units * tid / team * kColumnUnit);
        const int64_t k1 = std::min(K, units * (tid + 1) / team * kColumnUnit);
        for (int64_t m = 0; m < M; ++m)
            for (int64_t k = k0; k < k1; ++k) {
                float sum = zero_c ? 0.0f : c[m * ldc + k];
                for (int p = 0; p < team; ++p) sum += copies[p * M * ldp + m * ldp + k];
                c[m * ldc + k] = sum;
            }
    }
}

}  // namespace lk::cpu
