// decode_engine.cuh: the W-streaming engine of the decode kernels (M <= 16 tokens), for dense and
// quantized bases alike.
//
// Strategy: decode is bound by streaming the base weight once. Each block owns a contiguous range of
// weight rows (rows = ceil(out / gridDim.x)); per chunk of kDecodeChunk x columns it stages x in
// shared memory as fp32 and, for the adapter branch, one dropout keep bit per staged element (the
// hash runs once per element per block); warps stream kDecodeRowsPerWarp rows at a time for all M
// tokens at once, so a staged x value serves two rows and each weight is read once. u = dropout(x)Aᵀ
// is accumulated by every block (no u round trip through global memory, one launch) and block 0
// writes it; the epilogue writes y = ypart + bias + scale·u Bᵀ once, coalesced over out.
// One 256-thread block per SM (grid <= SM count): accumulators are sized for kDecodeMaxM in every
// launch and a smaller M leaves some idle (warp-uniform exits), so one instantiation serves every M.
//
// Users: kernels/lora.cu (dense W0, 16-byte vector rows), kernels/nf4.cu (4-bit W, table prefix).
// The launch constants (kDecodeThreads, kDecodeMaxM, kDecodeChunk, ...) are in launch_geometry.cuh.
#pragma once

#include "common.cuh"
#include "launch_geometry.cuh"

namespace {

static_assert(kDecodeThreads % 32 == 0, "whole warps");
static_assert(kDecodeChunk % 32 == 0 && kDecodeChunk % kDecodeXAlign == 0, "chunk is whole mask words and vectors");

// 16-byte vectors of a storage type, for streaming dense rows and reading staged x.
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

// The decode kernels' dynamic shared memory, carved identically here and by the launchers
// (GpuBackend, tests/native/parity): all 4-byte words, in this order:
//   tables [table_words]   a family's lookup tables (0 for dense W; 16 + 256 for 4-bit W)
//   x      [M][x_stride]   fp32, x_stride = round_up(min(in, kDecodeChunk), 8)
//   mask   [M][mask_words] dropout keep bits of the staged x, mask_words = ceil(x_stride / 32)
//   u      [M][r]          fp32 sums of dropout(x) Aᵀ
//   ypart  [M][rows]       fp32 sums of x Wᵀ for the block's rows, rows = ceil(out / gridDim.x)
struct DecodeLayout {
    int x_stride, mask_words, rows_per_block;
    float* tables;
    float* x;
    lk_u32* mask;
    float* u;
    float* ypart;
};

LK_DEVICE DecodeLayout lk_decode_layout(int M, int in, int out, int r, int table_words) {
    DecodeLayout s;
    s.x_stride = lk_ceil_div(lk_min(in, kDecodeChunk), kDecodeXAlign) * kDecodeXAlign;
    s.mask_words = lk_ceil_div(s.x_stride, 32);
    s.rows_per_block = lk_ceil_div(out, (int)gridDim.x);
    s.tables = lk_dynamic_shared<float>();
    s.x = s.tables + table_words;
    s.mask = reinterpret_cast<lk_u32*>(s.x + M * s.x_stride);
    s.u = reinterpret_cast<float*>(s.mask + M * s.mask_words);
    s.ypart = s.u + M * r;
    return s;
}

// Zeroes the block's u and ypart sums (visible after the next barrier).
LK_DEVICE void lk_decode_zero(const DecodeLayout& s, int M, int r) {
    for (int i = (int)threadIdx.x; i < M * r; i += kDecodeThreads) s.u[i] = 0.0f;
    for (int i = (int)threadIdx.x; i < M * s.rows_per_block; i += kDecodeThreads) s.ypart[i] = 0.0f;
}

// Stages columns [c0, c0 + cols) of x [M, in] as fp32 and, when with_mask, their dropout keep bits
// (element m·in + c0 + k, as every LoRA kernel hashes it): 16-byte loads and stores when x's rows are
// 16-byte aligned, element by element otherwise. Call between two barriers.
template <class T>
LK_DEVICE void lk_decode_stage(const T* x, int M, int in, int c0, int cols, const DecodeLayout& s, bool with_mask,
                               float dropout_p, lk_u64 seed) {
    constexpr int W = Vec16<T>::kWidth;
    typedef typename Vec16<T>::Type VecT;
    typedef typename Vec16<float>::Type VecF;
    const int tid = (int)threadIdx.x;
    if (in % W == 0 && (reinterpret_cast<lk_u64>(x) & 15ull) == 0) {
        // 16-byte loads of x (rows aligned: in % W == 0, c0 and cols multiples of W), fp32 16-byte stores.
        const int vectors = cols / W;
        for (int i = tid; i < M * vectors; i += kDecodeThreads) {
            const int m = i / vectors, v = i - m * vectors;
            const VecT raw = *reinterpret_cast<const VecT*>(x + (lk_i64)m * in + c0 + v * W);
#pragma unroll
            for (int h = 0; h < W / 4; ++h) {
                VecF f;
#pragma unroll
                for (int e = 0; e < 4; ++e) f.v[e] = lk_load(&raw.v[4 * h + e]);
                *reinterpret_cast<VecF*>(s.x + m * s.x_stride + v * W + 4 * h) = f;
            }
        }
    } else {
        for (int i = tid; i < M * cols; i += kDecodeThreads) {
            const int m = i / cols, k = i - m * cols;
            s.x[m * s.x_stride + k] = lk_load(x + (lk_i64)m * in + c0 + k);
        }
    }
    if (!with_mask) return;
    const int words = lk_ceil_div(cols, 32);
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
}

// Finishes a warp's per-(row, token) partial sums: one warp reduction each, lane 0 adds the total
// to dst[m·dst_m_stride + row - lo]. Rows at or past hi (the clamped tail of a pair) are skipped.
template <int R>
LK_DEVICE void lk_decode_flush(float (&acc)[R][kDecodeMaxM], int g, int lo, int hi, int M, float* dst,
                               int dst_m_stride) {
    const int lane = (int)threadIdx.x & 31;
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

// For rows [lo, hi) of a row-major [*, in] matrix (this chunk's columns c0 .. c0+cols) read
// through load(row, column), adds Σ_k load(row, c0+k)·x̃[m][k] to dst[m·dst_m_stride + row - lo],
// x̃ being the staged x times its keep factor when kMasked. Lanes stride the columns one element
// at a time (coalesced for dense rows; single bytes for codes). Every lane of a warp runs the same
// number of reductions.
template <bool kMasked, class Load>
LK_DEVICE void lk_decode_rows_scalar(const Load& load, int lo, int hi, int c0, int cols, const DecodeLayout& s,
                                     float keep, int M, float* dst, int dst_m_stride) {
    constexpr int R = kDecodeRowsPerWarp;
    const int lane = (int)threadIdx.x & 31, warp = (int)threadIdx.x >> 5;
    for (int g = lo + warp * R; g < hi; g += kDecodeWarps * R) {
        float acc[R][kDecodeMaxM];
#pragma unroll
        for (int rr = 0; rr < R; ++rr)
#pragma unroll
            for (int m = 0; m < kDecodeMaxM; ++m) acc[rr][m] = 0.0f;
        for (int k = lane; k < cols; k += 32) {
            float w[R];
#pragma unroll
            for (int rr = 0; rr < R; ++rr) w[rr] = load(lk_min(g + rr, hi - 1), c0 + k);  // clamp: no OOB
#pragma unroll
            for (int m = 0; m < kDecodeMaxM; ++m) {
                if (m >= M) break;
                float xv = s.x[m * s.x_stride + k];
                if (kMasked) xv *= ((s.mask[m * s.mask_words + (k >> 5)] >> (k & 31)) & 1u) ? keep : 0.0f;
#pragma unroll
                for (int rr = 0; rr < R; ++rr) acc[rr][m] += w[rr] * xv;
            }
        }
        lk_decode_flush<R>(acc, g, lo, hi, M, dst, dst_m_stride);
    }
}

// A dense row-major matrix as a row loader.
template <class T>
struct DenseRows {
    const T* __restrict__ data;
    int ld;
    LK_DEVICE float operator()(int row, int column) const { return lk_load(data + row * ld + column); }
};

// The rows [lo, hi) of a dense [*, in] matrix, as lk_decode_rows_scalar, with 16-byte loads when
// the rows are 16-byte aligned (in a multiple of the vector width and an aligned base), each lane
// loading kDecodeVectorsInFlight vectors of each row before consuming any; otherwise the scalar path.
template <class T, bool kMasked>
LK_DEVICE void lk_decode_rows_dense(const T* __restrict__ mat, int in, int lo, int hi, int c0, int cols,
                                    const DecodeLayout& s, float keep, int M, float* dst, int dst_m_stride) {
    constexpr int R = kDecodeRowsPerWarp;
    constexpr int W = Vec16<T>::kWidth;
    typedef typename Vec16<T>::Type VecT;
    typedef typename Vec16<float>::Type VecF;
    if (!(in % W == 0 && (reinterpret_cast<lk_u64>(mat) & 15ull) == 0)) {
        lk_decode_rows_scalar<kMasked>(DenseRows<T>{mat, in}, lo, hi, c0, cols, s, keep, M, dst, dst_m_stride);
        return;
    }
    const int lane = (int)threadIdx.x & 31, warp = (int)threadIdx.x >> 5;
    for (int g = lo + warp * R; g < hi; g += kDecodeWarps * R) {
        const T* row_ptr[R];
#pragma unroll
        for (int rr = 0; rr < R; ++rr) row_ptr[rr] = mat + lk_min(g + rr, hi - 1) * in + c0;  // clamp: no OOB
        float acc[R][kDecodeMaxM];
#pragma unroll
        for (int rr = 0; rr < R; ++rr)
#pragma unroll
            for (int m = 0; m < kDecodeMaxM; ++m) acc[rr][m] = 0.0f;
        const int vectors = cols / W;  // exact: in % W == 0 and c0 is a multiple of W
        // kDecodeVectorsInFlight vectors of each row are loaded before any is consumed: R x 4 = 8
        // 16-byte loads in flight per lane, 32 KiB per SM (see kDecodeVectorsInFlight).
        for (int v0 = lane; v0 < vectors; v0 += 32 * kDecodeVectorsInFlight) {
            VecT wf[kDecodeVectorsInFlight][R];
#pragma unroll
            for (int f = 0; f < kDecodeVectorsInFlight; ++f) {
                const int v = lk_min(v0 + 32 * f, vectors - 1);  // clamp: a load past the end is never consumed
#pragma unroll
                for (int rr = 0; rr < R; ++rr) wf[f][rr] = *reinterpret_cast<const VecT*>(row_ptr[rr] + v * W);
            }
#pragma unroll
            for (int f = 0; f < kDecodeVectorsInFlight; ++f) {
                const int v = v0 + 32 * f;
                if (v >= vectors) break;
                const VecT(&w)[R] = wf[f];
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
        }
        lk_decode_flush<R>(acc, g, lo, hi, M, dst, dst_m_stride);
    }
}

// After the last chunk (call after a barrier): y[m, n] = ypart + bias + scale·Σ_j u[m, j]·B[n, j] for
// the block's rows [row_begin, row_begin + rows), written once; block 0 also writes u [M, r].
template <class T>
LK_DEVICE void lk_decode_epilogue(const DecodeLayout& s, const T* bias, const T* B, T* y, float* u, int M, int out,
                                  int r, float scale, int row_begin, int rows) {
    const int tid = (int)threadIdx.x;
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

}  // namespace
