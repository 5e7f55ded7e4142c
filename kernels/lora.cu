// lora.cu: the LoRA linear layer, y = x W0ᵀ + bias + scale·(dropout(x) Aᵀ) Bᵀ, its backward and merge.
// Semantics are those of lk_cpu_lora_forward / _backward / _merge (native/include/lora_kernels.h);
// docs/KERNELS.md gives each entry point's launch geometry and shared memory.
//
// Entry points (T = f32 | bf16: storage of x, W0, bias, A, B, y, dx, dA, dB, W; u and du are
// always fp32; every sum accumulates in fp32):
//   lk_lora_project_T        u = dropout(x) Aᵀ                              tiled GEMM
//   lk_lora_forward_decode_T y (and u) for M <= 16, one launch              W0-streaming GEMV
//   lk_lora_forward_tiled_T  y = x W0ᵀ + bias + scale·u Bᵀ for any M       tiled GEMM, LoRA as K
//   lk_lora_forward_mma_bf16 the same on tensor cores (sm_80+)              tile_mma.cuh, LoRA as K
//   lk_lora_grad_u_T         du = scale·dy B                                tiled GEMM
//   lk_lora_grad_b_T         dB = scale·dyᵀ u                               tiled GEMM
//   lk_lora_grad_a_T         dA = duᵀ dropout(x)                            tiled GEMM
//   lk_lora_grad_x_T         dx = dy W0 + dropout'(du A), one pass          tiled GEMM, LoRA as K
//   lk_lora_grad_x_mma_bf16  the same on tensor cores (sm_80+)              tile_mma.cuh, LoRA as K
//   lk_lora_merge_T          W += scale·B A in place (unmerge: -scale)      tiled GEMM epilogue
//
// Strategies and why:
//   * Every op except decode is the shared tile engine (tile_engine.cuh: 64x64 output tiles,
//     16-deep K slices staged as fp32, converted and dropout-masked while staging, 4x4 register
//     sub-tiles). The LoRA term of forward and grad_x is a second reduction phase into the same
//     accumulators, so every output element is written once. A CUDA-core (FMA) engine: the fp32
//     path, and every GPU before sm_80.
//   * bf16 forward and grad_x, the two products with K = in or out (all the FLOPs of a training
//     step but 3·M·r·(in + out)), run on tensor cores (tile_mma.cuh: 128x128 tiles, a 3-stage
//     cp.async ring, ldmatrix, mma.sync m16n8k16, fp32 accumulators). The LoRA phase is its split
//     columns: scale·u (or du) as three bf16 pieces that sum to the fp32 value exactly, against B
//     (or A) three times, so the adapter term keeps fp32 u's precision. project, grad_u, grad_b,
//     grad_a (N = r or K = M with N = r: a few percent of the FLOPs) stay on the FMA engine.
//   * Decode (M <= 16) is the shared decode engine (decode_engine.cuh) over W0's rows with 16-byte
//     loads: W0 streamed once, x staged per block, two rows per warp for all M tokens at once.
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
//   forward_mma  FLOPs 2·M·out·(in + 3r) on tensor cores; min bytes 2·(M·in + out·in + out·r + out + M·out)
//                + 4·M·r; x re-read ceil(out/128) times and W0 ceil(M/128) times, mostly from L2
//   grad_u       FLOPs 2·M·out·r;                min bytes s·(M·out + out·r) + 4·M·r
//   grad_b       FLOPs 2·M·out·r;                min bytes s·(M·out + out·r) + 4·M·r
//   grad_a       FLOPs 2·M·r·in;                 min bytes s·(M·in + r·in) + 4·M·r
//   grad_x       FLOPs 2·M·in·(out + r);         min bytes s·(M·out + out·in + r·in + M·in) + 4·M·r
//   grad_x_mma   FLOPs 2·M·in·(out + 3r) on tensor cores; min bytes 2·(M·out + out·in + r·in + M·in) + 4·M·r
//   merge        FLOPs 2·out·in·r;               min bytes s·(2·out·in + r·in + out·r)
#include "common.cuh"
#include "decode_engine.cuh"
#include "tile_engine.cuh"
#include "tile_mma.cuh"

namespace {

// ---- the tile engine: tile_engine.cuh ----------------------------------------------------------

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

// ---- forward, decode (M <= 16): the decode engine (decode_engine.cuh) over dense W0 rows ----------
// Strategy: see the file comment. Block b owns W0 rows [b·rows, (b+1)·rows), rows =
// ceil(out / gridDim.x); per chunk of x columns: stage x (fp32) and its dropout keep bits,
// accumulate u (warps over A's rows) and the block's x W0ᵀ partial sums (warps over its W0
// rows) in shared memory; then y = ypart + bias + scale·u Bᵀ, written once, coalesced over out.
template <class T>
LK_DEVICE void lk_lora_forward_decode(const T* x, const T* W0, const T* bias, const T* A, const T* B, T* y, float* u,
                                      int M, int in, int out, int r, float scale, float dropout_p, lk_u64 seed) {
    if (M > kDecodeMaxM) __trap();  // the launcher routes M > 16 to project + tiled; reaching here is its bug
    const DecodeLayout s = lk_decode_layout(M, in, out, r, 0);
    const int row_begin = (int)blockIdx.x * s.rows_per_block;
    const int row_end = lk_min(out, row_begin + s.rows_per_block);
    const float keep = dropout_p > 0.0f ? 1.0f / (1.0f - dropout_p) : 1.0f;  // as lk_dropout_factor

    lk_decode_zero(s, M, r);
    for (int c0 = 0; c0 < in; c0 += kDecodeChunk) {
        const int cols = lk_min(kDecodeChunk, in - c0);
        __syncthreads();  // the previous chunk's readers are done with x and mask
        lk_decode_stage(x, M, in, c0, cols, s, true, dropout_p, seed);
        __syncthreads();
        lk_decode_rows_dense<T, true>(A, in, 0, r, c0, cols, s, keep, M, s.u, r);
        lk_decode_rows_dense<T, false>(W0, in, row_begin, row_end, c0, cols, s, keep, M, s.ypart, s.rows_per_block);
    }
    __syncthreads();
    lk_decode_epilogue(s, bias, B, y, u, M, out, r, scale, row_begin, lk_max(row_end - row_begin, 0));
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

// ---- forward and grad_x on tensor cores (bf16, sm_80+): tile_mma.cuh's adapted products -----------
// With W0 as a bf16 matrix operand: y = [scale·u pieces | x]·[B B B | W0]ᵀ + bias, and dx =
// dropout'([du pieces]·[A A A]) + dy·W0 (W0 read N-contiguous). Grid (ceil(M/128), ceil(N/128)),
// block 256, dynamic shared kMmaSharedBytes.

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

extern "C" __global__ void __launch_bounds__(kMmaThreads, 2) lk_lora_forward_mma_bf16(
    const lk_bf16* x, const lk_bf16* W0, const lk_bf16* bias, const float* u, const lk_bf16* B, lk_bf16* y, int M,
    int in, int out, int r, float scale) {
    lk_mma_adapted_forward(x, MmaMatrix<true>{W0, in}, bias, u, B, y, M, in, out, r, scale);
}
LK_KERNEL(lk_lora_forward_mma_bf16);

extern "C" __global__ void __launch_bounds__(kMmaThreads, 1) lk_lora_grad_x_mma_bf16(
    const lk_bf16* dy, const lk_bf16* W0, const float* du, const lk_bf16* A, lk_bf16* dx, int M, int in, int out,
    int r, float dropout_p, unsigned long long seed) {
    lk_mma_adapted_grad_x(dy, MmaMatrix<false>{W0, in}, du, A, dx, M, in, out, r, dropout_p, seed);
}
LK_KERNEL(lk_lora_grad_x_mma_bf16);

extern "C" __global__ void __launch_bounds__(kTileThreads) lk_lora_merge_bf16(
    lk_bf16* W, const lk_bf16* A, const lk_bf16* B, int out, int in, int r, float scale) {
    lk_lora_merge<lk_bf16>(W, A, B, out, in, r, scale);
}
LK_KERNEL(lk_lora_merge_bf16);
