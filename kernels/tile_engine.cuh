// tile_engine.cuh: the register-blocked GEMM engine every tiled kernel reduces with.
//
// Strategy: a 64x64 output tile per 256-thread block, 16-deep K slices staged through shared memory
// as fp32 (each operand converted, dropout-masked or dequantized by its loader while staging), each
// thread accumulating a 4x4 sub-tile whose rows and columns are strided by 16, so shared reads are
// broadcasts or conflict-free and global stores are coalesced. An operand is a loader that says
// whether K is its contiguous index, so one engine serves NT (x W0ᵀ), NN (dy W0) and TN (dyᵀ u)
// products without transposed copies; a kernel may run several reductions into one accumulator
// (LoRA's u Bᵀ then x W0ᵀ), so every output element is written once. Grid: x over 64-row output
// tiles, y over 64-column tiles. This is a CUDA-core (FMA) engine; a tensor-core one belongs beside it.
//
// Users: kernels/lora.cu (project, forward, grads, merge), kernels/nf4.cu (4-bit products, with a
// quantized-weight loader), and the families after them. The launch constants (kTileM, kTileN,
// kTileK, kTileThreads) are in launch_geometry.cuh.
#pragma once

#include "common.cuh"
#include "launch_geometry.cuh"

namespace {

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

// acc[i][j] += Σ_kk a[kk][ty + 16i] · b[kk][tx + 16j] over one staged slice (kTileK rows of each):
// the register-blocked inner loop. b may be a staging tile or any shared array whose rows hold the
// tile's columns (kron.cu's middle product, kStrideB its row stride).
template <int kStrideB>
LK_DEVICE void lk_tile_fma(float (&acc)[kTilePerThread][kTilePerThread], float (*a)[kTileStride],
                           float (*b)[kStrideB]) {
    const int tx = (int)threadIdx.x % kTileSide, ty = (int)threadIdx.x / kTileSide;
#pragma unroll
    for (int kk = 0; kk < kTileK; ++kk) {
        float av[kTilePerThread], bv[kTilePerThread];
#pragma unroll
        for (int i = 0; i < kTilePerThread; ++i) av[i] = a[kk][ty + kTileSide * i];
#pragma unroll
        for (int j = 0; j < kTilePerThread; ++j) bv[j] = b[kk][tx + kTileSide * j];
#pragma unroll
        for (int i = 0; i < kTilePerThread; ++i)
#pragma unroll
            for (int j = 0; j < kTilePerThread; ++j) acc[i][j] += av[i] * bv[j];
    }
}

// acc[i][j] += Σ_k a(m0 + ty + 16i, k) · b(n0 + tx + 16j, k) over k in [0, K). Call it from
// all threads of the block (it synchronises); tile_a/tile_b are the block's staging tiles.
template <class OpA, class OpB>
LK_DEVICE void lk_tile_reduce(float (&acc)[kTilePerThread][kTilePerThread], const OpA& a, const OpB& b,
                              int K, int m0, int M, int n0, int N, float (*tile_a)[kTileStride],
                              float (*tile_b)[kTileStride]) {
    for (int k0 = 0; k0 < K; k0 += kTileK) {
        lk_tile_stage<kTileM>(tile_a, a, m0, M, k0, K);
        lk_tile_stage<kTileN>(tile_b, b, n0, N, k0, K);
        __syncthreads();
        lk_tile_fma<kTileStride>(acc, tile_a, tile_b);
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

}  // namespace
