// elementwise.cu: the element-wise ops of the autograd tape, and dtype casts and fills.
// Semantics are those of lk_cpu_relu_forward / _relu_backward / _axpy / _mse_loss /
// _f32_to_bf16 / _bf16_to_f32 (native/include/lora_kernels.h); docs/KERNELS.md has the geometry.
//
// Entry points (n elements, 64-bit counts):
//   lk_ew_relu_forward_f32    y = x <= 0 ? 0 : x  (NaN propagates, as torch.relu)       8 B/elem
//   lk_ew_relu_backward_f32   dx = x > 0 ? dy : 0 (torch's threshold_backward)          12 B/elem
//   lk_ew_axpy_f32            y += alpha·x                                               12 B/elem, 2 FLOPs
//   lk_ew_mse_loss_f32        block_sums[b] = Σ over block b's elements of (pred - target)²;
//                             dpred = 2(pred - target)/n                                 8 (+4) B/elem, 3 FLOPs
//   lk_ew_first_nonfinite_f32 block_first[b] = smallest index of a NaN/±Inf that block b   4 B/elem
//   lk_ew_first_nonfinite_bf16   visits, or n when it visits none                         2 B/elem
//   lk_ew_cast_f32_to_bf16    round to nearest even (common.cuh)                        6 B/elem
//   lk_ew_cast_bf16_to_f32    exact                                                      6 B/elem
//   lk_ew_fill_f32            dst = value                                                4 B/elem
//   lk_ew_fill_bf16           dst = bf16(value)                                          2 B/elem
//
// Strategy: grid-stride loops (kElementwiseThreads threads a block; the launcher caps the grid at a few
// blocks per SM and the loop covers the rest), one coalesced scalar access per element and
// array. All are bound by memory bandwidth; scalar 4-byte accesses from a full grid already
// reach most of it, so no vector path. The reductions (MSE, first non-finite) are deterministic:
// each thread reduces its grid-stride elements, the block reduces through warp shuffles and one
// shared slot per warp, and each block writes its own partial (no atomics); the launcher adds
// the grid's partials in block order on the host (a few dozen values), so a run repeats bit for
// bit. The MSE accumulates in double; dpred is computed in double and rounded once, like the CPU
// kernel, so it matches it bit for bit. Assumptions: none on alignment; n >= 0.
#include "common.cuh"
#include "launch_geometry.cuh"

namespace {

static_assert(kElementwiseThreads % 32 == 0 && kElementwiseThreads <= 1024, "whole warps, one block");

template <class Src, class Dst>
LK_DEVICE void lk_ew_cast(const Src* src, Dst* dst, lk_i64 n) {
    for (lk_i64 i = lk_grid_first(); i < n; i += lk_grid_stride()) lk_store(dst + i, lk_load(src + i));
}

template <class T>
LK_DEVICE void lk_ew_fill(T* dst, float value, lk_i64 n) {
    for (lk_i64 i = lk_grid_first(); i < n; i += lk_grid_stride()) lk_store(dst + i, value);
}

LK_DEVICE lk_i64 lk_warp_min_i64(lk_i64 v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        const lk_i64 o = __shfl_xor_sync(0xffffffffu, v, offset);
        v = o < v ? o : v;
    }
    return v;
}

LK_DEVICE bool lk_non_finite(float v) { return (lk_f32_bits(v) & 0x7f800000u) == 0x7f800000u; }
LK_DEVICE bool lk_non_finite(lk_bf16 v) { return (v.bits & 0x7f80u) == 0x7f80u; }

// block_first[blockIdx.x] = the smallest i this block's threads visit with src[i] non-finite, or n.
template <class T>
LK_DEVICE void lk_ew_first_nonfinite(const T* src, lk_i64 n, lk_i64* block_first) {
    LK_SHARED(lk_i64, warp_first, [kElementwiseThreads / 32]);
    lk_i64 first = n;
    for (lk_i64 i = lk_grid_first(); i < n; i += lk_grid_stride()) {
        if (lk_non_finite(src[i])) {
            first = i;  // a thread's indices only grow, so its first hit is its smallest
            break;
        }
    }
    first = lk_warp_min_i64(first);
    const int lane = (int)threadIdx.x & 31, warp = (int)threadIdx.x >> 5;
    if (lane == 0) warp_first[warp] = first;
    __syncthreads();
    if (warp == 0) {
        lk_i64 block = lane < kElementwiseThreads / 32 ? warp_first[lane] : n;
        block = lk_warp_min_i64(block);
        if (lane == 0) block_first[blockIdx.x] = block;
    }
}

}  // namespace

extern "C" __global__ void __launch_bounds__(kElementwiseThreads) lk_ew_relu_forward_f32(const float* x, float* y,
                                                                                long long n) {
    for (lk_i64 i = lk_grid_first(); i < n; i += lk_grid_stride()) {
        const float v = x[i];
        y[i] = v <= 0.0f ? 0.0f : v;
    }
}
LK_KERNEL(lk_ew_relu_forward_f32);

extern "C" __global__ void __launch_bounds__(kElementwiseThreads) lk_ew_relu_backward_f32(const float* x, const float* dy,
                                                                                 float* dx, long long n) {
    for (lk_i64 i = lk_grid_first(); i < n; i += lk_grid_stride()) dx[i] = x[i] > 0.0f ? dy[i] : 0.0f;
}
LK_KERNEL(lk_ew_relu_backward_f32);

extern "C" __global__ void __launch_bounds__(kElementwiseThreads) lk_ew_axpy_f32(float alpha, const float* x, float* y,
                                                                        long long n) {
    for (lk_i64 i = lk_grid_first(); i < n; i += lk_grid_stride()) y[i] += alpha * x[i];
}
LK_KERNEL(lk_ew_axpy_f32);

// block_sums: one double per block of the grid. dpred may be null.
extern "C" __global__ void __launch_bounds__(kElementwiseThreads) lk_ew_mse_loss_f32(const float* pred, const float* target,
                                                                            double* block_sums, float* dpred,
                                                                            long long n) {
    LK_SHARED(double, warp_sums, [kElementwiseThreads / 32]);
    const double inv_n = 1.0 / (double)n;
    double sum = 0.0;
    for (lk_i64 i = lk_grid_first(); i < n; i += lk_grid_stride()) {
        const double d = (double)pred[i] - (double)target[i];
        sum += d * d;
        if (dpred) dpred[i] = (float)(2.0 * d * inv_n);
    }
    sum = lk_warp_sum_f64(sum);
    const int lane = (int)threadIdx.x & 31, warp = (int)threadIdx.x >> 5;
    if (lane == 0) warp_sums[warp] = sum;
    __syncthreads();
    if (warp == 0) {
        double block_sum = lane < kElementwiseThreads / 32 ? warp_sums[lane] : 0.0;
        block_sum = lk_warp_sum_f64(block_sum);
        if (lane == 0) block_sums[blockIdx.x] = block_sum;
    }
}
LK_KERNEL(lk_ew_mse_loss_f32);

// block_first: one long long per block of the grid.
extern "C" __global__ void __launch_bounds__(kElementwiseThreads) lk_ew_first_nonfinite_f32(const float* src, long long n,
                                                                                   long long* block_first) {
    lk_ew_first_nonfinite(src, n, block_first);
}
LK_KERNEL(lk_ew_first_nonfinite_f32);

extern "C" __global__ void __launch_bounds__(kElementwiseThreads) lk_ew_first_nonfinite_bf16(const lk_bf16* src, long long n,
                                                                                    long long* block_first) {
    lk_ew_first_nonfinite(src, n, block_first);
}
LK_KERNEL(lk_ew_first_nonfinite_bf16);

extern "C" __global__ void __launch_bounds__(kElementwiseThreads) lk_ew_cast_f32_to_bf16(const float* src, lk_bf16* dst,
                                                                                long long n) {
    lk_ew_cast(src, dst, n);
}
LK_KERNEL(lk_ew_cast_f32_to_bf16);

extern "C" __global__ void __launch_bounds__(kElementwiseThreads) lk_ew_cast_bf16_to_f32(const lk_bf16* src, float* dst,
                                                                                long long n) {
    lk_ew_cast(src, dst, n);
}
LK_KERNEL(lk_ew_cast_bf16_to_f32);

extern "C" __global__ void __launch_bounds__(kElementwiseThreads) lk_ew_fill_f32(float* dst, float value, long long n) {
    lk_ew_fill(dst, value, n);
}
LK_KERNEL(lk_ew_fill_f32);

extern "C" __global__ void __launch_bounds__(kElementwiseThreads) lk_ew_fill_bf16(lk_bf16* dst, float value, long long n) {
    lk_ew_fill(dst, value, n);
}
LK_KERNEL(lk_ew_fill_bf16);
