// gemv.h: the small-M path, out[m, j] = finish(m, j, sum_k x[m, k] * w[j, k]) for M <= a few.
//
// Strategy: when x has only a few rows the product is bound by reading w (the [N, K] weight,
// usually far larger than the caches), so w is read from memory exactly once: 4 rows at a time,
// against the first 4 rows of x, then (from L2) against the next 4 rows of x, and so on; x
// stays in L1/L2. Threads take contiguous ranges of w's rows, so each reads one contiguous
// stretch of memory. (Splitting K into stretches that stay in L1 across the blocks of x was
// measured 2-12% slower for M = 8..32.)
// Bytes: 4*N*K (w) + 4*M*K per thread (x, from cache); FLOP: 2*M*N*K.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>

#include "isa.h"

namespace lk::cpu {

// The largest M the forward and lk_cpu_sgemm send down this path: past it the packed GEMM,
// whose micro-tile reuses each loaded weight for mr rows, is faster (measured; README here).
constexpr int64_t kGemvMaxRows = 16;

// Below about this many multiply-adds per thread a fork/join costs more than it saves.
constexpr double kGemvMacPerThread = 1.0e6;

// x [M, K] (row stride ldx), w [N, K] (row stride ldw); calls finish(m, j, dot) once per output
// element, from the thread that owns row j of w. finish must not throw.
template <class Finish>
void gemv_nt(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const float* w,
             int64_t ldw, const Finish& finish) {
    if (M <= 0 || N <= 0) return;
    const IsaKernels& isa = active_kernels();
    const int64_t groups = (N + kDotBlock - 1) / kDotBlock;
    const double macs = (double)M * (double)N * (double)K;
    const int threads =
        (int)std::max<double>(1.0, std::min<double>(thread_count(), macs / kGemvMacPerThread));
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t g = 0; g < groups; ++g) {
        const int64_t j0 = g * kDotBlock;
        const int cols = (int)std::min<int64_t>(kDotBlock, N - j0);
        for (int64_t m0 = 0; m0 < M; m0 += kDotBlock) {
            const int rows = (int)std::min<int64_t>(kDotBlock, M - m0);
            float dots[kDotBlock * kDotBlock];
            isa.dot_block(K, rows, x + m0 * ldx, ldx, cols, w + j0 * ldw, ldw, dots);
            for (int m = 0; m < rows; ++m)
                for (int j = 0; j < cols; ++j) finish(m0 + m, j0 + j, dots[m * cols + j]);
        }
    }
}

}  // namespace lk::cpu
