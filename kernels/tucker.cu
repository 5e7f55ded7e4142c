// tucker.cu: the mode products of the Tucker adapters (FLoRA / LoTR), as one strided batched matrix
// product. Semantics are those of lk_cpu_tucker_batched_matmul (native/include/lora_kernels_tucker.h):
//
//   reduce = 0:  C_b = alpha·op(A_b)·op(B_b) + beta·C_b     for b in [0, batch)
//   reduce = 1:  C   = alpha·Σ_b op(A_b)·op(B_b) + beta·C
//
// with X_b = X + b·stride_x (stride 0 shares one matrix), op(A_b) [M, K] (stored [K, M] when
// trans_a), op(B_b) [K, N] (stored [N, K] when trans_b), C_b [M, N], all dense and row-major.
//
// Entry point (T = f32 | bf16: storage of A, B and C; every sum in fp32):
//   lk_tucker_batched_matmul_T     tile engine, one 64x64 tile of C_b per block
//
// Why one batched product: the mode-n product of a tensor viewed as [batch, I, inner] with U [J, I]
// is C_b = U·X_b, so every mode product of a Tucker adapter is one launch (the linear adapter's
// core fold U_out·S and its gradients, the convolution adapter's 1×1 stages and its formed ΔW), and
// so are the Kronecker adapter's factor products (w = a·b and their gradients) and the per-image
// products of the convolution adapters, whose launchers call this entry point rather than keep
// their own GEMMs. The linear Tucker adapter's heavy products are LoRA's (kernels/lora.cu) with
// the folded core; the convolution adapter's kh×kw stage is kernels/conv.cu.
//
// Strategy: the shared tile engine (tile_engine.cuh): grid (ceil(N/64), ceil(M/64), z), block 256;
// the operand loaders read each matrix in its stored order (the transposes cost nothing). An
// independent batch strides over blockIdx.z (grid.z = min(batch, 65535)); a reduced batch runs in
// one z-slice whose blocks loop over b in order, so the sum is deterministic. The runtime flags
// select one of four instantiations (the operands' orders are compile-time in the engine).
// FLOPs 2·batch·M·N·K; bytes s·(batch·(M·K + K·N) (shared operands once) + 2·M·N per output).
// Assumptions: every matrix has fewer than 2^31 elements (C# checks); offsets b·stride are 64-bit.
#include "common.cuh"
#include "tile_engine.cuh"

namespace {

// acc += op(A)·op(B) for the 64x64 tile at (m0, n0). op(A) rows are i with reduction index k,
// contiguous unless A is stored transposed; op(B) is read as the rows j of op(B)ᵀ, contiguous in k
// only when B is stored transposed ([N, K]).
template <class T, bool kTransA, bool kTransB>
LK_DEVICE void lk_tucker_product(float (&acc)[kTilePerThread][kTilePerThread], const T* A, const T* B, int M, int N,
                                 int K, int m0, int n0, float (*tile_a)[kTileStride], float (*tile_b)[kTileStride]) {
    lk_tile_reduce(acc, lk_operand<T, !kTransA>(A, kTransA ? M : K), lk_operand<T, kTransB>(B, kTransB ? K : N), K,
                   m0, M, n0, N, tile_a, tile_b);
}

template <class T>
LK_DEVICE void lk_tucker_product_any(float (&acc)[kTilePerThread][kTilePerThread], int trans_a, int trans_b, const T* A,
                                     const T* B, int M, int N, int K, int m0, int n0, float (*tile_a)[kTileStride],
                                     float (*tile_b)[kTileStride]) {
    if (trans_a && trans_b)
        lk_tucker_product<T, true, true>(acc, A, B, M, N, K, m0, n0, tile_a, tile_b);
    else if (trans_a)
        lk_tucker_product<T, true, false>(acc, A, B, M, N, K, m0, n0, tile_a, tile_b);
    else if (trans_b)
        lk_tucker_product<T, false, true>(acc, A, B, M, N, K, m0, n0, tile_a, tile_b);
    else
        lk_tucker_product<T, false, false>(acc, A, B, M, N, K, m0, n0, tile_a, tile_b);
}

// C = alpha·acc + beta·C over the tile's elements inside [0, M) x [0, N).
template <class T>
LK_DEVICE void lk_tucker_store(float (&acc)[kTilePerThread][kTilePerThread], T* C, int M, int N, int m0, int n0,
                               float alpha, float beta) {
    lk_tile_for_each(acc, m0, M, n0, N, [&](int i, int j, float v) {
        T* out = C + (lk_i64)i * N + j;
        lk_store(out, beta == 0.0f ? alpha * v : alpha * v + beta * lk_load(out));
    });
}

template <class T>
LK_DEVICE void lk_tucker_batched_matmul(int batch, int M, int N, int K, int trans_a, const T* A, lk_i64 stride_a,
                                        int trans_b, const T* B, lk_i64 stride_b, float alpha, float beta, T* C,
                                        lk_i64 stride_c, int reduce) {
    LK_SHARED(float, tile_a, [kTileK][kTileStride]);
    LK_SHARED(float, tile_b, [kTileK][kTileStride]);
    const int m0 = (int)blockIdx.y * kTileM, n0 = (int)blockIdx.x * kTileN;
    // A reduced batch runs in one z-slice (the launcher's grid.z = 1), summing every b in order.
    const int first = reduce ? 0 : (int)blockIdx.z, step = reduce ? 1 : (int)gridDim.z;
    float acc[kTilePerThread][kTilePerThread] = {};
    for (int b = first; b < batch; b += step) {
        lk_tucker_product_any(acc, trans_a, trans_b, A + b * stride_a, B + b * stride_b, M, N, K, m0, n0, tile_a, tile_b);
        if (reduce) continue;
        lk_tucker_store(acc, C + b * stride_c, M, N, m0, n0, alpha, beta);
#pragma unroll
        for (int i = 0; i < kTilePerThread; ++i)
#pragma unroll
            for (int j = 0; j < kTilePerThread; ++j) acc[i][j] = 0.0f;
    }
    if (reduce) lk_tucker_store(acc, C, M, N, m0, n0, alpha, beta);
}

}  // namespace

// ---- entry points: thin wrappers instantiating the template for fp32 and bf16 storage ------------
extern "C" __global__ void __launch_bounds__(kTileThreads) lk_tucker_batched_matmul_f32(
    int batch, int M, int N, int K, int trans_a, const float* A, long long stride_a, int trans_b, const float* B,
    long long stride_b, float alpha, float beta, float* C, long long stride_c, int reduce) {
    lk_tucker_batched_matmul<float>(batch, M, N, K, trans_a, A, stride_a, trans_b, B, stride_b, alpha, beta, C,
                                        stride_c, reduce);
}
LK_KERNEL(lk_tucker_batched_matmul_f32);

extern "C" __global__ void __launch_bounds__(kTileThreads) lk_tucker_batched_matmul_bf16(
    int batch, int M, int N, int K, int trans_a, const lk_bf16* A, long long stride_a, int trans_b, const lk_bf16* B,
    long long stride_b, float alpha, float beta, lk_bf16* C, long long stride_c, int reduce) {
    lk_tucker_batched_matmul<lk_bf16>(batch, M, N, K, trans_a, A, stride_a, trans_b, B, stride_b, alpha, beta, C,
                                          stride_c, reduce);
}
LK_KERNEL(lk_tucker_batched_matmul_bf16);
