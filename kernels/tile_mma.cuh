// tile_mma.cuh: the tensor-core GEMM engine for bf16 operands, with fp32 accumulators.
//
// Strategy: one 128 x 128 output tile per 256-thread block (8 warps as 2 along M x 4 along N, each
// owning 64 x 32: 4 x 4 mma.m16n8k16 tiles, 64 fp32 accumulators a thread). The reduction runs in
// 32-deep K slices through a 3-stage ring of shared-memory slices (16 KiB each: A's 128 x 32 and
// B's 128 x 32 as bf16): while the warps multiply slice k, the copies of slices k+1 and k+2 are in
// flight (cp.async, 16 bytes a thread per chunk, zero-filled past the matrix edge). Fragments come
// from shared memory by ldmatrix (.trans for an operand stored N-contiguous, as dy·W0's W0), and the
// slices are XOR-swizzled by 16-byte chunk so that both the cp.async stores and the ldmatrix reads
// of 8 rows hit 8 distinct bank groups. An operand whose rows are not 16-byte aligned (a dimension
// not a multiple of 8) or that is computed rather than copied (the LoRA term's split u, a 4-bit
// weight decoded to bf16) is staged by ordinary loads and shared stores in the same slot of the
// ring; the pipeline's barriers order both kinds alike.
//
// The LoRA term as extra reduction columns: an fp32 value v (scale·u, or du) is split into three
// bf16 values hi + mid + lo that add up to v exactly (3 x 8 significand bits = fp32's 24), so the
// columns [v_hi | v_mid | v_lo] against [B | B | B] give Σ v·B with exact products and fp32 sums,
// as precise as the CUDA-core path with an fp32 u, for 3r extra columns (48 for r = 16, against
// in = 4096). kernels/lora.cu and nf4.cu run that phase first into the same accumulators.
//
// Accuracy: every bf16 x bf16 product is exact in fp32 and the accumulators are fp32, so a result
// differs from an fp32 CUDA-core GEMM of the same bf16 inputs only in the order of its sums.
//
// Users: kernels/lora.cu (bf16 forward and grad_x) and kernels/nf4.cu (bf16 4-bit forward and
// grad_x). The launch constants (kMmaTileM, kMmaTileN, kMmaTileK, kMmaThreads, kMmaStages,
// kMmaSharedBytes) are in launch_geometry.cuh; the kernels take the ring as dynamic shared memory.
// Requires sm_80 (mma.sync m16n8k16 bf16, cp.async): the launchers use it only there.
#pragma once

#include "common.cuh"
#include "launch_geometry.cuh"

namespace {

constexpr int kMmaWarpsM = 2;                            // warps along M
constexpr int kMmaWarpsN = 4;                            // warps along N
constexpr int kMmaWarpTileM = kMmaTileM / kMmaWarpsM;    // 64 rows a warp
constexpr int kMmaWarpTileN = kMmaTileN / kMmaWarpsN;    // 32 columns a warp
constexpr int kMmaFragsM = kMmaWarpTileM / 16;           // 4 m16 tiles a warp
constexpr int kMmaFragsN = kMmaWarpTileN / 8;            // 4 n8 tiles a warp
constexpr int kMmaSliceElements = kMmaTileM * kMmaTileK;  // one operand's slice: 4096 bf16, 8 KiB
constexpr int kMmaChunk = 8;                             // bf16 per 16-byte chunk
constexpr int kMmaChunksPerThread = kMmaSliceElements / kMmaChunk / kMmaThreads;  // 2
static_assert(kMmaWarpsM * kMmaWarpsN * 32 == kMmaThreads, "8 warps");
static_assert(kMmaTileM == kMmaTileN, "one slice size serves both operands");
static_assert(kMmaTileK == 32, "two k16 steps a slice; the 4-chunk rows' swizzle below assumes 32");
static_assert(kMmaFragsN % 2 == 0, "B fragments are loaded two n8 tiles at a time");
static_assert(kMmaSharedBytes == kMmaStages * 2 * kMmaSliceElements * 2, "the ring's bytes");
static_assert(kMmaSliceElements % (kMmaChunk * kMmaThreads) == 0, "whole chunks a thread");

// The accumulators of one thread: [m16 tile][n8 tile][c0..c3] of its warp's 64 x 32.
struct MmaAccumulators {
    float v[kMmaFragsM][kMmaFragsN][4];
};

// Element offset of (row, col) in a slice stored with kRowChunks 16-byte chunks per row, chunks
// XOR-swizzled so that 8 consecutive rows at one logical chunk land in 8 distinct bank groups:
// rows of 4 chunks (64 bytes, two rows per 128-byte bank line) XOR the chunk with (row / 2) % 4;
// rows of 16 chunks XOR it with row % 8.
template <int kRowChunks>
LK_DEVICE int lk_mma_swizzle(int row, int col) {
    static_assert(kRowChunks == 4 || kRowChunks == 16, "slices are 128 x 32 or 32 x 128");
    const int chunk = col >> 3;
    const int swizzled = kRowChunks == 4 ? chunk ^ ((row >> 1) & 3) : chunk ^ (row & 7);
    return row * kRowChunks * kMmaChunk + swizzled * kMmaChunk + (col & 7);
}

// A bf16 matrix as an engine operand. kContiguousK: stored [rows, K] (x, W0 in x·W0ᵀ, dy), else
// stored [K, rows] (W0 in dy·W0). Rows 16-byte aligned (ld % 8 == 0, base aligned) are copied by
// cp.async; others element by element.
template <bool kContiguousK_>
struct MmaMatrix {
    static constexpr bool kContiguousK = kContiguousK_;
    static constexpr bool kCopied = true;  // has data/ld/vectorized(): may be staged by cp.async
    const lk_bf16* __restrict__ data;
    int ld;
    LK_DEVICE bool vectorized() const { return ld % kMmaChunk == 0 && (reinterpret_cast<lk_u64>(data) & 15ull) == 0; }
    LK_DEVICE float value(int stored_row, int stored_col) const { return lk_load(data + (lk_i64)stored_row * ld + stored_col); }
};

// The LoRA term's fp32 operand, v = scale·src[m, j] (u [M, r] or du), as 3r columns: column k holds
// the (k / r)-th bf16 piece of v[m, k % r], pieces hi, mid, lo with hi + mid + lo == v exactly.
struct MmaSplitF32 {
    static constexpr bool kContiguousK = true;
    static constexpr bool kCopied = false;
    const float* __restrict__ src;
    int r;
    float scale;
    LK_DEVICE float value(int m, int k) const {
        const int piece = k / r;
        float v = scale * src[(lk_i64)m * r + (k - piece * r)];
        for (int p = 0; p < piece; ++p) v -= lk_bf16_to_f32(lk_f32_to_bf16(v));  // exact: v minus its bf16 rounding
        return v;  // the stager rounds it to bf16: the piece itself
    }
};

// The adapter matrix that multiplies a split operand, repeated for each of its three pieces: column k
// is column k % r of B [N, r] (kContiguousK: B in u·Bᵀ) or row k % r of A [r, N] (A in du·A).
template <bool kContiguousK_>
struct MmaRepeated {
    static constexpr bool kContiguousK = kContiguousK_;
    static constexpr bool kCopied = false;
    const lk_bf16* __restrict__ data;
    int r;
    int ld;  // B: r; A: N
    LK_DEVICE float value(int stored_row, int stored_col) const {
        return kContiguousK ? lk_load(data + (lk_i64)stored_row * ld + stored_col % r)
                            : lk_load(data + (lk_i64)(stored_row % r) * ld + stored_col);
    }
};

// Stages the K slice [k0, k0 + 32) of an operand's rows [r0, r0 + 128) into `slice` (bf16, swizzled),
// zero outside [0, rows) x [0, K): copies issued now (cp.async, for a kCopied operand whose rows are
// aligned) or values stored now (op.value(stored row, stored column), rounded to bf16).
template <class Op>
LK_DEVICE void lk_mma_stage(lk_u16* slice, const Op& op, int r0, int rows, int k0, int K) {
    constexpr int kRowChunks = Op::kContiguousK ? kMmaTileK / kMmaChunk : kMmaTileN / kMmaChunk;
    bool vector = false;
    if constexpr (Op::kCopied) vector = op.vectorized();
#pragma unroll
    for (int i = 0; i < kMmaChunksPerThread; ++i) {
        const int chunk = (int)threadIdx.x + i * kMmaThreads;
        // Stored orientation: (srow, scol .. scol+7) with scol the contiguous index.
        const int srow = chunk / kRowChunks, scol = (chunk % kRowChunks) * kMmaChunk;
        const int row_g = Op::kContiguousK ? r0 + srow : k0 + srow;   // global stored row
        const int col_g = Op::kContiguousK ? k0 + scol : r0 + scol;   // global stored column
        const int row_limit = Op::kContiguousK ? rows : K, col_limit = Op::kContiguousK ? K : rows;
        lk_u16* to = slice + lk_mma_swizzle<kRowChunks>(srow, scol);
        const int valid = row_g < row_limit ? lk_max(0, lk_min(kMmaChunk, col_limit - col_g)) : 0;
        if constexpr (Op::kCopied) {
            if (vector) {
                const lk_bf16* from = valid > 0 ? op.data + (lk_i64)row_g * op.ld + col_g : op.data;
                lk_cp_async_16<false>(to, from, 2 * valid);
                continue;
            }
        }
        {
            lk_u32 words[4];
#pragma unroll
            for (int e = 0; e < kMmaChunk; e += 2) {
                const lk_u16 lo = e < valid ? lk_f32_to_bf16(op.value(row_g, col_g + e)).bits : (lk_u16)0;
                const lk_u16 hi = e + 1 < valid ? lk_f32_to_bf16(op.value(row_g, col_g + e + 1)).bits : (lk_u16)0;
                words[e / 2] = lk_pack_b16x2(lo, hi);
            }
            lk_u32* dst = reinterpret_cast<lk_u32*>(to);
#pragma unroll
            for (int w = 0; w < 4; ++w) dst[w] = words[w];
        }
    }
}

// Multiplies one staged slice pair into the accumulators: two k16 steps, fragments by ldmatrix.
template <bool kBContiguousK>
LK_DEVICE void lk_mma_slice(MmaAccumulators& acc, const lk_u16* a_slice, const lk_u16* b_slice) {
    const int lane = (int)threadIdx.x & 31, warp = (int)threadIdx.x >> 5;
    const int warp_m = warp % kMmaWarpsM, warp_n = warp / kMmaWarpsM;
    const int matrix = lane >> 3, r = lane & 7;  // ldmatrix: lanes 8j..8j+7 address matrix j's rows
#pragma unroll
    for (int kk = 0; kk < kMmaTileK; kk += 16) {
        lk_u32 a[kMmaFragsM][4];
#pragma unroll
        for (int mi = 0; mi < kMmaFragsM; ++mi) {
            // Matrices: rows +0/+8 (j & 1) by k +0/+8 (j >> 1): a0a1, a2a3, a4a5, a6a7.
            const int row = warp_m * kMmaWarpTileM + mi * 16 + r + 8 * (matrix & 1);
            lk_ldmatrix<4, false>(a[mi], a_slice + lk_mma_swizzle<4>(row, kk + 8 * (matrix >> 1)));
        }
        lk_u32 b[kMmaFragsN][2];
#pragma unroll
        for (int nj = 0; nj < kMmaFragsN; nj += 2) {
            // Matrices: (n tile nj, k +0), (nj, k +8), (nj + 1, k +0), (nj + 1, k +8).
            lk_u32 w[4];
            const int n = warp_n * kMmaWarpTileN + nj * 8 + 8 * (matrix >> 1);
            if (kBContiguousK) {
                lk_ldmatrix<4, false>(w, b_slice + lk_mma_swizzle<4>(n + r, kk + 8 * (matrix & 1)));
            } else {
                lk_ldmatrix<4, true>(w, b_slice + lk_mma_swizzle<16>(kk + r + 8 * (matrix & 1), n));
            }
            b[nj][0] = w[0];
            b[nj][1] = w[1];
            b[nj + 1][0] = w[2];
            b[nj + 1][1] = w[3];
        }
#pragma unroll
        for (int mi = 0; mi < kMmaFragsM; ++mi)
#pragma unroll
            for (int nj = 0; nj < kMmaFragsN; ++nj) lk_mma_m16n8k16<lk_bf16>(acc.v[mi][nj], a[mi], b[nj], acc.v[mi][nj]);
    }
}

// acc += Σ_k a(m, k)·b(n, k) over k in [0, K) for the block's tile (m0, n0) of an [M, N] output. Call
// from all threads of the block (it synchronises); `ring` is the block's kMmaSharedBytes of dynamic
// shared memory. Every copy it issued has completed, and every thread is past its last read of the
// ring, when it returns, so the ring may be restaged at once.
template <class OpA, class OpB>
LK_DEVICE void lk_mma_tile_reduce(MmaAccumulators& acc, const OpA& a, const OpB& b, int K, int m0, int M, int n0, int N,
                                  lk_u16* ring) {
    static_assert(OpA::kContiguousK, "A is read K-contiguous ([M, K] storage)");
    constexpr int kStage = 2 * kMmaSliceElements;
    const int slices = lk_ceil_div(K, kMmaTileK);
    auto stage = [&](int slice) {
        lk_u16* at = ring + (slice % kMmaStages) * kStage;
        lk_mma_stage(at, a, m0, M, slice * kMmaTileK, K);
        lk_mma_stage(at + kMmaSliceElements, b, n0, N, slice * kMmaTileK, K);
    };
    // Prologue: the first kMmaStages - 1 slices in flight, one group each (empty groups past the end
    // keep the count uniform, so the wait below always means "slice s has landed").
#pragma unroll
    for (int s = 0; s < kMmaStages - 1; ++s) {
        if (s < slices) stage(s);
        lk_cp_async_commit();
    }
    for (int s = 0; s < slices; ++s) {
        lk_cp_async_wait<kMmaStages - 2>();
        __syncthreads();  // slice s is visible to all, and every warp is done with slice s - 1's slot
        if (s + kMmaStages - 1 < slices) stage(s + kMmaStages - 1);
        lk_cp_async_commit();
        const lk_u16* at = ring + (s % kMmaStages) * kStage;
        lk_mma_slice<OpB::kContiguousK>(acc, at, at + kMmaSliceElements);
    }
    lk_cp_async_wait<0>();
    __syncthreads();
}

// Calls f(m, n, value&) for each of this thread's accumulators inside [0, M) x [0, N) (C fragment layout:
// c0, c1 at row groupID, columns 2·threadID_in_group + 0, 1; c2, c3 eight rows below).
template <class F>
LK_DEVICE void lk_mma_for_each(MmaAccumulators& acc, int m0, int M, int n0, int N, const F& f) {
    const int lane = (int)threadIdx.x & 31, warp = (int)threadIdx.x >> 5;
    const int warp_m = warp % kMmaWarpsM, warp_n = warp / kMmaWarpsM;
    const int group = lane >> 2, in_group = lane & 3;
#pragma unroll
    for (int mi = 0; mi < kMmaFragsM; ++mi)
#pragma unroll
        for (int nj = 0; nj < kMmaFragsN; ++nj)
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                const int m = m0 + warp_m * kMmaWarpTileM + mi * 16 + group + 8 * (c >> 1);
                const int n = n0 + warp_n * kMmaWarpTileN + nj * 8 + 2 * in_group + (c & 1);
                if (m < M && n < N) f(m, n, acc.v[mi][nj][c]);
            }
}

LK_DEVICE void lk_mma_zero(MmaAccumulators& acc) {
#pragma unroll
    for (int mi = 0; mi < kMmaFragsM; ++mi)
#pragma unroll
        for (int nj = 0; nj < kMmaFragsN; ++nj)
#pragma unroll
            for (int c = 0; c < 4; ++c) acc.v[mi][nj][c] = 0.0f;
}

// ---- the adapted layer's two big products, for any base-weight operand W ([out, in], ld = in) --------
// Block (blockIdx.x, blockIdx.y) owns output tile (128·x, 128·y); the ring is the dynamic shared memory.

// y = x Wᵀ + bias + scale·u Bᵀ: the LoRA phase ([scale·u pieces]·[B B B]ᵀ, 3r columns) first, then x Wᵀ
// into the same accumulators; each y element written once. W is read K-contiguous (OpW::kContiguousK).
template <class OpW>
LK_DEVICE void lk_mma_adapted_forward(const lk_bf16* x, const OpW& w, const lk_bf16* bias, const float* u,
                                      const lk_bf16* B, lk_bf16* y, int M, int in, int out, int r, float scale) {
    static_assert(OpW::kContiguousK, "x Wᵀ reads W's rows");
    lk_u16* ring = lk_dynamic_shared<lk_u16>();
    const int m0 = (int)blockIdx.x * kMmaTileM, n0 = (int)blockIdx.y * kMmaTileN;
    MmaAccumulators acc;
    lk_mma_zero(acc);
    if (r > 0)  // uniform over the block
        lk_mma_tile_reduce(acc, MmaSplitF32{u, r, scale}, MmaRepeated<true>{B, r, r}, 3 * r, m0, M, n0, out, ring);
    lk_mma_tile_reduce(acc, MmaMatrix<true>{x, in}, w, in, m0, M, n0, out, ring);
    lk_mma_for_each(acc, m0, M, n0, out, [&](int m, int n, float& v) {
        lk_store(y + (lk_i64)m * out + n, bias ? v + lk_load(bias + n) : v);
    });
}

// dx = dy W + dropout'(du A): the LoRA phase ([du pieces]·[A A A]) first, each accumulator times the
// dropout factor of its dx[m, k] (the forward's mask on x[m, k]), then dy W continues the sum. W is
// read N-contiguous (its [out, in] rows are K = out by N = in): ldmatrix.trans.
template <class OpW>
LK_DEVICE void lk_mma_adapted_grad_x(const lk_bf16* dy, const OpW& w, const float* du, const lk_bf16* A, lk_bf16* dx,
                                     int M, int in, int out, int r, float dropout_p, lk_u64 seed) {
    static_assert(!OpW::kContiguousK, "dy W reads W's columns");
    lk_u16* ring = lk_dynamic_shared<lk_u16>();
    const int m0 = (int)blockIdx.x * kMmaTileM, n0 = (int)blockIdx.y * kMmaTileN;
    MmaAccumulators acc;
    lk_mma_zero(acc);
    if (r > 0) {
        lk_mma_tile_reduce(acc, MmaSplitF32{du, r, 1.0f}, MmaRepeated<false>{A, r, in}, 3 * r, m0, M, n0, in, ring);
        lk_mma_for_each(acc, m0, M, n0, in, [&](int m, int k, float& v) {
            v *= lk_dropout_factor(seed, (lk_u64)m * in + k, dropout_p);
        });
    }
    lk_mma_tile_reduce(acc, MmaMatrix<true>{dy, out}, w, out, m0, M, n0, in, ring);
    lk_mma_for_each(acc, m0, M, n0, in, [&](int m, int k, float& v) { lk_store(dx + (lk_i64)m * in + k, v); });
}

}  // namespace
