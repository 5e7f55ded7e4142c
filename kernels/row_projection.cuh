// row_projection.cuh: P[row, a] = Σ_k W[row, k]·A[a, k] in near-double, one warp per weight row,
// whatever the base's storage: DoRA's weight norm needs P = W0·Aᵀ (kernels/dora.cu, dense W0) and
// QDoRA's needs P = deq(W)·Aᵀ (kernels/nf4.cu, 4-bit W, decoded in registers).
//
// Strategy: the warp's lanes stride k; each lane adds its products into fp32 partial sums of at most
// kProjectPartialTerms terms, flushed to double, so a partial's rounding error is bounded by
// 64·2⁻²⁴ of its terms' magnitudes instead of in·2⁻²⁴ (the bound lora_kernels_dora.h certifies with,
// LK_DORA_PARTIAL_TERMS), at fp32 speed. kProjectColumns columns of P per pass over the row keep the
// row's values in registers; the warp then reduces each column in double and lane j writes column j.
// `absolute` multiplies |W|·|A| instead (the norm's error bound needs H = |A|·|A|ᵀ).
#pragma once

#include "common.cuh"

namespace {

constexpr int kProjectColumns = 8;        // columns of P one pass over a row accumulates
constexpr int kProjectPartialTerms = 64;  // LK_DORA_PARTIAL_TERMS: products per fp32 partial sum

// P_row[a] for a in [0, r): row_value(k) is W[row, k] (dense load or 4-bit decode), A is [r, in].
// Call from every lane of one warp; no barrier.
template <class T, class RowValue>
LK_DEVICE void lk_project_row(const RowValue& row_value, const T* A, double* p_row, int in, int r, bool absolute) {
    const int lane = (int)threadIdx.x & 31;
    for (int a0 = 0; a0 < r; a0 += kProjectColumns) {
        const int columns = lk_min(kProjectColumns, r - a0);
        double total[kProjectColumns];
        float partial[kProjectColumns];
#pragma unroll
        for (int j = 0; j < kProjectColumns; ++j) total[j] = 0.0, partial[j] = 0.0f;
        int terms = 0;
        for (int k = lane; k < in; k += 32) {
            float wv = row_value(k);
            if (absolute) wv = wv < 0.0f ? -wv : wv;
#pragma unroll
            for (int j = 0; j < kProjectColumns; ++j)
                if (j < columns) {
                    float av = lk_load(A + (lk_i64)(a0 + j) * in + k);
                    if (absolute) av = av < 0.0f ? -av : av;
                    partial[j] += wv * av;
                }
            if (++terms == kProjectPartialTerms) {
#pragma unroll
                for (int j = 0; j < kProjectColumns; ++j) total[j] += (double)partial[j], partial[j] = 0.0f;
                terms = 0;
            }
        }
        double mine = 0.0;  // lane j keeps column a0 + j (a register array indexed by a constant only)
#pragma unroll
        for (int j = 0; j < kProjectColumns; ++j) {
            const double sum = lk_warp_sum_f64(total[j] + (double)partial[j]);
            if (lane == j) mine = sum;
        }
        if (lane < columns) p_row[a0 + lane] = mine;
    }
}

}  // namespace
