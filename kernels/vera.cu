// vera.cu: the VeRA-specific steps of y = x W0ᵀ + bias + λ_b ⊙ ((λ_d ⊙ (dropout(x) A_lᵀ)) B_lᵀ),
// its backward and merge (REFERENCE.md §3; semantics of lk_cpu_vera_* in
// native/include/lora_kernels_vera.h). The heavy products run on kernels/lora.cu.
//
// Entry points (T = f32 | bf16: storage of every operand; all arithmetic in fp32):
//   lk_vera_fold_T           B' = diag(λ_b)·B_l·diag(λ_d) [out, r]; A_l copied dense [r, in]
//   lk_vera_grad_lambda_b_T  dλ_b[j] = Σ_i G[j,i]·B_l[j,i]·λ_d[i]     one warp per row j
//   lk_vera_grad_lambda_d_T  dλ_d[i] = Σ_j G[j,i]·B_l[j,i]·λ_b[j]     32 columns per block
//
// Strategy and why: y_j = Σ_k x_k W0_jk + Σ_i u_i·(λ_b,j B_ji λ_d,i), so VeRA is LoRA with scale 1,
// the same u = dropout(x) A_lᵀ and B' in place of B. The launcher (GpuBackend.Vera.cs) folds B'
// once per call here (O(out·r), against the forward's O(M·out·(in + r))) and then runs LoRA's
// decode or project + tiled forward unchanged; the backward is LoRA's too: du = dy B' (= dv ⊙ λ_d)
// and dx = dy W0 + dropout'(du A_l) are grad_u and grad_x, and G = dyᵀ u [out, r] is grad_b, from
// which both vector gradients follow by the two reductions here, since
//   dλ_b[j] = Σ_t dy[t,j]·Σ_i λ_d,i u[t,i] B_ji = Σ_i G_ji B_ji λ_d,i  and
//   dλ_d[i] = Σ_t u[t,i]·Σ_j dy[t,j] λ_b,j B_ji = Σ_j G_ji B_ji λ_b,j
// (no division by λ_d, no [M, out] intermediate). Dedicated fused kernels would save only the
// fold's and G's O(out·r) round trips through memory while duplicating the whole tile engine
// and decode kernel, whose tuning then would have to be kept in step; reuse is the cheaper
// correct design. The LoRA kernels read A with row stride `in`, while A_l sits in vera_A with
// stride max_in: the fold copies it dense only when in < max_in (the launcher passes vera_A
// itself when the strides agree). Cost of reuse with bf16 storage: B' and G are stored as bf16,
// one extra rounding (relative 2^-8) of each term of the adapter branch and of the vector
// gradients, the same size as the rounding of the bf16 outputs themselves.
//
// Reductions here run in a fixed order (no atomics): results are deterministic.
//
// Bytes and FLOPs per call (s = bytes per T element):
//   fold            FLOPs 2·out·r;  bytes s·(2·out·r + out + r) + (copy only) s·2·r·in
//   grad_lambda_b   FLOPs 3·out·r;  bytes s·(2·out·r + r + out)
//   grad_lambda_d   FLOPs 3·out·r;  bytes s·(2·out·r + out + r)
// Assumptions: row-major, every dimension < 2^31, r >= 1; element counts (r·in + out·r) may pass
// 2^31, so flat indices and the grid-stride loop are 64-bit. No alignment.
#include "common.cuh"

namespace {

constexpr int kVeraThreads = 256;
constexpr int kVeraWarps = kVeraThreads / 32;
constexpr int kVeraColumns = 32;  // grad_lambda_d: columns per block, one per lane
static_assert(kVeraColumns == 32, "one column per lane of a warp");
static_assert(kVeraThreads % 32 == 0, "whole warps");

// Strategy: one grid-stride loop over the r·in copy (when A_dense is non-null) followed by the
// out·r fold, so consecutive threads touch consecutive elements of every array (coalesced).
template <class T>
LK_DEVICE void lk_vera_fold(const T* A, int lda, const T* B, const T* lambda_d, const T* lambda_b, T* A_dense,
                            T* B_folded, int in, int out, int r) {
    const lk_i64 copy = A_dense ? (lk_i64)r * in : 0;
    const lk_i64 total = copy + (lk_i64)out * r;
    for (lk_i64 idx = lk_grid_first(); idx < total; idx += lk_grid_stride()) {
        if (idx < copy) {
            const lk_i64 i = idx / in, k = idx - i * in;
            A_dense[idx] = A[i * lda + k];
        } else {
            const lk_i64 e = idx - copy, j = e / r, i = e - j * r;
            lk_store(B_folded + e, lk_load(lambda_b + j) * lk_load(B + e) * lk_load(lambda_d + i));
        }
    }
}

// Strategy: warp w of block b owns row j = b·8 + w; its lanes stride over the row's r elements
// (contiguous in G and B) and lk_warp_sum combines them. Grid ceil(out / 8).
template <class T>
LK_DEVICE void lk_vera_grad_lambda_b(const T* G, const T* B, const T* lambda_d, T* dlambda_b, int out, int r) {
    const int lane = (int)threadIdx.x % 32;
    const int j = (int)blockIdx.x * kVeraWarps + (int)threadIdx.x / 32;
    if (j >= out) return;  // warp-uniform, and no barrier follows
    float sum = 0.0f;
    const lk_i64 row = (lk_i64)j * r;
    for (int i = lane; i < r; i += 32) sum += lk_load(G + row + i) * lk_load(B + row + i) * lk_load(lambda_d + i);
    sum = lk_warp_sum(sum);
    if (lane == 0) lk_store(dlambda_b + j, sum);
}

// Strategy: block b owns columns [32b, 32b + 32); lane = column (32 consecutive elements of a row,
// one coalesced load per warp), the 8 warps stride over the out rows, then a shared [8][32] sum
// in a fixed order. Grid ceil(r / 32): r is small, so each block streams its columns of all rows.
template <class T>
LK_DEVICE void lk_vera_grad_lambda_d(const T* G, const T* B, const T* lambda_b, T* dlambda_d, int out, int r) {
    LK_SHARED(float, partial, [kVeraWarps][kVeraColumns]);
    const int lane = (int)threadIdx.x % 32, warp = (int)threadIdx.x / 32;
    const int i = (int)blockIdx.x * kVeraColumns + lane;
    float sum = 0.0f;
    if (i < r)
        for (int j = warp; j < out; j += kVeraWarps) {
            const lk_i64 e = (lk_i64)j * r + i;
            sum += lk_load(G + e) * lk_load(B + e) * lk_load(lambda_b + j);
        }
    partial[warp][lane] = sum;
    __syncthreads();
    if (warp == 0 && i < r) {
        float total = 0.0f;
#pragma unroll
        for (int w = 0; w < kVeraWarps; ++w) total += partial[w][lane];
        lk_store(dlambda_d + i, total);
    }
}

}  // namespace

// ---- entry points: thin wrappers instantiating each template for fp32 and bf16 storage -----------
extern "C" __global__ void __launch_bounds__(kVeraThreads) lk_vera_fold_f32(
    const float* A, int lda, const float* B, const float* lambda_d, const float* lambda_b, float* A_dense,
    float* B_folded, int in, int out, int r) {
    lk_vera_fold<float>(A, lda, B, lambda_d, lambda_b, A_dense, B_folded, in, out, r);
}
LK_KERNEL(lk_vera_fold_f32);

extern "C" __global__ void __launch_bounds__(kVeraThreads) lk_vera_grad_lambda_b_f32(
    const float* G, const float* B, const float* lambda_d, float* dlambda_b, int out, int r) {
    lk_vera_grad_lambda_b<float>(G, B, lambda_d, dlambda_b, out, r);
}
LK_KERNEL(lk_vera_grad_lambda_b_f32);

extern "C" __global__ void __launch_bounds__(kVeraThreads) lk_vera_grad_lambda_d_f32(
    const float* G, const float* B, const float* lambda_b, float* dlambda_d, int out, int r) {
    lk_vera_grad_lambda_d<float>(G, B, lambda_b, dlambda_d, out, r);
}
LK_KERNEL(lk_vera_grad_lambda_d_f32);

extern "C" __global__ void __launch_bounds__(kVeraThreads) lk_vera_fold_bf16(
    const lk_bf16* A, int lda, const lk_bf16* B, const lk_bf16* lambda_d, const lk_bf16* lambda_b, lk_bf16* A_dense,
    lk_bf16* B_folded, int in, int out, int r) {
    lk_vera_fold<lk_bf16>(A, lda, B, lambda_d, lambda_b, A_dense, B_folded, in, out, r);
}
LK_KERNEL(lk_vera_fold_bf16);

extern "C" __global__ void __launch_bounds__(kVeraThreads) lk_vera_grad_lambda_b_bf16(
    const lk_bf16* G, const lk_bf16* B, const lk_bf16* lambda_d, lk_bf16* dlambda_b, int out, int r) {
    lk_vera_grad_lambda_b<lk_bf16>(G, B, lambda_d, dlambda_b, out, r);
}
LK_KERNEL(lk_vera_grad_lambda_b_bf16);

extern "C" __global__ void __launch_bounds__(kVeraThreads) lk_vera_grad_lambda_d_bf16(
    const lk_bf16* G, const lk_bf16* B, const lk_bf16* lambda_b, lk_bf16* dlambda_d, int out, int r) {
    lk_vera_grad_lambda_d<lk_bf16>(G, B, lambda_b, dlambda_d, out, r);
}
LK_KERNEL(lk_vera_grad_lambda_d_bf16);
