// gated.cu: the gated-rank family, y = x W0ᵀ + bias + s·((dropout(x) Aᵀ) ⊙ G) Bᵀ with a gate G per
// rank (SoRA's g, AdaLoRA's masked Λ, MiRA's rank mask) or per token and rank (a dense router),
// its sparse top-k form over a pool of rank-1 experts (y_m += s·Σ_t w_mt·(A[e_mt]·x_m)·B[:, e_mt]),
// the router's graph ops, and the training steps of SoRA and AdaLoRA. Semantics are those of
// lk_cpu_gated_* (native/include/lora_kernels_gated.h); docs/KERNELS.md has every geometry.
//
// Entry points (T = f32 | bf16: storage of x, W0, A, B, dy and their gradients; gates, u, h,
// routing weights, probabilities and every intermediate are fp32; sums accumulate in fp32):
//   lk_gated_fold_T              B' = B·diag(g)                            grid-stride
//   lk_gated_rank_grad_T         dB = dB'·diag(g), dg_j = Σ_n B_nj dB'_nj   32 columns per block
//   lk_gated_token_gate_f32      u ⊙ G, and z ⊙ G, z ⊙ u for the backward   grid-stride
//   lk_gated_topk_project_T      h = dropout(x_m)·A[e], c = s·w·h           one warp per slot
//   lk_gated_topk_expand_T       Y[m, :] += mask·Σ_t c_mt·row(e_mt)         grid-stride
//   lk_gated_topk_grad_h_T       z = s·dy_m·B[:, e]; dw = z·h, dh = z·w     one warp per slot
//   lk_gated_topk_scatter_T      G[e, :] = Σ_{slots of e} c·X[m, :]         one block per (expert, 256 columns)
//   lk_gated_softmax_f32 / _backward_f32, lk_gated_route_topk_f32 / _backward_f32  one warp per row
//   lk_gated_balance_f32 / _backward_f32   the load-balancing loss's counts, sums, gradient
//   lk_gated_soft_threshold_f32  SoRA's proximal step                     grid-stride
//   lk_gated_sensitivity_T       AdaLoRA's importance EMAs                 grid-stride
//   lk_gated_triplet_score_f32   AdaLoRA's per-triplet score              one block per triplet
//   lk_gated_gram_T, lk_gated_orth_grad_T   AdaLoRA's orthogonality regulariser   tile engine
//
// Strategies and why:
//   * The gated products are LoRA's (kernels/lora.cu), so no GEMM is written here. A per-rank gate
//     folds into B' = B·diag(g) (VeRA's move, kernels/vera.cu) and the LoRA decode or tiled forward
//     and LoRA's backward run on B' unchanged; dB' = s·dyᵀu then gives dB = dB'·diag(g) and the gate's
//     gradient dg_j = Σ_n B_nj·dB'_nj (= Σ_m (s·dy B)_mj·u_mj) in one O(out·r) pass. A per-token gate
//     cannot fold into B; the launcher forms u ⊙ G [M, r] (fp32) and hands it to LoRA's tiled forward
//     as u; the backward forms z = s·dy B with grad_u, then du = z ⊙ G, dG = z ⊙ u and u ⊙ G here, and
//     runs LoRA's grad_b, grad_a and grad_x on them. Fusing the gate into the tile loaders would
//     save only these [M, r] round trips (4·M·r bytes, against the GEMMs' 4·M·(in + out)) while
//     duplicating the tile kernels.
//   * Top-k never reads an expert a token did not pick. The base product is LoRA's with r = 0
//     (decode or tiled); h = A[e]·dropout(x_m) is one warp per slot (coalesced over in); the expert
//     term is added by a grid-stride pass over y (B[n, e] is strided by E, served from L2: B is
//     out·E·s bytes). Work: O(M·k·(in + out)) beside the base, independent of E. The backward's
//     scatter (dA, dB) gives each (expert, 256-column) block the whole slot list to scan, in slot
//     order (deterministic, no atomics): E·M·k index reads, the one part that grows with E.
//   * Router rows (E values) are short: one warp per row, lanes strided over E, warp reductions.
//     Top-k picks k times the largest (value, lower index) pair below the previous pick, a strict
//     total order, so no list of picked indices is kept.
//   * AdaLoRA's Gram matrix A·Aᵀ / BᵀB and (C − I)·A / B·(C − I) are the tile engine with an
//     operand that subtracts the identity while staging.
//
// Assumptions: row-major dense tensors; every element count < 2^31 (checked in C#); expert
// indices are exact integers in [0, E) held in fp32 (the C# tensors have no integer dtype; E and
// M·k < 2^24, checked in C#). No alignment is assumed.
//
// Bytes and FLOPs per call (s = bytes per T element; P = M·k slots):
//   fold          FLOPs out·r;           bytes s·2·out·r + 4·r
//   rank_grad     FLOPs 3·out·r;         bytes s·3·out·r + 8·r
//   token_gate    FLOPs 3·M·r;           bytes 4·(3..6)·M·r
//   topk_project  FLOPs 2·P·in;          bytes s·(P·in (x rows, mostly L1/L2) + P·in (A rows)) + 16·P
//   topk_expand   FLOPs 2·M·cols·k;      bytes s·(2·M·cols + P·cols from L2) + 8·P
//   topk_grad_h   FLOPs 2·P·out;         bytes s·2·P·out (dy rows and B columns, from L2) + 20·P
//   topk_scatter  FLOPs 2·P·cols;        bytes s·(P·cols + E·cols) + 8·E·P·ceil(cols/256) (index scans)
//   softmax       FLOPs ~4·M·E + M·E exp; bytes 8·M·E      (backward 12·M·E)
//   route_topk    FLOPs k·M·E compares;  bytes 4·k·M·E (rows re-read from L1) + 8·P
//   balance       bytes 4·(M·E + E·P) + 8·E  (backward 4·M·E + 4·E)
//   soft_threshold, sensitivity   bytes 8 and 4·(s + 5) per element
//   triplet_score FLOPs 2·r·(in + out);  bytes 8·r·(in + out + 1)
//   gram          FLOPs 2·side²·K;       bytes s·K·side (re-read per tile, from L2) + 4·side²
//   orth_grad     FLOPs 2·rows·cols·side; bytes s·2·rows·cols + 4·side²
#include "common.cuh"
#include "launch_geometry.cuh"
#include "tile_engine.cuh"

namespace {

constexpr int kGatedThreads = 256;
constexpr int kGatedWarps = kGatedThreads / 32;
constexpr int kScatterColumns = kGatedThreads;  // columns of G one scatter block owns
static_assert(kGatedThreads % 32 == 0, "whole warps");

LK_DEVICE lk_i64 lk_grid_stride_begin() { return (lk_i64)blockIdx.x * blockDim.x + threadIdx.x; }
LK_DEVICE lk_i64 lk_grid_stride_step() { return (lk_i64)gridDim.x * blockDim.x; }

// +Inf as bits: NVRTC has no math.h, so no INFINITY macro.
LK_DEVICE float lk_infinity() { return lk_bits_f32(0x7f800000u); }

// ---- per-rank gate ------------------------------------------------------------------------------

// Strategy: a grid-stride loop over B's out·r elements; B'[n, j] = B[n, j]·g[j] (fp32 product, stored as T).
template <class T>
LK_DEVICE void lk_gated_fold(const T* B, const float* gate, T* B_folded, int out, int r) {
    const lk_i64 total = (lk_i64)out * r;
    for (lk_i64 e = lk_grid_stride_begin(); e < total; e += lk_grid_stride_step())
        lk_store(B_folded + e, lk_load(B + e) * gate[(int)e % r]);  // e < 2^31: a 32-bit remainder (no 64-bit division)
}

// Strategy: block b owns columns [32b, 32b + 32); lane = column (a coalesced 32-element row segment
// per warp load), the 8 warps stride the out rows; each element's dB = dB'·g is written by the
// thread that read it (so dB may alias dB'), and dg's partial sums meet in a shared [8][32] summed in
// a fixed order. Grid ceil(r / 32).
template <class T>
LK_DEVICE void lk_gated_rank_grad(const T* B, const T* dB_folded, const float* gate, T* dB, float* dgate, int out,
                                  int r) {
    LK_SHARED(float, partial, [kGatedWarps][32]);
    const int lane = (int)threadIdx.x % 32, warp = (int)threadIdx.x / 32;
    const int j = (int)blockIdx.x * 32 + lane;
    float sum = 0.0f;
    if (j < r) {
        const float g = gate[j];
        for (int n = warp; n < out; n += kGatedWarps) {
            const float folded = lk_load(dB_folded + n * r + j);
            sum += lk_load(B + n * r + j) * folded;
            if (dB) lk_store(dB + n * r + j, folded * g);
        }
    }
    partial[warp][lane] = sum;
    __syncthreads();
    if (warp == 0 && j < r && dgate) {
        float total = 0.0f;
#pragma unroll
        for (int w = 0; w < kGatedWarps; ++w) total += partial[w][lane];
        dgate[j] = total;
    }
}

// ---- top-k over a pool of rank-1 experts --------------------------------------------------------

// Strategy: warp w of block b owns slot p = 8b + w (token p / k); its lanes stride the token's
// row of x (dropout mask regenerated per element, as every LoRA kernel hashes it) and the picked
// expert's row of A, coalesced; lane 0 writes h and the expert term's coefficient s·w·h.
template <class T>
LK_DEVICE void lk_gated_topk_project(const T* x, const T* A, const float* expert, const float* weight, float* h,
                                     float* coefficient, int M, int in, int k, float scale, float dropout_p,
                                     lk_u64 seed) {
    const int lane = (int)threadIdx.x % 32;
    const int slot = (int)blockIdx.x * kGatedWarps + (int)threadIdx.x / 32;
    if (slot >= M * k) return;  // warp-uniform, and no barrier follows
    const int m = slot / k, e = (int)expert[slot];
    float sum = 0.0f;
    for (int c = lane; c < in; c += 32)
        sum += lk_load(x + m * in + c) * lk_dropout_factor(seed, (lk_u64)(m * in + c), dropout_p) *
               lk_load(A + e * in + c);
    sum = lk_warp_sum(sum);
    if (lane == 0) {
        h[slot] = sum;
        coefficient[slot] = scale * weight[slot] * sum;
    }
}

// Strategy: a grid-stride loop over Y's M·cols elements; element (m, c) adds
// mask(m, c)·Σ_t coefficient[m, t]·rows[e_mt·ld_expert + c·ld_col], reading only the k picked rows
// (the forward: B's columns, ld_expert = 1, ld_col = E, no mask; dx: A's rows, ld_expert = in,
// ld_col = 1, the forward's dropout mask).
template <class T>
LK_DEVICE void lk_gated_topk_expand(T* Y, const float* coefficient, const float* expert, const T* rows, int ld_expert,
                                    int ld_col, int M, int cols, int k, float dropout_p, lk_u64 seed) {
    const lk_i64 total = (lk_i64)M * cols;
    for (lk_i64 i = lk_grid_stride_begin(); i < total; i += lk_grid_stride_step()) {
        const int m = (int)i / cols, c = (int)i - m * cols;  // i < 2^31: 32-bit division
        float sum = 0.0f;
        for (int t = 0; t < k; ++t)
            sum += coefficient[m * k + t] * lk_load(rows + (int)expert[m * k + t] * ld_expert + c * ld_col);
        lk_store(Y + i, lk_load(Y + i) + sum * lk_dropout_factor(seed, (lk_u64)i, dropout_p));
    }
}

// Strategy: warp w of block b owns slot p = 8b + w; its lanes stride dy's row m and the picked
// expert's column of B (strided by E, from L2); lane 0 writes dw = z·h, dh = z·w and dB's scatter
// coefficient s·w·h. Either of dweight and coefficient_b may be null.
template <class T>
LK_DEVICE void lk_gated_topk_grad_h(const T* dy, const T* B, const float* expert, const float* weight, const float* h,
                                    float* dweight, float* dh, float* coefficient_b, int M, int out, int E, int k,
                                    float scale) {
    const int lane = (int)threadIdx.x % 32;
    const int slot = (int)blockIdx.x * kGatedWarps + (int)threadIdx.x / 32;
    if (slot >= M * k) return;  // warp-uniform, and no barrier follows
    const int m = slot / k, e = (int)expert[slot];
    float sum = 0.0f;
    for (int n = lane; n < out; n += 32) sum += lk_load(dy + m * out + n) * lk_load(B + n * E + e);
    sum = lk_warp_sum(sum);
    if (lane == 0) {
        const float z = scale * sum, w = weight[slot];
        dh[slot] = z * w;
        if (dweight) dweight[slot] = z * h[slot];
        if (coefficient_b) coefficient_b[slot] = scale * w * h[slot];
    }
}

// Strategy: block (j, b) owns expert j's gradient over columns [256b, 256b + 256), one column per
// thread; it scans every slot in (m, t) order (the index a broadcast load) and accumulates
// coefficient·mask·X[m, c] for the slots routed to j, then writes G[j·ld_expert + c·ld_col] once
// (zero for an expert no token picked: a dense gradient). dA: X = x, ld_expert = in, ld_col = 1,
// the dropout mask; dB: X = dy, ld_expert = 1, ld_col = E. Grid (E, ceil(cols / 256)).
template <class T>
LK_DEVICE void lk_gated_topk_scatter(T* G, const float* coefficient, const float* expert, const T* X, int ld_expert,
                                     int ld_col, int M, int cols, int k, float dropout_p, lk_u64 seed) {
    const int j = (int)blockIdx.x;
    const int c = (int)blockIdx.y * kScatterColumns + (int)threadIdx.x;
    if (c >= cols) return;  // no barrier follows
    float sum = 0.0f;
    for (int slot = 0; slot < M * k; ++slot) {
        if ((int)expert[slot] != j) continue;
        const int m = slot / k;
        sum += coefficient[slot] * lk_load(X + m * cols + c) * lk_dropout_factor(seed, (lk_u64)(m * cols + c), dropout_p);
    }
    lk_store(G + j * ld_expert + c * ld_col, sum);
}

// ---- router -------------------------------------------------------------------------------------

// Strategy (softmax): warp w of block b owns row m = 8b + w; lanes stride its E logits; the max and
// the sum of exp(l - max) are warp reductions; each probability is written by the lane that read it.
LK_DEVICE void lk_gated_softmax(const float* logits, float* probs, int M, int E) {
    const int lane = (int)threadIdx.x % 32;
    const int m = (int)blockIdx.x * kGatedWarps + (int)threadIdx.x / 32;
    if (m >= M) return;  // warp-uniform, and no barrier follows
    const float* row = logits + (lk_i64)m * E;
    float top = -lk_infinity();
    for (int j = lane; j < E; j += 32) top = top > row[j] ? top : row[j];
    top = lk_warp_max(top);
    float sum = 0.0f;
    for (int j = lane; j < E; j += 32) sum += expf(row[j] - top);
    sum = lk_warp_sum(sum);
    for (int j = lane; j < E; j += 32) probs[(lk_i64)m * E + j] = expf(row[j] - top) / sum;
}

LK_DEVICE void lk_gated_softmax_backward(const float* probs, const float* dprobs, float* dlogits, int M, int E) {
    const int lane = (int)threadIdx.x % 32;
    const int m = (int)blockIdx.x * kGatedWarps + (int)threadIdx.x / 32;
    if (m >= M) return;  // warp-uniform, and no barrier follows
    const lk_i64 base = (lk_i64)m * E;
    float inner = 0.0f;
    for (int j = lane; j < E; j += 32) inner += probs[base + j] * dprobs[base + j];
    inner = lk_warp_sum(inner);
    for (int j = lane; j < E; j += 32) dlogits[base + j] = probs[base + j] * (dprobs[base + j] - inner);
}

// (value, index) is ahead of (other_value, other_index): larger value, or equal and lower index.
LK_DEVICE bool lk_route_ahead(float value, int index, float other_value, int other_index) {
    return value > other_value || (value == other_value && index < other_index);
}

// Strategy: warp per row; k rounds, each a lane-local scan of the eligible columns (those behind
// the previous pick in the (value, lower index) order) and a warp arg-max by shuffles; lane 0
// writes the pick and, when renormalising, divides its k weights by their sum at the end.
LK_DEVICE void lk_gated_route_topk(const float* probs, float* expert, float* weight, int M, int E, int k,
                                   int renormalize) {
    const int lane = (int)threadIdx.x % 32;
    const int m = (int)blockIdx.x * kGatedWarps + (int)threadIdx.x / 32;
    if (m >= M) return;  // warp-uniform, and no barrier follows
    const float* row = probs + (lk_i64)m * E;
    float previous = lk_infinity(), sum = 0.0f;
    int previous_index = -1;
    for (int t = 0; t < k; ++t) {
        float best = -lk_infinity();
        int best_index = E;  // behind every real column
        for (int j = lane; j < E; j += 32) {
            const float v = row[j];
            if (lk_route_ahead(previous, previous_index, v, j) && lk_route_ahead(v, j, best, best_index)) {
                best = v;
                best_index = j;
            }
        }
#pragma unroll
        for (int offset = 16; offset > 0; offset >>= 1) {
            const float other = __shfl_xor_sync(0xffffffffu, best, offset);
            const int other_index = __shfl_xor_sync(0xffffffffu, best_index, offset);
            if (lk_route_ahead(other, other_index, best, best_index)) {
                best = other;
                best_index = other_index;
            }
        }
        if (lane == 0) {
            expert[m * k + t] = (float)best_index;
            weight[m * k + t] = best;
        }
        sum += best;
        previous = best;
        previous_index = best_index;
    }
    if (lane == 0 && renormalize)
        for (int t = 0; t < k; ++t) weight[m * k + t] /= sum;
}

// Strategy: warp per row; the lanes zero the row, then (after __syncwarp orders those stores) lane 0
// writes the k picked entries: dw, or with renormalisation (dw_t - Σ_s dw_s·w_s) / Σ_s p_{e_s}.
LK_DEVICE void lk_gated_route_topk_backward(const float* probs, const float* expert, const float* weight,
                                            const float* dweight, float* dprobs, int M, int E, int k,
                                            int renormalize) {
    const int lane = (int)threadIdx.x % 32;
    const int m = (int)blockIdx.x * kGatedWarps + (int)threadIdx.x / 32;
    if (m >= M) return;  // warp-uniform, and no barrier follows
    const lk_i64 base = (lk_i64)m * E;
    for (int j = lane; j < E; j += 32) dprobs[base + j] = 0.0f;
    __syncwarp(0xffffffffu);
    if (lane != 0) return;
    float sum = 0.0f, inner = 0.0f;
    for (int t = 0; t < k; ++t) {
        sum += probs[base + (int)expert[m * k + t]];
        inner += dweight[m * k + t] * weight[m * k + t];
    }
    for (int t = 0; t < k; ++t) {
        const float d = dweight[m * k + t];
        dprobs[base + (int)expert[m * k + t]] = renormalize ? (d - inner) / sum : d;
    }
}

// Strategy: block j owns expert j: its threads stride the M probabilities of column j and the P
// slots' experts, each summing in registers; warp sums, then a fixed-order sum over a shared [8][2].
// stats[j] = slots routed to j (exact below 2^24), stats[E + j] = Σ_m probs[m, j]. Grid E.
LK_DEVICE void lk_gated_balance(const float* probs, const float* expert, float* stats, int M, int E, int k) {
    LK_SHARED(float, partial, [kGatedWarps][2]);
    const int j = (int)blockIdx.x;
    const int lane = (int)threadIdx.x % 32, warp = (int)threadIdx.x / 32;
    float count = 0.0f, sum = 0.0f;
    for (int i = (int)threadIdx.x; i < M * k; i += kGatedThreads) count += (int)expert[i] == j ? 1.0f : 0.0f;
    for (int m = (int)threadIdx.x; m < M; m += kGatedThreads) sum += probs[(lk_i64)m * E + j];
    count = lk_warp_sum(count);
    sum = lk_warp_sum(sum);
    if (lane == 0) {
        partial[warp][0] = count;
        partial[warp][1] = sum;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        float total_count = 0.0f, total_sum = 0.0f;
#pragma unroll
        for (int w = 0; w < kGatedWarps; ++w) {
            total_count += partial[w][0];
            total_sum += partial[w][1];
        }
        stats[j] = total_count;
        stats[E + j] = total_sum;
    }
}

// ---- AdaLoRA's importance -------------------------------------------------------------------------

// Strategy: a grid-stride loop over n elements; I = |p·grad|, Ī = β1·Ī + (1 − β1)·I, U = β2·U + (1 − β2)·|I − Ī|
// (U with the updated Ī), each element read and written by one thread.
template <class T>
LK_DEVICE void lk_gated_sensitivity(const T* p, const float* grad, float* ipt, float* unc, lk_i64 n, float beta1,
                                    float beta2) {
    for (lk_i64 i = lk_grid_stride_begin(); i < n; i += lk_grid_stride_step()) {
        const float sensitivity = fabsf(lk_load(p + i) * grad[i]);
        ipt[i] = beta1 * ipt[i] + (1.0f - beta1) * sensitivity;
        unc[i] = beta2 * unc[i] + (1.0f - beta2) * fabsf(sensitivity - ipt[i]);
    }
}

// ---- AdaLoRA's orthogonality regulariser: the tile engine ---------------------------------------

// An fp32 [side, side] matrix C read as C - I (the identity subtracted while staging).
template <bool kContiguousK_>
struct ShiftedIdentityOperand {
    static constexpr bool kContiguousK = kContiguousK_;
    const float* __restrict__ data;
    int ld;
    LK_DEVICE float operator()(int row, int k) const {
        return data[kContiguousK ? row * ld + k : k * ld + row] - (row == k ? 1.0f : 0.0f);
    }
};

// Strategy: the tile engine; transpose = 0: C = X Xᵀ (X [rows, cols], K = cols, both operands
// K-contiguous), transpose = 1: C = Xᵀ X (K = rows, both read transposed). The flag is uniform,
// so each block runs one of the two reductions. Grid (ceil(side/64), ceil(side/64)).
template <class T>
LK_DEVICE void lk_gated_gram(const T* X, float* C, int rows, int cols, int transpose) {
    LK_SHARED(float, tile_a, [kTileK][kTileStride]);
    LK_SHARED(float, tile_b, [kTileK][kTileStride]);
    const int side = transpose ? cols : rows;
    const int m0 = (int)blockIdx.x * kTileM, n0 = (int)blockIdx.y * kTileN;
    float acc[kTilePerThread][kTilePerThread] = {};
    if (transpose)
        lk_tile_reduce(acc, lk_operand<T, false>(X, cols), lk_operand<T, false>(X, cols), rows, m0, side, n0, side,
                       tile_a, tile_b);
    else
        lk_tile_reduce(acc, lk_operand<T, true>(X, cols), lk_operand<T, true>(X, cols), cols, m0, side, n0, side,
                       tile_a, tile_b);
    lk_tile_for_each(acc, m0, side, n0, side, [&](int i, int j, float v) { C[i * side + j] = v; });
}

// Strategy: the tile engine over G [rows, cols]; transpose = 0: G = coefficient·(C - I)·X with K =
// rows, transpose = 1: G = coefficient·X·(C - I) with K = cols; C - I is staged by
// ShiftedIdentityOperand. Grid (ceil(rows/64), ceil(cols/64)).
template <class T>
LK_DEVICE void lk_gated_orth_grad(const T* X, const float* C, T* G, int rows, int cols, int transpose,
                                  float coefficient) {
    LK_SHARED(float, tile_a, [kTileK][kTileStride]);
    LK_SHARED(float, tile_b, [kTileK][kTileStride]);
    const int m0 = (int)blockIdx.x * kTileM, n0 = (int)blockIdx.y * kTileN;
    float acc[kTilePerThread][kTilePerThread] = {};
    if (transpose)
        lk_tile_reduce(acc, lk_operand<T, true>(X, cols), ShiftedIdentityOperand<false>{C, cols}, cols, m0, rows, n0,
                       cols, tile_a, tile_b);
    else
        lk_tile_reduce(acc, ShiftedIdentityOperand<true>{C, rows}, lk_operand<T, false>(X, cols), rows, m0, rows, n0,
                       cols, tile_a, tile_b);
    lk_tile_for_each(acc, m0, rows, n0, cols, [&](int i, int c, float v) { lk_store(G + i * cols + c, coefficient * v); });
}

}  // namespace

// ---- entry points: thin wrappers instantiating each template for fp32 and bf16 storage -----------
extern "C" __global__ void __launch_bounds__(kGatedThreads) lk_gated_fold_f32(
    const float* B, const float* gate, float* B_folded, int out, int r) {
    lk_gated_fold<float>(B, gate, B_folded, out, r);
}
LK_KERNEL(lk_gated_fold_f32);

extern "C" __global__ void __launch_bounds__(kGatedThreads) lk_gated_rank_grad_f32(
    const float* B, const float* dB_folded, const float* gate, float* dB, float* dgate, int out, int r) {
    lk_gated_rank_grad<float>(B, dB_folded, gate, dB, dgate, out, r);
}
LK_KERNEL(lk_gated_rank_grad_f32);

extern "C" __global__ void __launch_bounds__(kGatedThreads) lk_gated_topk_project_f32(
    const float* x, const float* A, const float* expert, const float* weight, float* h, float* coefficient, int M,
    int in, int k, float scale, float dropout_p, unsigned long long seed) {
    lk_gated_topk_project<float>(x, A, expert, weight, h, coefficient, M, in, k, scale, dropout_p, seed);
}
LK_KERNEL(lk_gated_topk_project_f32);

extern "C" __global__ void __launch_bounds__(kGatedThreads) lk_gated_topk_expand_f32(
    float* Y, const float* coefficient, const float* expert, const float* rows, int ld_expert, int ld_col, int M,
    int cols, int k, float dropout_p, unsigned long long seed) {
    lk_gated_topk_expand<float>(Y, coefficient, expert, rows, ld_expert, ld_col, M, cols, k, dropout_p, seed);
}
LK_KERNEL(lk_gated_topk_expand_f32);

extern "C" __global__ void __launch_bounds__(kGatedThreads) lk_gated_topk_grad_h_f32(
    const float* dy, const float* B, const float* expert, const float* weight, const float* h, float* dweight,
    float* dh, float* coefficient_b, int M, int out, int E, int k, float scale) {
    lk_gated_topk_grad_h<float>(dy, B, expert, weight, h, dweight, dh, coefficient_b, M, out, E, k, scale);
}
LK_KERNEL(lk_gated_topk_grad_h_f32);

extern "C" __global__ void __launch_bounds__(kGatedThreads) lk_gated_topk_scatter_f32(
    float* G, const float* coefficient, const float* expert, const float* X, int ld_expert, int ld_col, int M,
    int cols, int k, float dropout_p, unsigned long long seed) {
    lk_gated_topk_scatter<float>(G, coefficient, expert, X, ld_expert, ld_col, M, cols, k, dropout_p, seed);
}
LK_KERNEL(lk_gated_topk_scatter_f32);

extern "C" __global__ void __launch_bounds__(kGatedThreads) lk_gated_sensitivity_f32(
    const float* p, const float* grad, float* ipt, float* unc, long long n, float beta1, float beta2) {
    lk_gated_sensitivity<float>(p, grad, ipt, unc, n, beta1, beta2);
}
LK_KERNEL(lk_gated_sensitivity_f32);

extern "C" __global__ void __launch_bounds__(kTileThreads) lk_gated_gram_f32(
    const float* X, float* C, int rows, int cols, int transpose) {
    lk_gated_gram<float>(X, C, rows, cols, transpose);
}
LK_KERNEL(lk_gated_gram_f32);

extern "C" __global__ void __launch_bounds__(kTileThreads) lk_gated_orth_grad_f32(
    const float* X, const float* C, float* G, int rows, int cols, int transpose, float coefficient) {
    lk_gated_orth_grad<float>(X, C, G, rows, cols, transpose, coefficient);
}
LK_KERNEL(lk_gated_orth_grad_f32);

extern "C" __global__ void __launch_bounds__(kGatedThreads) lk_gated_fold_bf16(
    const lk_bf16* B, const float* gate, lk_bf16* B_folded, int out, int r) {
    lk_gated_fold<lk_bf16>(B, gate, B_folded, out, r);
}
LK_KERNEL(lk_gated_fold_bf16);

extern "C" __global__ void __launch_bounds__(kGatedThreads) lk_gated_rank_grad_bf16(
    const lk_bf16* B, const lk_bf16* dB_folded, const float* gate, lk_bf16* dB, float* dgate, int out, int r) {
    lk_gated_rank_grad<lk_bf16>(B, dB_folded, gate, dB, dgate, out, r);
}
LK_KERNEL(lk_gated_rank_grad_bf16);

extern "C" __global__ void __launch_bounds__(kGatedThreads) lk_gated_topk_project_bf16(
    const lk_bf16* x, const lk_bf16* A, const float* expert, const float* weight, float* h, float* coefficient, int M,
    int in, int k, float scale, float dropout_p, unsigned long long seed) {
    lk_gated_topk_project<lk_bf16>(x, A, expert, weight, h, coefficient, M, in, k, scale, dropout_p, seed);
}
LK_KERNEL(lk_gated_topk_project_bf16);

extern "C" __global__ void __launch_bounds__(kGatedThreads) lk_gated_topk_expand_bf16(
    lk_bf16* Y, const float* coefficient, const float* expert, const lk_bf16* rows, int ld_expert, int ld_col, int M,
    int cols, int k, float dropout_p, unsigned long long seed) {
    lk_gated_topk_expand<lk_bf16>(Y, coefficient, expert, rows, ld_expert, ld_col, M, cols, k, dropout_p, seed);
}
LK_KERNEL(lk_gated_topk_expand_bf16);

extern "C" __global__ void __launch_bounds__(kGatedThreads) lk_gated_topk_grad_h_bf16(
    const lk_bf16* dy, const lk_bf16* B, const float* expert, const float* weight, const float* h, float* dweight,
    float* dh, float* coefficient_b, int M, int out, int E, int k, float scale) {
    lk_gated_topk_grad_h<lk_bf16>(dy, B, expert, weight, h, dweight, dh, coefficient_b, M, out, E, k, scale);
}
LK_KERNEL(lk_gated_topk_grad_h_bf16);

extern "C" __global__ void __launch_bounds__(kGatedThreads) lk_gated_topk_scatter_bf16(
    lk_bf16* G, const float* coefficient, const float* expert, const lk_bf16* X, int ld_expert, int ld_col, int M,
    int cols, int k, float dropout_p, unsigned long long seed) {
    lk_gated_topk_scatter<lk_bf16>(G, coefficient, expert, X, ld_expert, ld_col, M, cols, k, dropout_p, seed);
}
LK_KERNEL(lk_gated_topk_scatter_bf16);

extern "C" __global__ void __launch_bounds__(kGatedThreads) lk_gated_sensitivity_bf16(
    const lk_bf16* p, const float* grad, float* ipt, float* unc, long long n, float beta1, float beta2) {
    lk_gated_sensitivity<lk_bf16>(p, grad, ipt, unc, n, beta1, beta2);
}
LK_KERNEL(lk_gated_sensitivity_bf16);

extern "C" __global__ void __launch_bounds__(kTileThreads) lk_gated_gram_bf16(
    const lk_bf16* X, float* C, int rows, int cols, int transpose) {
    lk_gated_gram<lk_bf16>(X, C, rows, cols, transpose);
}
LK_KERNEL(lk_gated_gram_bf16);

extern "C" __global__ void __launch_bounds__(kTileThreads) lk_gated_orth_grad_bf16(
    const lk_bf16* X, const float* C, lk_bf16* G, int rows, int cols, int transpose, float coefficient) {
    lk_gated_orth_grad<lk_bf16>(X, C, G, rows, cols, transpose, coefficient);
}
LK_KERNEL(lk_gated_orth_grad_bf16);

// ---- fp32-only entry points: gates, routing and training state are fp32 whatever the storage ---
extern "C" __global__ void __launch_bounds__(kGatedThreads) lk_gated_token_gate_f32(
    const float* u, const float* z, const float* gate, float* gated, float* du, float* dgate, long long n) {
    // gated = u ⊙ G (when non-null); with z: du = z ⊙ G, dG = z ⊙ u (each when non-null).
    for (lk_i64 i = lk_grid_stride_begin(); i < n; i += lk_grid_stride_step()) {
        const float g = gate[i];
        if (gated) gated[i] = u[i] * g;
        if (du) du[i] = z[i] * g;
        if (dgate) dgate[i] = z[i] * u[i];
    }
}
LK_KERNEL(lk_gated_token_gate_f32);

extern "C" __global__ void __launch_bounds__(kGatedThreads) lk_gated_softmax_f32(const float* logits, float* probs,
                                                                                 int M, int E) {
    lk_gated_softmax(logits, probs, M, E);
}
LK_KERNEL(lk_gated_softmax_f32);

extern "C" __global__ void __launch_bounds__(kGatedThreads) lk_gated_softmax_backward_f32(
    const float* probs, const float* dprobs, float* dlogits, int M, int E) {
    lk_gated_softmax_backward(probs, dprobs, dlogits, M, E);
}
LK_KERNEL(lk_gated_softmax_backward_f32);

extern "C" __global__ void __launch_bounds__(kGatedThreads) lk_gated_route_topk_f32(
    const float* probs, float* expert, float* weight, int M, int E, int k, int renormalize) {
    lk_gated_route_topk(probs, expert, weight, M, E, k, renormalize);
}
LK_KERNEL(lk_gated_route_topk_f32);

extern "C" __global__ void __launch_bounds__(kGatedThreads) lk_gated_route_topk_backward_f32(
    const float* probs, const float* expert, const float* weight, const float* dweight, float* dprobs, int M, int E,
    int k, int renormalize) {
    lk_gated_route_topk_backward(probs, expert, weight, dweight, dprobs, M, E, k, renormalize);
}
LK_KERNEL(lk_gated_route_topk_backward_f32);

extern "C" __global__ void __launch_bounds__(kGatedThreads) lk_gated_balance_f32(const float* probs,
                                                                                 const float* expert, float* stats,
                                                                                 int M, int E, int k) {
    lk_gated_balance(probs, expert, stats, M, E, k);
}
LK_KERNEL(lk_gated_balance_f32);

extern "C" __global__ void __launch_bounds__(kGatedThreads) lk_gated_balance_backward_f32(
    const float* stats, float* dprobs, int M, int E, float factor) {
    // dprobs[m, j] = factor·stats[j], factor = coefficient·E / M² (computed by the launcher in double).
    const lk_i64 total = (lk_i64)M * E;
    for (lk_i64 i = lk_grid_stride_begin(); i < total; i += lk_grid_stride_step()) dprobs[i] = factor * stats[(int)i % E];
}
LK_KERNEL(lk_gated_balance_backward_f32);

extern "C" __global__ void __launch_bounds__(kGatedThreads) lk_gated_soft_threshold_f32(float* gate, long long n,
                                                                                        float lambda) {
    // SoRA's three masked assignments in their order (lora_kernels_gated.h says what that implies).
    for (lk_i64 i = lk_grid_stride_begin(); i < n; i += lk_grid_stride_step()) {
        float g = gate[i];
        if (g > lambda) g -= lambda;
        if (g < -lambda) g += lambda;
        if (fabsf(g) < lambda) g = 0.0f;
        gate[i] = g;
    }
}
LK_KERNEL(lk_gated_soft_threshold_f32);

// Strategy: block i owns triplet i; its threads stride A's row i and B's column i, products of
// the EMAs in fp32 summed in double (as the CPU), then a warp and a fixed-order block reduction.
extern "C" __global__ void __launch_bounds__(kGatedThreads) lk_gated_triplet_score_f32(
    const float* ipt_A, const float* unc_A, const float* ipt_E, const float* unc_E, const float* ipt_B,
    const float* unc_B, float* score, int r, int in, int out) {
    LK_SHARED(double, partial, [kGatedWarps][2]);
    const int i = (int)blockIdx.x;
    const int lane = (int)threadIdx.x % 32, warp = (int)threadIdx.x / 32;
    double a = 0.0, b = 0.0;
    for (int c = (int)threadIdx.x; c < in; c += kGatedThreads) a += (double)(ipt_A[i * in + c] * unc_A[i * in + c]);
    for (int n = (int)threadIdx.x; n < out; n += kGatedThreads) b += (double)(ipt_B[n * r + i] * unc_B[n * r + i]);
    a = lk_warp_sum_f64(a);
    b = lk_warp_sum_f64(b);
    if (lane == 0) {
        partial[warp][0] = a;
        partial[warp][1] = b;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        double total_a = 0.0, total_b = 0.0;
#pragma unroll
        for (int w = 0; w < kGatedWarps; ++w) {
            total_a += partial[w][0];
            total_b += partial[w][1];
        }
        score[i] = (float)((double)(ipt_E[i] * unc_E[i]) + total_a / (double)in + total_b / (double)out);
    }
}
LK_KERNEL(lk_gated_triplet_score_f32);
