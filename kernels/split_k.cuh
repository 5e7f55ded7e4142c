// split_k.cuh: the second half of a split reduction. A long reduction (over tokens, or over the
// images and pixels of a batch) is cut into chunks whose blocks each write an fp32 partial result;
// one more launch adds the partials in chunk order and scales the sum once, so the result does not
// depend on which block finished first (no atomics) and repeats bit for bit.
//
// Users: kernels/kron.cu (the factor gradients, summed over token chunks) and kernels/conv.cu (the
// weight gradient, summed over chunks of the batch's pixels). Geometry: the element-wise grid
// (launch_geometry.cuh), a grid-stride loop over the n outputs; bytes 4·chunks·n + s·n (+ s·n when
// beta reads the output), FLOPs chunks·n.
#pragma once

#include "common.cuh"
#include "launch_geometry.cuh"

namespace {

// out[i] = alpha·Σ_c partial[c·n + i] (+ beta·out[i]) for i in [0, n), chunks summed in order;
// beta == 0 does not read out.
template <class T>
LK_DEVICE void lk_split_k_sum(const float* partial, T* out, int chunks, lk_i64 n, float alpha, float beta) {
    const lk_i64 stride = (lk_i64)gridDim.x * blockDim.x;
    for (lk_i64 i = (lk_i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        float sum = 0.0f;
        for (int c = 0; c < chunks; ++c) sum += partial[c * n + i];
        lk_store(out + i, beta == 0.0f ? alpha * sum : alpha * sum + beta * lk_load(out + i));
    }
}

}  // namespace
