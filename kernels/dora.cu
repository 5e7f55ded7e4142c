// dora.cu: DoRA's own kernels (REFERENCE.md §2); the GEMMs are lora.cu's. Semantics are those of
// lk_cpu_dora_* (native/include/lora_kernels_dora.h); docs/KERNELS.md gives each launch geometry.
//
// How a DoRA step runs on the GPU (GpuBackend.Dora.cs; m = magnitude, n = weight norm, g = m / n):
//   once per frozen W0:  lk_dora_row_sqnorm_T      ‖w_i‖²                               [out] fp32
//   weight norm:         lk_lora_project_T(x := W0, A) = W0 Aᵀ = P                     [out, r] fp32
//                        lk_lora_project_T(x := A, A)  = A Aᵀ  = G                     [r, r] fp32
//                        lk_dora_weight_norm_T     n_i = sqrt(max(0, ‖w_i‖² + 2s·P_i·B_i + s²·B_i G B_iᵀ))
//   forward:             lora forward without bias  z = x W0ᵀ + s·u Bᵀ, u = x Aᵀ        (lora.cu)
//                        lk_dora_scale_columns_T   y = g ⊙ z + bias (z kept for the backward)
//   backward:            lk_dora_magnitude_grad_T  dm_j = Σ_t dy[t,j]·z[t,j] / n_j
//                        lk_dora_scale_grad_T      dz = dy ⊙ g, then the LoRA backward on dz (lora.cu)
//   merge / unmerge:     lk_dora_scale_rows_T      W_i *= m_i / n_i (or n_i / m_i)
// The norm never forms B·A or W0 + s·B·A (REFERENCE.md §11): per step it costs the two small
// GEMMs (2·out·in·r + 2·r²·in FLOPs, W0 read once) and out·(2r + 2r²) FLOPs here, against the
// 2·out·in·r FLOPs and out·in stores of materialising B·A; the clamp at 0 keeps a row whose
// s·B_i·A nearly cancels w_i from taking the sqrt of a rounding-negative number.
//
// Entry points (T = f32 | bf16 storage of W0, B, magnitude, bias, z, y, dy, dz, dm, W; the norm,
// ‖w‖², P and G are fp32; all arithmetic is fp32):
//   lk_dora_row_sqnorm_T       one warp per W0 row, lanes stride the row, warp tree sum.
//       grid ceil(out/8), block 256.     FLOPs 2·out·in; bytes s·out·in + 4·out.
//   lk_dora_weight_norm_T      one thread per row: P_i·B_i and B_i G B_iᵀ (G read by all threads of
//       a warp at the same address: a broadcast). grid ceil(out/256), block 256.
//       FLOPs out·(2r + 2r²); bytes 4·(out + out·r + r² + out) + s·out·r.
//   lk_dora_weight_norm_pt_f32 the same with P given transposed, Pt [r, out] (QDoRA: A·deq(W)ᵀ from
//       the 4-bit matmul); P reads are then coalesced across the warp. Same grid, FLOPs and bytes.
//   lk_dora_dropout_f32        y = x ⊙ lk_dropout_factor(seed, i, p) (DoRA's training dropout path
//       materialises dropout(x) for its second base product, and masks dx), grid-stride.
//       bytes 8·n; one hash per element.
//   lk_dora_scale_columns_T    y = g ⊙ z + bias, grid-stride over M·out; z may be y (in place).
//       grid min(ceil(M·out/256), 8·SMs), block 256. bytes s·(2·M·out + 2·out) + 4·out.
//   lk_dora_magnitude_grad_T   block = 32 columns × 8 row groups: lanes take consecutive columns
//       (coalesced rows of dy and z), the 8 warps stride the rows, a shared [8][32] sum finishes.
//       grid ceil(out/32), block 256. FLOPs 2·M·out; bytes s·(2·M·out + out) + 4·out.
//   lk_dora_scale_grad_T       dz = dy ⊙ g, grid-stride as scale_columns. bytes s·(2·M·out + out) + 4·out.
//   lk_dora_scale_rows_T       W_i *= m_i / n_i (invert = 0) or n_i / m_i (invert = 1), grid-stride.
//       bytes 2·s·out·in + (s + 4)·out.
//
// Assumptions: row-major dense tensors, every element count < 2^31 (the C# side guarantees it);
// no alignment required. A zero norm gives g = ±inf (NaN for m = 0), as PEFT's division does.
#include "common.cuh"

namespace {

constexpr int kDoraThreads = 256;
constexpr int kDoraWarps = kDoraThreads / 32;
constexpr int kGradColumns = 32;  // magnitude_grad: columns per block, one per lane
static_assert(kDoraThreads % 32 == 0, "whole warps");
static_assert(kGradColumns * kDoraWarps == kDoraThreads, "magnitude_grad: 32 columns x 8 row groups");

template <class T>
LK_DEVICE void lk_dora_row_sqnorm(const T* W0, float* sqnorm, int out, int in) {
    const int lane = (int)threadIdx.x & 31;
    const int row = (int)blockIdx.x * kDoraWarps + (int)threadIdx.x / 32;
    if (row >= out) return;  // warp-uniform; no barrier follows
    const T* w = W0 + row * in;
    float sum = 0.0f;
    for (int k = lane; k < in; k += 32) {
        const float v = lk_load(w + k);
        sum += v * v;
    }
    sum = lk_warp_sum(sum);
    if (lane == 0) sqnorm[row] = sum;
}

template <class T>
LK_DEVICE void lk_dora_weight_norm(const float* w0_sqnorm, const float* P, int p_row, int p_col, const float* G,
                                   const T* B, float* norm, int out, int r, float scale) {
    const int row = (int)blockIdx.x * kDoraThreads + (int)threadIdx.x;
    if (row >= out) return;
    const T* b = B + row * r;
    const float* p = P + row * p_row;
    float cross = 0.0f, quadratic = 0.0f;
    for (int a = 0; a < r; ++a) {
        const float ba = lk_load(b + a);
        cross += p[a * p_col] * ba;
        float gb = 0.0f;
        for (int c = 0; c < r; ++c) gb += G[a * r + c] * lk_load(b + c);
        quadratic += ba * gb;
    }
    const float squared = w0_sqnorm[row] + 2.0f * scale * cross + scale * scale * quadratic;
    norm[row] = sqrtf(squared > 0.0f ? squared : 0.0f);
}

// y = x ⊙ mask: lk_dropout_factor(seed, i, p) on flat element i (the LoRA kernels' mask for x [M, in]).
LK_DEVICE void lk_dora_dropout(const float* x, float* y, int n, float p, lk_u64 seed) {
    for (int i = (int)(blockIdx.x * blockDim.x + threadIdx.x); i < n; i += (int)(gridDim.x * blockDim.x))
        y[i] = x[i] * lk_dropout_factor(seed, (lk_u64)i, p);
}

template <class T>
LK_DEVICE void lk_dora_scale_columns(const T* z, const T* magnitude, const float* norm, const T* bias, T* y, int M,
                                     int out) {
    const int total = M * out;
    for (int i = (int)(blockIdx.x * blockDim.x + threadIdx.x); i < total; i += (int)(gridDim.x * blockDim.x)) {
        const int j = i % out;
        float v = lk_load(magnitude + j) / norm[j] * lk_load(z + i);
        if (bias) v += lk_load(bias + j);
        lk_store(y + i, v);
    }
}

template <class T>
LK_DEVICE void lk_dora_magnitude_grad(const T* dy, const T* z, const float* norm, T* dm, int M, int out) {
    LK_SHARED(float, partial, [kDoraWarps][kGradColumns]);
    const int lane = (int)threadIdx.x & 31, group = (int)threadIdx.x / 32;
    const int j = (int)blockIdx.x * kGradColumns + lane;
    float sum = 0.0f;
    if (j < out)
        for (int t = group; t < M; t += kDoraWarps) sum += lk_load(dy + t * out + j) * lk_load(z + t * out + j);
    partial[group][lane] = sum;
    __syncthreads();
    if (group == 0 && j < out) {
        float total = 0.0f;
        for (int w = 0; w < kDoraWarps; ++w) total += partial[w][lane];
        lk_store(dm + j, total / norm[j]);
    }
}

template <class T>
LK_DEVICE void lk_dora_scale_grad(const T* dy, const T* magnitude, const float* norm, T* dz, int M, int out) {
    const int total = M * out;
    for (int i = (int)(blockIdx.x * blockDim.x + threadIdx.x); i < total; i += (int)(gridDim.x * blockDim.x)) {
        const int j = i % out;
        lk_store(dz + i, lk_load(dy + i) * (lk_load(magnitude + j) / norm[j]));
    }
}

template <class T>
LK_DEVICE void lk_dora_scale_rows(T* W, const T* magnitude, const float* norm, int out, int in, int invert) {
    const int total = out * in;
    for (int i = (int)(blockIdx.x * blockDim.x + threadIdx.x); i < total; i += (int)(gridDim.x * blockDim.x)) {
        const int row = i / in;
        const float m = lk_load(magnitude + row), n = norm[row];
        lk_store(W + i, lk_load(W + i) * (invert ? n / m : m / n));
    }
}

}  // namespace

// ---- entry points: thin wrappers instantiating each template for fp32 and bf16 storage -----------
extern "C" __global__ void __launch_bounds__(kDoraThreads) lk_dora_row_sqnorm_f32(
    const float* W0, float* sqnorm, int out, int in) {
    lk_dora_row_sqnorm<float>(W0, sqnorm, out, in);
}
LK_KERNEL(lk_dora_row_sqnorm_f32);

extern "C" __global__ void __launch_bounds__(kDoraThreads) lk_dora_weight_norm_f32(
    const float* w0_sqnorm, const float* P, const float* G, const float* B, float* norm, int out, int r,
    float scale) {
    lk_dora_weight_norm<float>(w0_sqnorm, P, r, 1, G, B, norm, out, r, scale);
}
LK_KERNEL(lk_dora_weight_norm_f32);

// QDoRA: Pt = (deq(W) Aᵀ)ᵀ [r, out] as the 4-bit matmul A·deq(W)ᵀ gives it (F32 layers only).
extern "C" __global__ void __launch_bounds__(kDoraThreads) lk_dora_weight_norm_pt_f32(
    const float* w0_sqnorm, const float* Pt, const float* G, const float* B, float* norm, int out, int r,
    float scale) {
    lk_dora_weight_norm<float>(w0_sqnorm, Pt, 1, out, G, B, norm, out, r, scale);
}
LK_KERNEL(lk_dora_weight_norm_pt_f32);

extern "C" __global__ void __launch_bounds__(kDoraThreads) lk_dora_dropout_f32(const float* x, float* y, int n, float p,
                                                                                lk_u64 seed) {
    lk_dora_dropout(x, y, n, p, seed);
}
LK_KERNEL(lk_dora_dropout_f32);

extern "C" __global__ void __launch_bounds__(kDoraThreads) lk_dora_scale_columns_f32(
    const float* z, const float* magnitude, const float* norm, const float* bias, float* y, int M, int out) {
    lk_dora_scale_columns<float>(z, magnitude, norm, bias, y, M, out);
}
LK_KERNEL(lk_dora_scale_columns_f32);

extern "C" __global__ void __launch_bounds__(kDoraThreads) lk_dora_magnitude_grad_f32(
    const float* dy, const float* z, const float* norm, float* dm, int M, int out) {
    lk_dora_magnitude_grad<float>(dy, z, norm, dm, M, out);
}
LK_KERNEL(lk_dora_magnitude_grad_f32);

extern "C" __global__ void __launch_bounds__(kDoraThreads) lk_dora_scale_grad_f32(
    const float* dy, const float* magnitude, const float* norm, float* dz, int M, int out) {
    lk_dora_scale_grad<float>(dy, magnitude, norm, dz, M, out);
}
LK_KERNEL(lk_dora_scale_grad_f32);

extern "C" __global__ void __launch_bounds__(kDoraThreads) lk_dora_scale_rows_f32(
    float* W, const float* magnitude, const float* norm, int out, int in, int invert) {
    lk_dora_scale_rows<float>(W, magnitude, norm, out, in, invert);
}
LK_KERNEL(lk_dora_scale_rows_f32);

extern "C" __global__ void __launch_bounds__(kDoraThreads) lk_dora_row_sqnorm_bf16(
    const lk_bf16* W0, float* sqnorm, int out, int in) {
    lk_dora_row_sqnorm<lk_bf16>(W0, sqnorm, out, in);
}
LK_KERNEL(lk_dora_row_sqnorm_bf16);

extern "C" __global__ void __launch_bounds__(kDoraThreads) lk_dora_weight_norm_bf16(
    const float* w0_sqnorm, const float* P, const float* G, const lk_bf16* B, float* norm, int out, int r,
    float scale) {
    lk_dora_weight_norm<lk_bf16>(w0_sqnorm, P, r, 1, G, B, norm, out, r, scale);
}
LK_KERNEL(lk_dora_weight_norm_bf16);

extern "C" __global__ void __launch_bounds__(kDoraThreads) lk_dora_scale_columns_bf16(
    const lk_bf16* z, const lk_bf16* magnitude, const float* norm, const lk_bf16* bias, lk_bf16* y, int M, int out) {
    lk_dora_scale_columns<lk_bf16>(z, magnitude, norm, bias, y, M, out);
}
LK_KERNEL(lk_dora_scale_columns_bf16);

extern "C" __global__ void __launch_bounds__(kDoraThreads) lk_dora_magnitude_grad_bf16(
    const lk_bf16* dy, const lk_bf16* z, const float* norm, lk_bf16* dm, int M, int out) {
    lk_dora_magnitude_grad<lk_bf16>(dy, z, norm, dm, M, out);
}
LK_KERNEL(lk_dora_magnitude_grad_bf16);

extern "C" __global__ void __launch_bounds__(kDoraThreads) lk_dora_scale_grad_bf16(
    const lk_bf16* dy, const lk_bf16* magnitude, const float* norm, lk_bf16* dz, int M, int out) {
    lk_dora_scale_grad<lk_bf16>(dy, magnitude, norm, dz, M, out);
}
LK_KERNEL(lk_dora_scale_grad_bf16);

extern "C" __global__ void __launch_bounds__(kDoraThreads) lk_dora_scale_rows_bf16(
    lk_bf16* W, const lk_bf16* magnitude, const float* norm, int out, int in, int invert) {
    lk_dora_scale_rows<lk_bf16>(W, magnitude, norm, out, in, invert);
}
LK_KERNEL(lk_dora_scale_rows_bf16);
