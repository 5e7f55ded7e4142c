// lora.cu: the LoRA linear layer, y = x W0ᵀ + bias + scale·(dropout(x) Aᵀ) Bᵀ, its backward and merge.
// Semantics are those of lk_cpu_lora_forward / _backward / _merge (native/include/lora_kernels.h);
// docs/KERNELS.md gives each entry point's launch geometry and shared memory.
//
// Entry points (T = f32 | bf16: storage of x, W0, bias, A, B, y, dx, dA, dB, W; u and du are
// always fp32; every sum accumulates in fp32):
//   lk_lora_project_T        u = dropout(x) Aᵀ                              tiled GEMM
//   lk_lora_forward_decode_T y (and u) for M <= 16, one launch              W0-streaming GEMV
//   lk_lora_forward_tiled_T  y = x W0ᵀ + bias + scale·u Bᵀ for any M       tiled GEMM, LoRA as K
//   lk_lora_grad_u_T         du = scale·dy B                                tiled GEMM
//   lk_lora_grad_b_T         dB = scale·dyᵀ u                               tiled GEMM
//   lk_lora_grad_a_T         dA = duᵀ dropout(x)                            tiled GEMM
//   lk_lora_grad_x_T         dx = dy W0 + dropout'(du A), one pass          tiled GEMM, LoRA as K
//   lk_lora_merge_T          W += scale·B A in place (unmerge: -scale)      tiled GEMM epilogue
//
// Strategies and why:
//   * Every op except decode is one register-blocked GEMM engine (lk_tile_reduce): a 64x64
//     output tile per 256-thread block, 16-deep K slices staged through shared memory as fp32
//     (converted and dropout-masked while staging), each thread accumulating a 4x4 sub-tile
//     whose rows and columns are strided by 16 so shared reads are broadcasts or conflict-free
//     and global stores are coalesced. Operands are described by a loader that says whether K
//     is the contiguous index, so one engine serves NT (x W0ᵀ), NN (dy W0) and TN (dyᵀ u)
//     products without transposed copies. Grid: x over 64-row output tiles, y over 64-column
//     tiles (the column count is a feature dimension, within grid.y's 65535 tiles). The LoRA
//     term of forward and grad_x is a second reduction phase into the same accumulators, so
//     every output element is written once.
//     This is a CUDA-core (FMA) GEMM, not a tensor-core one: correct and simple first; a
//     tensor-core engine needs the mma wrappers common.cuh does not have yet.
//   * Decode (M <= 16) is bound by streaming W0 once: each block owns a contiguous range of W0
//     rows, stages x in shared memory as fp32 (in chunks of kDecodeChunk columns, so any `in`
//     fits), and each warp streams two W0 rows at a time with 16-byte loads, for all M tokens
//     at once, so each staged x value is reused for two rows and each W0 element is read once.
//     u = dropout(x) Aᵀ is computed by every block redundantly: M·r·in FMAs per block, i.e.
//     r·grid/out of the base FMAs (grid <= SM count keeps it small) and no DRAM traffic, as x
//     and A come from L2; the alternative, a separate project launch as on the tiled path,
//     costs a second launch and a round trip of u through global memory, which dominates at
//     M = 1. Block 0 writes u.
//   * The dropout mask is never stored in global memory: loaders regenerate it from
//     lk_dropout_factor(seed, m·in + k, p) exactly as the CPU kernels do; decode stages it as
//     one bit per staged x element so the hash runs once per element per block.
//
// Assumptions: row-major dense tensors; every dimension and every element count < 2^31 (the
// C# side guarantees it), so int indices suffice. No alignment is required: decode uses 16-byte
// loads only when a matrix's base is 16-byte aligned and `in` is a multiple of the vector width,
// and falls back to scalar loads otherwise. r may be 0 (u, A, B, du unused and may be null).
//
// Bytes and FLOPs per call (s = bytes per T element; "min" = each tensor once):
//   project      FLOPs 2·M·in·r;                 min bytes s·(M·in + r·in) + 4·M·r
//   decode       FLOPs 2·M·out·(in + r) + grid·2·M·r·in (redundant u);
//                bytes s·(out·in + out·r + out + M·out) + 4·M·r, plus x and A once per block from L2
//   tiled        FLOPs 2·M·out·(in + r);         min bytes s·(M·in + out·in + out·r + out + M·out) + 4·M·r;
//                x is re-read ceil(out/64) times and W0 ceil(M/64) times, mostly from L2
//   grad_u       FLOPs 2·M·out·r;                min bytes s·(M·out + out·r) + 4·M·r
//   grad_b       FLOPs 2·M·out·r;                min bytes s·(M·out + out·r) + 4·M·r
//   grad_a       FLOPs 2·M·r·in;                 min bytes s·(M·in + r·in) + 4·M·r
//   grad_x       FLOPs 2·M·in·(out + r);         min bytes s·(M·out + out·in + r·in + M·in) + 4·M·r
//   merge        FLOPs 2·out·in·r;               min bytes s·(2·out·in + r·in + out·r)
#include "common.cuh"

namespace {

// ---- tiled GEMM engine -------------------------------------------------------------------------
constexpr int kTileM = 64;         // output rows per block
constexpr int kTileN = 64;         // output columns per block
constexpr int kTileK = 16;         // reduction depth staged per shared-memory pass
constexpr int kTileThreads = 256;  // 16 x 16 threads, each owning a 4 x 4 sub-tile
constexpr int kTileSide = 16;      // threads along each tile side
constexpr int kTilePerThread = 4;  // outputs per thread along each side (strided by kTileSide)
// Row stride of the staged tiles. 66 ≡ 2 (mod 32) makes the K-contiguous staging store
// (16 consecutive k of 2 adjacent rows per warp) hit 32 distinct banks.
constexpr int kTileStride = kTileM + 2;
static_assert(kTileSide * kTileSide == kTileThreads, "one thread per (ty, tx) pair");
static_assert(kTileSide * kTilePerThread == kTileM && kTileM == kTileN, "square tile covered by the threads");
static_assert((kTileM * kTileK) % kTileThreads == 0, "each thread stages a whole number of elements");
static_assert(kTileStride % 32 == 2, "conflict-free K-contiguous staging stores");

// A GEMM operand: element (row, k) of the logical [rows, K] matrix that is multiplied with K
// as the reduction index. kContiguousK: stored [rows, K] (element at row·ld + k), else stored
// [K, rows] (element at k·ld + row). kDropout multiplies by the dropout factor of the stored
// element's index, which is m·in + col for x whether x is read as [M, in] or as its transpose.
template <class T, bool kContiguousK_, bool kDropout = false>
struct Operand {
    static constexpr bool kContiguousK = kContiguousK_;
    const T* __restrict__ data;
    int ld;
    float dropout_p;
    lk_u64 seed;

    LK_DEVICE float operator()(int row, int k) const {
        const int index = kContiguousK ? row * ld + k : k * ld + row;
        float value = lk_load(data + index);
        if (kDropout) value *= lk_dropout_factor(seed, (lk_u64)index, dropout_p);
        return value;
    }
};

template <class T, bool kContiguousK>
LK_DEVICE Operand<T, kContiguousK> lk_operand(const T* data, int ld) {
    return Operand<T, kContiguousK>{data, ld, 0.0f, 0ull};
}

template <class T, bool kContiguousK>
LK_DEVICE Operand<T, kContiguousK, true> lk_dropout_operand(const T* data, int ld, float p, lk_u64 seed) {
    return Operand<T, kContiguousK, true>{data, ld, p, seed};
}

// Stages the [kTileK, kRows] slice (rows r0.., reduction indices k0..) of an operand into
// shared memory as fp32, zero outside [0, rows) x [0, K). Consecutive threads walk the
// operand's contiguous index, so global loads are coalesced for either storage order.
template <int kRows, class Op>
LK_DEVICE void lk_tile_stage(float (*tile)[kTileStride], const Op& op, int r0, int rows, int k0, int K) {
    constexpr int kPerThread = kRows * kTileK / kTileThreads;
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
        const int idx = (int)threadIdx.x + i * kTileThreads;
        const int kk = Op::kContiguousK ? idx % kTileK : idx / kRows;
        const int rr = Op::kContiguousK ? idx / kTileK : idx % kRows;
        const int row = r0 + rr, k = k0 + kk;
        tile[kk][rr] = (row < rows && k < K) ? op(row, k) : 0.0f;
    }
}

// acc[i][j] += Σ_k a(m0 + ty + 16i, k) · b(n0 + tx + 16j, k) over k in [0, K). Call it from
// all threads of the block (it synchronises); tile_a/tile_b are the block's staging tiles.
template <class OpA, class OpB>
LK_DEVICE void lk_tile_reduce(float (&acc)[kTilePerThread][kTilePerThread], const OpA& a, const OpB& b,
                              int K, int m0, int M, int n0, int N, float (*tile_a)[kTileStride],
                              float (*tile_b)[kTileStride]) {
    const int tx = (int)threadIdx.x % kTileSide, ty = (int)threadIdx.x / kTileSide;
    for (int k0 = 0; k0 < K; k0 += kTileK) {
        lk_tile_stage<kTileM>(tile_a, a, m0, M, k0, K);
        lk_tile_stage<kTileN>(tile_b, b, n0, N, k0, K);
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < kTileK; ++kk) {
            float av[kTilePerThread], bv[kTilePerThread];
#pragma unroll
            for (int i = 0; i < kTilePerThread; ++i) av[i] = tile_a[kk][ty + kTileSide * i];
#pragma unroll
            for (int j = 0; j < kTilePerThread; ++j) bv[j] = tile_b[kk][tx + kTileSide * j];
#pragma unroll
            for (int i = 0; i < kTilePerThread; ++i)
#pragma unroll
                for (int j = 0; j < kTilePerThread; ++j) acc[i][j] += av[i] * bv[j];
        }
        __syncthreads();
    }
}

// Calls f(m, n, acc[i][j]) for each of this thread's outputs that lies inside [0, M) x [0, N).
template <class F>
LK_DEVICE void lk_tile_for_each(float (&acc)[kTilePerThread][kTilePerThread], int m0, int M, int n0, int N,
                                const F& f) {
    const int tx = (int)threadIdx.x % kTileSide, ty = (int)threadIdx.x / kTileSide;
#pragma unroll
    for (int i = 0; i < kTilePerThread; ++i) {
        const int m = m0 + ty + kTileSide * i;
#pragma unroll
        for (int j = 0; j < kTilePerThread; ++j) {
            const int n = n0 + tx + kTileSide * j;
            if (m < M && n < N) f(m, n, acc[i][j]);
        }
    }
}

// ---- project: u = dropout(x) Aᵀ ----------------------------------------------------------------
// Strategy: the tile engine with x (K = in contiguous, dropout applied while staging) against A;
// grid (ceil(M/64), ceil(r/64)). For r < 64 most of each tile's columns are empty: the waste is
// bounded by 64·in·M FMAs, a few percent of the tiled forward it precedes.
template <class T>
LK_DEVICE void lk_lora_project(const T* x, const T* A, float* u, int M, int in, int r, float dropout_p,
                               lk_u64 seed) {
    LK_SHARED(float, tile_a, [kTileK][kTileStride]);
    LK_SHARED(float, tile_b, [kTileK][kTileStride]);
    const int m0 = (int)blockIdx.x * kTileM, n0 = (int)blockIdx.y * kTileN;
    float acc[kTilePerThread][kTilePerThread] = {};
    lk_tile_reduce(acc, lk_dropout_operand<T, true>(x, in, dropout_p, seed), lk_operand<T, true>(A, in), in, m0, M,
                   n0, r, tile_a, tile_b);
    lk_tile_for_each(acc, m0, M, n0, r, [&](int m, int j, float v) { u[m * r + j] = v; });
}

// ---- forward, tiled (M > 16) -------------------------------------------------------------------
// Strategy: y = [u | x]·[B | W0]ᵀ with the LoRA columns reduced first and the accumulator then
// multiplied by scale, i.e. scale·u Bᵀ + x W0ᵀ in one accumulator; bias added in the epilogue,
// so each y element is written once. Grid (ceil(M/64), ceil(out/64)).
template <class T>
LK_DEVICE void lk_lora_forward_tiled(const T* x, const T* W0, const T* bias, const float* u, const T* B, T* y,
                                     int M, int in, int out, int r, float scale) {
    LK_SHARED(float, tile_a, [kTileK][kTileStride]);
    LK_SHARED(float, tile_b, [kTileK][kTileStride]);
    const int m0 = (int)blockIdx.x * kTileM, n0 = (int)blockIdx.y * kTileN;
    float acc[kTilePerThread][kTilePerThread] = {};
    lk_tile_reduce(acc, lk_operand<float, true>(u, r), lk_operand<T, true>(B, r), r, m0, M, n0, out, tile_a, tile_b);
#pragma unroll
    for (int i = 0; i < kTilePerThread; ++i)
#pragma unroll
        for (int j = 0; j < kTilePerThread; ++j) acc[i][j] *= scale;
    lk_tile_reduce(acc, lk_operand<T, true>(x, in), lk_operand<T, true>(W0, in), in, m0, M, n0, out, tile_a, tile_b);
    lk_tile_for_each(acc, m0, M, n0, out, [&](int m, int n, float v) {
        lk_store(y + m * out + n, bias ? v + lk_load(bias + n) : v);
    });
}

// ---- forward, decode (M <= 16) -----------------------------------------------------------------
// One 256-thread block per SM (the grid is at most the SM count), hence __launch_bounds__(256, 1):
// registers are not what limits occupancy, so the accumulators are sized for the largest M
// (kDecodeMaxM) in every launch, and a smaller M leaves some idle (its `m >= M` exits are
// warp-uniform); one instantiation instead of one per M bucket keeps the NVRTC compile short.
constexpr int kDecodeThreads = 256;
constexpr int kDecodeWarps = kDecodeThreads / 32;
constexpr int kDecodeMaxM = 16;
constexpr int kDecodeChunk = 2048;      // x columns staged per pass: 16 x 2048 fp32 = 128 KiB
constexpr int kDecodeRowsPerWarp = 2;   // W0 rows a warp streams together (x reuse vs registers)
constexpr int kDecodeXAlign = 8;        // staged x row stride multiple: 32 bytes, any vector width
static_assert(kDecodeThreads % 32 == 0, "whole warps");
static_assert(kDecodeChunk % 32 == 0 && kDecodeChunk % kDecodeXAlign == 0, "chunk is whole mask words and vectors");

// 16-byte vectors of a storage type, for streaming W0 rows and reading staged x.
template <class T> struct Vec16;
template <> struct Vec16<float> {
    static constexpr int kWidth = 4;
    struct alignas(16) Type { float v[4]; };
};
template <> struct Vec16<lk_bf16> {
    static constexpr int kWidth = 8;
    struct alignas(16) Type { lk_bf16 v[8]; };
};
static_assert(sizeof(Vec16<float>::Type) == 16 && sizeof(Vec16<lk_bf16>::Type) == 16, "16-byte vectors");
static_assert(kDecodeXAlign % Vec16<float>::kWidth == 0 && 32 % Vec16<lk_bf16>::kWidth == 0,
              "a vector of staged x is 16-byte aligned and never straddles a mask word");

// The decode kernel's dynamic shared memory, carved identically here and by the launchers
// (GpuBackend.Lora.cs, tests/native/parity): all 4-byte words, in this order:
//   x     [M][x_stride]     fp32, x_stride = round_up(min(in, kDecodeChunk), 8)
//   mask  [M][mask_words]   dropout keep bits of the staged x, mask_words = x_stride / 32 rounded up
//   u     [M][r]            fp32 sums of dropout(x) Aᵀ
//   ypart [M][rows]         fp32 sums of x W0ᵀ for the block's rows, rows = ceil(out / gridDim.x)
struct DecodeLayout {
    int x_stride, mask_words, rows_per_block;
    float* x;
    lk_u32* mask;
    float* u;
    float* ypart;
};

LK_DEVICE DecodeLayout lk_decode_layout(int M, int in, int out, int r) {
    DecodeLayout s;
    s.x_stride = lk_ceil_div(lk_min(in, kDecodeChunk), kDecodeXAlign) * kDecodeXAlign;
    s.mask_words = lk_ceil_div(s.x_stride, 32);
    s.rows_per_block = lk_ceil_div(out, (int)gridDim.x);
    s.x = lk_dynamic_shared<float>();
    s.mask = reinterpret_cast<lk_u32*>(s.x + M * s.x_stride);
    s.u = reinterpret_cast<float*>(s.mask + M * s.mask_words);
    s.ypart = s.u + M * r;
    return s;
}

// For rows [lo, hi) of mat ([*, in], this chunk's columns c0 .. c0+cols), adds
//   Σ_k mat[row][c0+k] · x̃[m][k]   to dst[m·dst_m_stride + row - lo]   for m < M,
// where x̃ is the staged x, times its keep factor when kMasked (bit set: keep, else 0).
// Warps take kDecodeRowsPerWarp rows at a time; lanes stride the columns with 16-byte loads
// when rows are 16-byte aligned, else with scalar loads; sums finish with one warp reduction
// per (row, m). Every lane of a warp runs the same number of reductions.
template <class T, bool kMasked>
LK_DEVICE void lk_decode_rows(const T* __restrict__ mat, int in, int lo, int hi, int c0, int cols,
                              const DecodeLayout& s, float keep, int M, float* dst, int dst_m_stride) {
    constexpr int R = kDecodeRowsPerWarp;
    constexpr int W = Vec16<T>::kWidth;
    typedef typename Vec16<T>::Type VecT;
    typedef typename Vec16<float>::Type VecF;
    const int lane = (int)threadIdx.x & 31, warp = (int)threadIdx.x >> 5;
    const bool vectorized = in % W == 0 && (reinterpret_cast<lk_u64>(mat) & 15ull) == 0;
    for (int g = lo + warp * R; g < hi; g += kDecodeWarps * R) {
        const T* row_ptr[R];
#pragma unroll
        for (int rr = 0; rr < R; ++rr) row_ptr[rr] = mat + lk_min(g + rr, hi - 1) * in + c0;  // clamp: no OOB
        float acc[R][kDecodeMaxM];
#pragma unroll
        for (int rr = 0; rr < R; ++rr)
#pragma unroll
            for (int m = 0; m < kDecodeMaxM; ++m) acc[rr][m] = 0.0f;
        if (vectorized) {
            const int vectors = cols / W;  // exact: in % W == 0 and c0 is a multiple of W
#pragma unroll 2  // two vectors per row in flight per lane
            for (int v = lane; v < vectors; v += 32) {
                VecT w[R];
#pragma unroll
                for (int rr = 0; rr < R; ++rr) w[rr] = *reinterpret_cast<const VecT*>(row_ptr[rr] + v * W);
#pragma unroll
                for (int m = 0; m < kDecodeMaxM; ++m) {
                    if (m >= M) break;
                    float xv[W];
#pragma unroll
                    for (int h = 0; h < W / 4; ++h) {
                        const VecF xs = *reinterpret_cast<const VecF*>(s.x + m * s.x_stride + v * W + 4 * h);
#pragma unroll
                        for (int e = 0; e < 4; ++e) xv[4 * h + e] = xs.v[e];
                    }
                    if (kMasked) {
                        const lk_u32 bits = s.mask[m * s.mask_words + (v * W >> 5)] >> (v * W & 31);
#pragma unroll
                        for (int e = 0; e < W; ++e) xv[e] *= ((bits >> e) & 1u) ? keep : 0.0f;
                    }
#pragma unroll
                    for (int rr = 0; rr < R; ++rr)
#pragma unroll
                        for (int e = 0; e < W; ++e) acc[rr][m] += lk_load(&w[rr].v[e]) * xv[e];
                }
            }
        } else {
            for (int k = lane; k < cols; k += 32) {
                float w[R];
#pragma unroll
                for (int rr = 0; rr < R; ++rr) w[rr] = lk_load(row_ptr[rr] + k);
#pragma unroll
                for (int m = 0; m < kDecodeMaxM; ++m) {
                    if (m >= M) break;
                    float xv = s.x[m * s.x_stride + k];
                    if (kMasked) xv *= ((s.mask[m * s.mask_words + (k >> 5)] >> (k & 31)) & 1u) ? keep : 0.0f;
#pragma unroll
                    for (int rr = 0; rr < R; ++rr) acc[rr][m] += w[rr] * xv;
                }
            }
        }
#pragma unroll
        for (int rr = 0; rr < R; ++rr) {
            if (g + rr >= hi) break;  // warp-uniform
#pragma unroll
            for (int m = 0; m < kDecodeMaxM; ++m) {
                if (m >= M) break;
                const float sum = lk_warp_sum(acc[rr][m]);
                if (lane == 0) dst[m * dst_m_stride + g + rr - lo] += sum;
            }
        }
    }
}

// Strategy: see the file comment. Block b owns W0 rows [b·rows, (b+1)·rows), rows =
// ceil(out / gridDim.x); per chunk of x columns: stage x (fp32) and its dropout keep bits,
// accumulate u (warps over A's rows) and the block's x W0ᵀ partial sums (warps over its W0
// rows) in shared memory; then y = ypart + bias + scale·u Bᵀ, written once, coalesced over out.
template <class T>
LK_DEVICE void lk_lora_forward_decode(const T* x, const T* W0, const T* bias, const T* A, const T* B, T* y, float* u,
                                      int M, int in, int out, int r, float scale, float dropout_p, lk_u64 seed) {
    if (M > kDecodeMaxM) __trap();  // the launcher routes M > 16 to project + tiled; reaching here is its bug
    const DecodeLayout s = lk_decode_layout(M, in, out, r);
    const int tid = (int)threadIdx.x;
    const int row_begin = (int)blockIdx.x * s.rows_per_block;
    const int row_end = lk_min(out, row_begin + s.rows_per_block);
    const int rows = lk_max(row_end - row_begin, 0);
    const float keep = dropout_p > 0.0f ? 1.0f / (1.0f - dropout_p) : 1.0f;  // as lk_dropout_factor

    for (int i = tid; i < M * r; i += kDecodeThreads) s.u[i] = 0.0f;
    for (int i = tid; i < M * s.rows_per_block; i += kDecodeThreads) s.ypart[i] = 0.0f;
    for (int c0 = 0; c0 < in; c0 += kDecodeChunk) {
        const int cols = lk_min(kDecodeChunk, in - c0);
        const int words = lk_ceil_div(cols, 32);
        __syncthreads();  // the previous chunk's readers are done with x and mask
        for (int i = tid; i < M * cols; i += kDecodeThreads) {
            const int m = i / cols, k = i - m * cols;
            s.x[m * s.x_stride + k] = lk_load(x + m * in + c0 + k);
        }
        for (int i = tid; i < M * words; i += kDecodeThreads) {
            const int m = i / words, word = i - m * words;
            lk_u32 bits = 0xffffffffu;
            if (dropout_p > 0.0f) {
                bits = 0u;
                for (int b = 0; b < 32; ++b) {
                    const int k = word * 32 + b;
                    if (k < cols && lk_dropout_uniform(seed, (lk_u64)(m * in + c0 + k)) >= dropout_p) bits |= 1u << b;
                }
            }
            s.mask[m * s.mask_words + word] = bits;
        }
        __syncthreads();
        lk_decode_rows<T, true>(A, in, 0, r, c0, cols, s, keep, M, s.u, r);
        lk_decode_rows<T, false>(W0, in, row_begin, row_end, c0, cols, s, keep, M, s.ypart, s.rows_per_block);
    }
    __syncthreads();
    for (int i = tid; i < M * rows; i += kDecodeThreads) {
        const int m = i / rows, local = i - m * rows, n = row_begin + local;
        float lora = 0.0f;
        for (int j = 0; j < r; ++j) lora += s.u[m * r + j] * lk_load(B + n * r + j);
        float v = s.ypart[m * s.rows_per_block + local] + scale * lora;
        if (bias) v += lk_load(bias + n);
        lk_store(y + m * out + n, v);
    }
    if (blockIdx.x == 0)
        for (int i = tid; i < M * r; i += kDecodeThreads) u[i] = s.u[i];
}

// ---- backward ----------------------------------------------------------------------------------
// grad_u. Strategy: tile engine, dy (K = out contiguous) against B read as its transpose;
// output du [M, r] times scale. Grid (ceil(M/64), ceil(r/64)).
template <class T>
LK_DEVICE void lk_lora_grad_u(const T* dy, const T* B, float* du, int M, int out, int r, float scale) {
    LK_SHARED(float, tile_a, [kTileK][kTileStride]);
    LK_SHARED(float, tile_b, [kTileK][kTileStride]);
    const int m0 = (int)blockIdx.x * kTileM, n0 = (int)blockIdx.y * kTileN;
    float acc[kTilePerThread][kTilePerThread] = {};
    lk_tile_reduce(acc, lk_operand<T, true>(dy, out), lk_operand<T, false>(B, r), out, m0, M, n0, r, tile_a, tile_b);
    lk_tile_for_each(acc, m0, M, n0, r, [&](int m, int j, float v) { du[m * r + j] = scale * v; });
}

// grad_b. Strategy: tile engine over K = M with both operands read transposed (dyᵀ, uᵀ);
// output dB [out, r]. Grid (ceil(out/64), ceil(r/64)); no split-K, so a long M runs serially.
template <class T>
LK_DEVICE void lk_lora_grad_b(const T* dy, const float* u, T* dB, int M, int out, int r, float scale) {
    LK_SHARED(float, tile_a, [kTileK][kTileStride]);
    LK_SHARED(float, tile_b, [kTileK][kTileStride]);
    const int m0 = (int)blockIdx.x * kTileM, n0 = (int)blockIdx.y * kTileN;
    float acc[kTilePerThread][kTilePerThread] = {};
    lk_tile_reduce(acc, lk_operand<T, false>(dy, out), lk_operand<float, false>(u, r), M, m0, out, n0, r, tile_a,
                   tile_b);
    lk_tile_for_each(acc, m0, out, n0, r, [&](int o, int j, float v) { lk_store(dB + o * r + j, scale * v); });
}

// grad_a. Strategy: tile engine over K = M, duᵀ against dropout(x)ᵀ (mask regenerated while
// staging); output dA [r, in]. Grid (ceil(r/64), ceil(in/64)).
template <class T>
LK_DEVICE void lk_lora_grad_a(const float* du, const T* x, T* dA, int M, int in, int r, float dropout_p, lk_u64 seed) {
    LK_SHARED(float, tile_a, [kTileK][kTileStride]);
    LK_SHARED(float, tile_b, [kTileK][kTileStride]);
    const int m0 = (int)blockIdx.x * kTileM, n0 = (int)blockIdx.y * kTileN;
    float acc[kTilePerThread][kTilePerThread] = {};
    lk_tile_reduce(acc, lk_operand<float, false>(du, r), lk_dropout_operand<T, false>(x, in, dropout_p, seed), M, m0,
                   r, n0, in, tile_a, tile_b);
    lk_tile_for_each(acc, m0, r, n0, in, [&](int j, int k, float v) { lk_store(dA + j * in + k, v); });
}

// grad_x. Strategy: dx = [du | dy]·[A | W0] in one accumulator: the r LoRA columns first, then
// each accumulator is multiplied by the dropout factor of its own dx[m, k] (the mask of the
// forward's x[m, k]), then the out columns of dy W0 continue the sum. Grid (ceil(M/64), ceil(in/64)).
template <class T>
LK_DEVICE void lk_lora_grad_x(const T* dy, const T* W0, const float* du, const T* A, T* dx, int M, int in, int out,
                              int r, float dropout_p, lk_u64 seed) {
    LK_SHARED(float, tile_a, [kTileK][kTileStride]);
    LK_SHARED(float, tile_b, [kTileK][kTileStride]);
    const int m0 = (int)blockIdx.x * kTileM, n0 = (int)blockIdx.y * kTileN;
    float acc[kTilePerThread][kTilePerThread] = {};
    lk_tile_reduce(acc, lk_operand<float, true>(du, r), lk_operand<T, false>(A, in), r, m0, M, n0, in, tile_a, tile_b);
    lk_tile_for_each(acc, m0, M, n0, in,
                     [&](int m, int k, float& v) { v *= lk_dropout_factor(seed, (lk_u64)(m * in + k), dropout_p); });
    lk_tile_reduce(acc, lk_operand<T, true>(dy, out), lk_operand<T, false>(W0, in), out, m0, M, n0, in, tile_a,
                   tile_b);
    lk_tile_for_each(acc, m0, M, n0, in, [&](int m, int k, float v) { lk_store(dx + m * in + k, v); });
}

// ---- merge: W += scale·B A ---------------------------------------------------------------------
// Strategy: tile engine over K = r (B rows against A read transposed); the epilogue reads each W
// element once and writes it once. Grid (ceil(out/64), ceil(in/64)).
template <class T>
LK_DEVICE void lk_lora_merge(T* W, const T* A, const T* B, int out, int in, int r, float scale) {
    LK_SHARED(float, tile_a, [kTileK][kTileStride]);
    LK_SHARED(float, tile_b, [kTileK][kTileStride]);
    const int m0 = (int)blockIdx.x * kTileM, n0 = (int)blockIdx.y * kTileN;
    float acc[kTilePerThread][kTilePerThread] = {};
    lk_tile_reduce(acc, lk_operand<T, true>(B, r), lk_operand<T, false>(A, in), r, m0, out, n0, in, tile_a, tile_b);
    lk_tile_for_each(acc, m0, out, n0, in, [&](int o, int k, float v) {
        T* w = W + o * in + k;
        lk_store(w, lk_load(w) + scale * v);
    });
}

}  // namespace

// ---- entry points: thin wrappers instantiating each template for fp32 and bf16 storage -----------
extern "C" __global__ void __launch_bounds__(kTileThreads) lk_lora_project_f32(
    const float* x, const float* A, float* u, int M, int in, int r, float dropout_p,
    unsigned long long seed) {
    lk_lora_project<float>(x, A, u, M, in, r, dropout_p, seed);
}
LK_KERNEL(lk_lora_project_f32);

extern "C" __global__ void __launch_bounds__(kDecodeThreads, 1) lk_lora_forward_decode_f32(
    const float* x, const float* W0, const float* bias, const float* A, const float* B, float* y, float* u,
    int M, int in, int out, int r, float scale, float dropout_p, unsigned long long seed) {
    lk_lora_forward_decode<float>(x, W0, bias, A, B, y, u, M, in, out, r, scale, dropout_p, seed);
}
LK_KERNEL(lk_lora_forward_decode_f32);

extern "C" __global__ void __launch_bounds__(kTileThreads) lk_lora_forward_tiled_f32(
    const float* x, const float* W0, const float* bias, const float* u, const float* B, float* y, int M,
    int in, int out, int r, float scale) {
    lk_lora_forward_tiled<float>(x, W0, bias, u, B, y, M, in, out, r, scale);
}
LK_KERNEL(lk_lora_forward_tiled_f32);

extern "C" __global__ void __launch_bounds__(kTileThreads) lk_lora_grad_u_f32(
    const float* dy, const float* B, float* du, int M, int out, int r, float scale) {
    lk_lora_grad_u<float>(dy, B, du, M, out, r, scale);
}
LK_KERNEL(lk_lora_grad_u_f32);

extern "C" __global__ void __launch_bounds__(kTileThreads) lk_lora_grad_b_f32(
    const float* dy, const float* u, float* dB, int M, int out, int r, float scale) {
    lk_lora_grad_b<float>(dy, u, dB, M, out, r, scale);
}
LK_KERNEL(lk_lora_grad_b_f32);

extern "C" __global__ void __launch_bounds__(kTileThreads) lk_lora_grad_a_f32(
    const float* du, const float* x, float* dA, int M, int in, int r, float dropout_p,
    unsigned long long seed) {
    lk_lora_grad_a<float>(du, x, dA, M, in, r, dropout_p, seed);
}
LK_KERNEL(lk_lora_grad_a_f32);

extern "C" __global__ void __launch_bounds__(kTileThreads) lk_lora_grad_x_f32(
    const float* dy, const float* W0, const float* du, const float* A, float* dx, int M, int in, int out,
    int r, float dropout_p, unsigned long long seed) {
    lk_lora_grad_x<float>(dy, W0, du, A, dx, M, in, out, r, dropout_p, seed);
}
LK_KERNEL(lk_lora_grad_x_f32);

extern "C" __global__ void __launch_bounds__(kTileThreads) lk_lora_merge_f32(
    float* W, const float* A, const float* B, int out, int in, int r, float scale) {
    lk_lora_merge<float>(W, A, B, out, in, r, scale);
}
LK_KERNEL(lk_lora_merge_f32);

extern "C" __global__ void __launch_bounds__(kTileThreads) lk_lora_project_bf16(
    const lk_bf16* x, const lk_bf16* A, float* u, int M, int in, int r, float dropout_p,
    unsigned long long seed) {
    lk_lora_project<lk_bf16>(x, A, u, M, in, r, dropout_p, seed);
}
LK_KERNEL(lk_lora_project_bf16);

extern "C" __global__ void __launch_bounds__(kDecodeThreads, 1) lk_lora_forward_decode_bf16(
    const lk_bf16* x, const lk_bf16* W0, const lk_bf16* bias, const lk_bf16* A, const lk_bf16* B, lk_bf16* y,
    float* u, int M, int in, int out, int r, float scale, float dropout_p, unsigned long long seed) {
    lk_lora_forward_decode<lk_bf16>(x, W0, bias, A, B, y, u, M, in, out, r, scale, dropout_p, seed);
}
LK_KERNEL(lk_lora_forward_decode_bf16);

extern "C" __global__ void __launch_bounds__(kTileThreads) lk_lora_forward_tiled_bf16(
    const lk_bf16* x, const lk_bf16* W0, const lk_bf16* bias, const float* u, const lk_bf16* B, lk_bf16* y,
    int M, int in, int out, int r, float scale) {
    lk_lora_forward_tiled<lk_bf16>(x, W0, bias, u, B, y, M, in, out, r, scale);
}
LK_KERNEL(lk_lora_forward_tiled_bf16);

extern "C" __global__ void __launch_bounds__(kTileThreads) lk_lora_grad_u_bf16(
    const lk_bf16* dy, const lk_bf16* B, float* du, int M, int out, int r, float scale) {
    lk_lora_grad_u<lk_bf16>(dy, B, du, M, out, r, scale);
}
LK_KERNEL(lk_lora_grad_u_bf16);

extern "C" __global__ void __launch_bounds__(kTileThreads) lk_lora_grad_b_bf16(
    const lk_bf16* dy, const float* u, lk_bf16* dB, int M, int out, int r, float scale) {
    lk_lora_grad_b<lk_bf16>(dy, u, dB, M, out, r, scale);
}
LK_KERNEL(lk_lora_grad_b_bf16);

extern "C" __global__ void __launch_bounds__(kTileThreads) lk_lora_grad_a_bf16(
    const float* du, const lk_bf16* x, lk_bf16* dA, int M, int in, int r, float dropout_p,
    unsigned long long seed) {
    lk_lora_grad_a<lk_bf16>(du, x, dA, M, in, r, dropout_p, seed);
}
LK_KERNEL(lk_lora_grad_a_bf16);

extern "C" __global__ void __launch_bounds__(kTileThreads) lk_lora_grad_x_bf16(
    const lk_bf16* dy, const lk_bf16* W0, const float* du, const lk_bf16* A, lk_bf16* dx, int M, int in,
    int out, int r, float dropout_p, unsigned long long seed) {
    lk_lora_grad_x<lk_bf16>(dy, W0, du, A, dx, M, in, out, r, dropout_p, seed);
}
LK_KERNEL(lk_lora_grad_x_bf16);

extern "C" __global__ void __launch_bounds__(kTileThreads) lk_lora_merge_bf16(
    lk_bf16* W, const lk_bf16* A, const lk_bf16* B, int out, int in, int r, float scale) {
    lk_lora_merge<lk_bf16>(W, A, B, out, in, r, scale);
}
LK_KERNEL(lk_lora_merge_bf16);
