// kron.cu: the Kronecker adapter (LoKr / KronA, REFERENCE.md §5) on a linear layer,
// ΔW = scale·kron(w1, w2) with w1 [out_l, in_m], w2 [out_k, in_n], out = out_l·out_k, in = in_m·in_n,
// never formed as an [out, in] matrix. Semantics are those of lk_cpu_kron_* (native/include/
// lora_kernels_kron.h): per token t, with X_t = x[t] viewed [in_m, in_n] and Y_t = y[t] viewed
// [out_l, out_k] (row-major), (w1 ⊗ w2)·vec(X_t) = vec(w1·X_t·w2ᵀ).
//
// Entry points (T = f32 | bf16: storage of x, dy, w1, w2, y, dx, W and the factor gradients; every
// sum in fp32):
//   lk_kron_forward_T      y_t  += scale·w1·(X_t·w2ᵀ)                 fused chain, per token
//   lk_kron_grad_x_T       dx_t += scale·w1ᵀ·(dY_t·w2)                fused chain, per token
//   lk_kron_grad_w1_T      partial[c] = Σ_{t in chunk c} dY_t·(X_t·w2ᵀ)ᵀ    fused chain, token chunks
//   lk_kron_grad_w2_T      partial[c] = Σ_{t in chunk c} (w1ᵀ·dY_t)ᵀ·X_t    fused chain, token chunks
//   lk_kron_sum_chunks_T   dw = scale·Σ_c partial[c]                  split_k.cuh, element-wise grid
//   lk_kron_merge_T        W += scale·kron(w1, w2), linear or conv    element-wise grid
// The base product (x W0ᵀ + bias, dy W0) is kernels/lora.cu's (decode or tiled, r = 0); the forward
// and grad_x here add the adapter term on top of it in place, so with bf16 storage the output is
// rounded twice (base, then base + adapter: relative 2⁻⁸ more than one rounding).
//
// Strategy: every adapter product is a chain L·(P·Qᵀ) of three small matrices whose middle result
// never reaches global memory. A block owns a 64x64 output tile (rows r, columns c) of one token (or
// of one token chunk, for the factor gradients) and walks the chain's inner dimension K2 in chunks of
// 64: the shared tile engine (tile_engine.cuh) computes the 64x64 slice S = P·Qᵀ of the middle product
// into registers (reduction K1), the block stores it to shared memory (16 KiB), and a second
// reduction over that chunk multiplies L's staged columns into the output accumulators, reading S
// straight from shared memory. Forward: L = w1, P = X_t, Q = w2 (S is a slice of X_t·w2ᵀ);
// grad_x: L = w1ᵀ, P = dY_t, Q = w2ᵀ; grad_w1: L = dY_t, P = w2, Q = X_t; grad_w2 (transposed
// output): L = X_tᵀ, P = w1ᵀ, Q = dY_tᵀ. So the adapter costs 2·(K1 + R)·K2·C FMAs per output tile
// and no traffic beyond its operands (which come from L1/L2: a token is in_m·in_n elements).
// Factor gradients sum over tokens: grid.z cuts the tokens into chunks of `tokens_per_chunk`
// (the launcher keeps grid.z ≤ 65535), each block loops over its chunk's tokens in order into one
// accumulator and writes an fp32 partial; lk_kron_sum_chunks_T adds the chunks in order (no atomics:
// deterministic). With PEFT's factorization (REFERENCE.md §5.2, d = 4096: 64 x 64) each token is one
// output tile and one K2 chunk; larger factors take more tiles and chunks, any shape is correct.
//
// Grids (block 256 = kTileThreads, no dynamic shared memory; static 8448 + 20480 bytes):
//   forward   (M·⌈out_k/64⌉, ⌈out_l/64⌉)   token t = blockIdx.x / ⌈out_k/64⌉
//   grad_x    (M·⌈in_n/64⌉, ⌈in_m/64⌉)
//   grad_w1   (⌈in_m/64⌉, ⌈out_l/64⌉, chunks)        grad_w2 (⌈out_k/64⌉, ⌈in_n/64⌉, chunks)
// FLOPs per call: forward and grad_x 2·M·(in_m·in_n·out_k + out_l·in_m·out_k) (and its mirror);
// grad_w1 2·M·in_m·out_k·(in_n + out_l); grad_w2 2·M·in_m·out_k·(out_l + in_n); merge 2 per element.
// Bytes: each token's x (or dy) and the factors from L2 once per output tile, y (or dx) read and
// written once; partials 4·chunks·|w|. Assumptions: every tensor < 2^31 elements (C# checks), so
// int indices within a tensor; token offsets are 64-bit.
#include "common.cuh"
#include "launch_geometry.cuh"
#include "split_k.cuh"
#include "tile_engine.cuh"

namespace {

constexpr int kChainChunk = 64;                // the middle product's rows held in shared memory
// Row stride of the shared slice of S: 80 ≡ 16 (mod 32), so the two rows a warp stores (ty, ty + 1)
// land in different bank halves; reads are broadcasts along a row.
constexpr int kChainStride = kTileN + 16;
static_assert(kChainChunk % kTileK == 0, "whole staging slices per chunk");
static_assert(kChainChunk == kTileM, "a chunk of S is one tile of the first reduction");

// acc[i][j] += Σ_{k2} L(r0 + ty + 16i, k2)·S(k2, c0 + tx + 16j) with S(k2, c) = Σ_{k1} P(k2, k1)·Q(c, k1),
// over k2 in [0, K2) and k1 in [0, K1), for output rows < R and columns < C. Call from every thread
// of the block (it synchronises); S is never formed beyond one 64 x 64 slice in shared memory.
template <class OpL, class OpP, class OpQ>
LK_DEVICE void lk_kron_chain(float (&acc)[kTilePerThread][kTilePerThread], const OpL& L, const OpP& P, const OpQ& Q,
                             int R, int K2, int K1, int C, int r0, int c0, float (*tile_a)[kTileStride],
                             float (*tile_b)[kTileStride], float (*slice)[kChainStride]) {
    const int tx = (int)threadIdx.x % kTileSide, ty = (int)threadIdx.x / kTileSide;
    for (int k2 = 0; k2 < K2; k2 += kChainChunk) {
        float s[kTilePerThread][kTilePerThread] = {};
        // Rows k2.. of S against columns c0..; the engine stages zeros past K2 and C, so the slice is
        // exactly 0 there and the second reduction may read all of it.
        lk_tile_reduce(s, P, Q, K1, k2, K2, c0, C, tile_a, tile_b);
#pragma unroll
        for (int i = 0; i < kTilePerThread; ++i)
#pragma unroll
            for (int j = 0; j < kTilePerThread; ++j) slice[ty + kTileSide * i][tx + kTileSide * j] = s[i][j];
        __syncthreads();
        for (int kk0 = 0; kk0 < kChainChunk; kk0 += kTileK) {
            lk_tile_stage<kTileM>(tile_a, L, r0, R, k2 + kk0, K2);
            __syncthreads();
            lk_tile_fma<kChainStride>(acc, tile_a, slice + kk0);
            __syncthreads();  // tile_a is restaged, and after the last slice the next chunk rewrites S
        }
    }
}

// ---- forward: y_t += scale·w1·(X_t·w2ᵀ) ------------------------------------------------------------
// Chain rows i (out_l), columns p (out_k), K2 = j (in_m), K1 = q (in_n).
template <class T>
LK_DEVICE void lk_kron_forward(const T* x, const T* w1, const T* w2, T* y, int out_l, int out_k, int in_m, int in_n,
                               float scale) {
    LK_SHARED(float, tile_a, [kTileK][kTileStride]);
    LK_SHARED(float, tile_b, [kTileK][kTileStride]);
    LK_SHARED(float, slice, [kChainChunk][kChainStride]);
    const int column_tiles = lk_ceil_div(out_k, kTileN);
    const lk_i64 t = blockIdx.x / column_tiles;
    const int c0 = (int)(blockIdx.x % column_tiles) * kTileN, r0 = (int)blockIdx.y * kTileM;
    const lk_i64 in = (lk_i64)in_m * in_n, out = (lk_i64)out_l * out_k;
    float acc[kTilePerThread][kTilePerThread] = {};
    lk_kron_chain(acc, lk_operand<T, true>(w1, in_m), lk_operand<T, true>(x + t * in, in_n), lk_operand<T, true>(w2, in_n),
                  out_l, in_m, in_n, out_k, r0, c0, tile_a, tile_b, slice);
    T* y_t = y + t * out;
    lk_tile_for_each(acc, r0, out_l, c0, out_k, [&](int i, int p, float v) {
        T* at = y_t + i * out_k + p;
        lk_store(at, lk_load(at) + scale * v);
    });
}

// ---- grad_x: dx_t += scale·w1ᵀ·(dY_t·w2) -----------------------------------------------------------
// Chain rows j (in_m), columns q (in_n), K2 = i (out_l), K1 = p (out_k).
template <class T>
LK_DEVICE void lk_kron_grad_x(const T* dy, const T* w1, const T* w2, T* dx, int out_l, int out_k, int in_m, int in_n,
                              float scale) {
    LK_SHARED(float, tile_a, [kTileK][kTileStride]);
    LK_SHARED(float, tile_b, [kTileK][kTileStride]);
    LK_SHARED(float, slice, [kChainChunk][kChainStride]);
    const int column_tiles = lk_ceil_div(in_n, kTileN);
    const lk_i64 t = blockIdx.x / column_tiles;
    const int c0 = (int)(blockIdx.x % column_tiles) * kTileN, r0 = (int)blockIdx.y * kTileM;
    const lk_i64 in = (lk_i64)in_m * in_n, out = (lk_i64)out_l * out_k;
    float acc[kTilePerThread][kTilePerThread] = {};
    lk_kron_chain(acc, lk_operand<T, false>(w1, in_m), lk_operand<T, true>(dy + t * out, out_k),
                  lk_operand<T, false>(w2, in_n), in_m, out_l, out_k, in_n, r0, c0, tile_a, tile_b, slice);
    T* dx_t = dx + t * in;
    lk_tile_for_each(acc, r0, in_m, c0, in_n, [&](int j, int q, float v) {
        T* at = dx_t + j * in_n + q;
        lk_store(at, lk_load(at) + scale * v);
    });
}

// The tokens of chunk blockIdx.z: [first, end).
LK_DEVICE void lk_kron_chunk(int M, int tokens_per_chunk, lk_i64& first, lk_i64& end) {
    first = (lk_i64)blockIdx.z * tokens_per_chunk;
    end = first + tokens_per_chunk < M ? first + tokens_per_chunk : M;
}

// ---- grad_w1: partial[c][i, j] = Σ_t Σ_p dY_t[i, p]·(X_t·w2ᵀ)[j, p] ---------------------------------
// Chain rows i (out_l), columns j (in_m), K2 = p (out_k), K1 = q (in_n).
template <class T>
LK_DEVICE void lk_kron_grad_w1(const T* x, const T* dy, const T* w2, float* partial, int M, int out_l, int out_k,
                               int in_m, int in_n, int tokens_per_chunk) {
    LK_SHARED(float, tile_a, [kTileK][kTileStride]);
    LK_SHARED(float, tile_b, [kTileK][kTileStride]);
    LK_SHARED(float, slice, [kChainChunk][kChainStride]);
    const int c0 = (int)blockIdx.x * kTileN, r0 = (int)blockIdx.y * kTileM;
    const lk_i64 in = (lk_i64)in_m * in_n, out = (lk_i64)out_l * out_k;
    lk_i64 first, end;
    lk_kron_chunk(M, tokens_per_chunk, first, end);
    float acc[kTilePerThread][kTilePerThread] = {};
    for (lk_i64 t = first; t < end; ++t)
        lk_kron_chain(acc, lk_operand<T, true>(dy + t * out, out_k), lk_operand<T, true>(w2, in_n),
                      lk_operand<T, true>(x + t * in, in_n), out_l, out_k, in_n, in_m, r0, c0, tile_a, tile_b, slice);
    float* chunk = partial + (lk_i64)blockIdx.z * out_l * in_m;
    lk_tile_for_each(acc, r0, out_l, c0, in_m, [&](int i, int j, float v) { chunk[i * in_m + j] = v; });
}

// ---- grad_w2: partial[c][p, q] = Σ_t Σ_j (w1ᵀ·dY_t)[j, p]·X_t[j, q] --------------------------------
// Computed transposed (the chain's middle product must be its right factor): chain rows q (in_n),
// columns p (out_k), K2 = j (in_m), K1 = i (out_l); element (q, p) is stored at partial[p, q].
template <class T>
LK_DEVICE void lk_kron_grad_w2(const T* x, const T* dy, const T* w1, float* partial, int M, int out_l, int out_k,
                               int in_m, int in_n, int tokens_per_chunk) {
    LK_SHARED(float, tile_a, [kTileK][kTileStride]);
    LK_SHARED(float, tile_b, [kTileK][kTileStride]);
    LK_SHARED(float, slice, [kChainChunk][kChainStride]);
    const int c0 = (int)blockIdx.x * kTileN, r0 = (int)blockIdx.y * kTileM;
    const lk_i64 in = (lk_i64)in_m * in_n, out = (lk_i64)out_l * out_k;
    lk_i64 first, end;
    lk_kron_chunk(M, tokens_per_chunk, first, end);
    float acc[kTilePerThread][kTilePerThread] = {};
    for (lk_i64 t = first; t < end; ++t)
        lk_kron_chain(acc, lk_operand<T, false>(x + t * in, in_n), lk_operand<T, false>(w1, in_m),
                      lk_operand<T, false>(dy + t * out, out_k), in_n, in_m, out_l, out_k, r0, c0, tile_a, tile_b,
                      slice);
    float* chunk = partial + (lk_i64)blockIdx.z * out_k * in_n;
    lk_tile_for_each(acc, r0, in_n, c0, out_k, [&](int q, int p, float v) { chunk[p * in_n + q] = v; });
}

// ---- merge: W += scale·kron(w1, w2) ---------------------------------------------------------------
// W [out, in·spatial] (spatial = kh·kw for a convolution weight, whose w2 is [out_k, in_n, kh, kw]).
// Grid-stride over W's elements (64-bit index), each read and written once.
template <class T>
LK_DEVICE void lk_kron_merge(T* W, const T* w1, const T* w2, int out_l, int out_k, int in_m, int in_n, int spatial,
                             float scale) {
    const lk_i64 block = (lk_i64)in_n * spatial, row_length = (lk_i64)in_m * block;
    const lk_i64 n = (lk_i64)out_l * out_k * row_length, stride = (lk_i64)gridDim.x * blockDim.x;
    for (lk_i64 e = (lk_i64)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += stride) {
        const lk_i64 row = e / row_length, column = e - row * row_length;
        const int i = (int)(row / out_k), p = (int)(row - (lk_i64)i * out_k);
        const int j = (int)(column / block);
        const lk_i64 inner = column - j * block;
        lk_store(W + e, lk_load(W + e) + scale * lk_load(w1 + i * in_m + j) * lk_load(w2 + p * block + inner));
    }
}

}  // namespace

// ---- entry points: thin wrappers instantiating each template for fp32 and bf16 storage. Written out
// rather than stamped by a macro: NVRTC 11.8's ptxas crashes (SIGSEGV) compiling for sm_90 with
// -lineinfo when a kernel and the body it inlines sit on one source line, as a macro expansion does.
extern "C" __global__ void __launch_bounds__(kTileThreads) lk_kron_forward_f32(
    const float* x, const float* w1, const float* w2, float* y, int out_l, int out_k, int in_m, int in_n, float scale) {
    lk_kron_forward<float>(x, w1, w2, y, out_l, out_k, in_m, in_n, scale);
}
LK_KERNEL(lk_kron_forward_f32);

extern "C" __global__ void __launch_bounds__(kTileThreads) lk_kron_grad_x_f32(
    const float* dy, const float* w1, const float* w2, float* dx, int out_l, int out_k, int in_m, int in_n, float scale) {
    lk_kron_grad_x<float>(dy, w1, w2, dx, out_l, out_k, in_m, in_n, scale);
}
LK_KERNEL(lk_kron_grad_x_f32);

extern "C" __global__ void __launch_bounds__(kTileThreads) lk_kron_grad_w1_f32(
    const float* x, const float* dy, const float* w2, float* partial, int M, int out_l, int out_k, int in_m, int in_n,
    int tokens_per_chunk) {
    lk_kron_grad_w1<float>(x, dy, w2, partial, M, out_l, out_k, in_m, in_n, tokens_per_chunk);
}
LK_KERNEL(lk_kron_grad_w1_f32);

extern "C" __global__ void __launch_bounds__(kTileThreads) lk_kron_grad_w2_f32(
    const float* x, const float* dy, const float* w1, float* partial, int M, int out_l, int out_k, int in_m, int in_n,
    int tokens_per_chunk) {
    lk_kron_grad_w2<float>(x, dy, w1, partial, M, out_l, out_k, in_m, in_n, tokens_per_chunk);
}
LK_KERNEL(lk_kron_grad_w2_f32);

extern "C" __global__ void __launch_bounds__(kElementwiseThreads) lk_kron_sum_chunks_f32(
    const float* partial, float* dw, int chunks, long long n, float scale) {
    lk_split_k_sum<float>(partial, dw, chunks, n, scale, 0.0f);
}
LK_KERNEL(lk_kron_sum_chunks_f32);

extern "C" __global__ void __launch_bounds__(kElementwiseThreads) lk_kron_merge_f32(
    float* W, const float* w1, const float* w2, int out_l, int out_k, int in_m, int in_n, int spatial, float scale) {
    lk_kron_merge<float>(W, w1, w2, out_l, out_k, in_m, in_n, spatial, scale);
}
LK_KERNEL(lk_kron_merge_f32);

extern "C" __global__ void __launch_bounds__(kTileThreads) lk_kron_forward_bf16(
    const lk_bf16* x, const lk_bf16* w1, const lk_bf16* w2, lk_bf16* y, int out_l, int out_k, int in_m, int in_n, float scale) {
    lk_kron_forward<lk_bf16>(x, w1, w2, y, out_l, out_k, in_m, in_n, scale);
}
LK_KERNEL(lk_kron_forward_bf16);

extern "C" __global__ void __launch_bounds__(kTileThreads) lk_kron_grad_x_bf16(
    const lk_bf16* dy, const lk_bf16* w1, const lk_bf16* w2, lk_bf16* dx, int out_l, int out_k, int in_m, int in_n, float scale) {
    lk_kron_grad_x<lk_bf16>(dy, w1, w2, dx, out_l, out_k, in_m, in_n, scale);
}
LK_KERNEL(lk_kron_grad_x_bf16);

extern "C" __global__ void __launch_bounds__(kTileThreads) lk_kron_grad_w1_bf16(
    const lk_bf16* x, const lk_bf16* dy, const lk_bf16* w2, float* partial, int M, int out_l, int out_k, int in_m, int in_n,
    int tokens_per_chunk) {
    lk_kron_grad_w1<lk_bf16>(x, dy, w2, partial, M, out_l, out_k, in_m, in_n, tokens_per_chunk);
}
LK_KERNEL(lk_kron_grad_w1_bf16);

extern "C" __global__ void __launch_bounds__(kTileThreads) lk_kron_grad_w2_bf16(
    const lk_bf16* x, const lk_bf16* dy, const lk_bf16* w1, float* partial, int M, int out_l, int out_k, int in_m, int in_n,
    int tokens_per_chunk) {
    lk_kron_grad_w2<lk_bf16>(x, dy, w1, partial, M, out_l, out_k, in_m, in_n, tokens_per_chunk);
}
LK_KERNEL(lk_kron_grad_w2_bf16);

extern "C" __global__ void __launch_bounds__(kElementwiseThreads) lk_kron_sum_chunks_bf16(
    const float* partial, lk_bf16* dw, int chunks, long long n, float scale) {
    lk_split_k_sum<lk_bf16>(partial, dw, chunks, n, scale, 0.0f);
}
LK_KERNEL(lk_kron_sum_chunks_bf16);

extern "C" __global__ void __launch_bounds__(kElementwiseThreads) lk_kron_merge_bf16(
    lk_bf16* W, const lk_bf16* w1, const lk_bf16* w2, int out_l, int out_k, int in_m, int in_n, int spatial, float scale) {
    lk_kron_merge<lk_bf16>(W, w1, w2, out_l, out_k, in_m, in_n, spatial, scale);
}
LK_KERNEL(lk_kron_merge_bf16);
