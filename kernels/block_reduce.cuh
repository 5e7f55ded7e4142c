// block_reduce.cuh: reductions over a whole thread block whose result every thread receives.
//
// Each warp reduces with shuffles, lane 0 of each warp writes one shared slot, and after a
// barrier every thread combines the slots in slot order: a fixed order, so the result repeats
// bit for bit. `scratch` holds Threads / 32 values; a trailing barrier frees it for the next
// call. Every thread of the block must call (the barriers), with Threads = blockDim.x.
#pragma once

#include "common.cuh"

template <int Threads>
LK_DEVICE double lk_block_sum_f64(double v, double* scratch) {
    static_assert(Threads % 32 == 0 && Threads <= 1024, "whole warps, one block");
    v = lk_warp_sum_f64(v);
    if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = v;
    __syncthreads();
    double total = 0.0;
    for (int w = 0; w < Threads / 32; ++w) total += scratch[w];
    __syncthreads();
    return total;
}

// The largest value. Whether a NaN wins depends on where it sits (comparisons with NaN are
// false), so a caller that must report NaN lets it reach a sum as well.
template <int Threads>
LK_DEVICE float lk_block_max(float v, float* scratch) {
    static_assert(Threads % 32 == 0 && Threads <= 1024, "whole warps, one block");
    v = lk_warp_max(v);
    if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = v;
    __syncthreads();
    float best = scratch[0];
    for (int w = 1; w < Threads / 32; ++w) best = scratch[w] > best ? scratch[w] : best;
    __syncthreads();
    return best;
}
