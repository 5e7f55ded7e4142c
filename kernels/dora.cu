// dora.cu: DoRA's own kernels (REFERENCE.md §2); the GEMMs are lora.cu's. Semantics are those of
// lk_cpu_dora_* (native/include/lora_kernels_dora.h); docs/KERNELS.md gives each launch geometry.
//
// How a DoRA step runs on the GPU (GpuBackend.Dora.cs; m = magnitude, n = weight norm, g = m / n):
//   once per frozen W0:  lk_dora_row_sqnorm_T      q_i = ‖w_i‖² (double sum, rounded once)  [out] fp32
//   weight norm:         lk_dora_project_T(W0, A)  P = W0 Aᵀ                            [out, r] double
//                        lk_dora_project_T(A, A)   G = A Aᵀ, and with absolute = 1 H = |A||A|ᵀ [r, r]
//                        lk_dora_weight_norm_T     the expansion n_i² = q_i + 2s·P_i·B_i + s²·B_i G B_iᵀ
//                                                  in double and its certificate; uncertified rows listed
//                        (C# reads back the count; if any) lk_dora_row_norm_T, one block per listed row
//   forward:             lora forward without bias  z = x W0ᵀ + s·u Bᵀ, u = x Aᵀ        (lora.cu)
//                        lk_dora_scale_columns_T   y = g ⊙ z + bias (z kept for the backward)
//   backward:            lk_dora_magnitude_grad_T  dm_j = Σ_t dy[t,j]·z[t,j] / n_j
//                        lk_dora_scale_grad_T      dz = dy ⊙ g, then the LoRA backward on dz (lora.cu)
//   merge / unmerge:     lk_dora_merge_T           W_i <- (m_i/n_i)·(W_i + s·B_i·A), or back, in double
//
// The weight norm is accurate relative to the true norm on every row (issue 14). The expansion
// never forms B·A or W0 + s·B·A (REFERENCE.md §11), but where W0_i and s·B_i·A nearly cancel its
// terms (size ~q_i) cancel to something tiny, so its rounding must be small against n_i², not q_i:
//   * project: each lane's products go into an fp32 partial sum of at most kPartialTerms = 64 terms
//     (LK_DORA_PARTIAL_TERMS), flushed into a double; the warp reduces in double. P and G then err
//     by at most γ_64 = 64·2⁻²⁴ relative to Σ|x·a| (an fp32 accumulation over in = 4096 could err
//     by γ_4096), at fp32 FMA speed: doubles only at the flushes and the reduction, so consumer GPUs
//     (fp64 at 1/64 rate) pay little for it.
//   * weight_norm: the expansion in double and a rigorous bound of its error,
//     E_i = u·q_i + γ_64·(2|s|·√q_i·β_i + s²·β_i²) + (in + 2r + 16)·2⁻⁵³·(√q_i + |s|β_i)²,
//     β_i = sqrt(|B_i| H |B_i|ᵀ) = ‖|B_i|·|A|‖. A row with n_i² >= E_i·(1 + 1/τ), τ = 1e-4
//     (LK_DORA_NORM_TOLERANCE), is certified within τ·n_i and written; any other row is appended to
//     a list (atomic counter: the list's order varies, each row's result does not).
//   * row_norm: one block per listed row recomputes n_i = ‖w_i + s·B_i·A‖ directly in double
//     (v_k = w_k + s·Σ_a B_a·A_ak, each product exact), error <= (r + 2)·2⁻⁵³·‖|w_i| + |s|·|B_i|·|A|‖;
//     an exactly zero row is counted (m/n is undefined there; the C# layer refuses it).
//   Cost: the projection reads W0 once and A once per row from L1/L2 (2·out·in·r FLOP, as the fp32
//   P it replaces); the list count is read back to the host (one synchronisation per norm); a
//   recomputed row costs in·r double FMAs, so only the rare cancelling rows pay fp64 rates.
//
// Entry points (T = f32 | bf16 storage of W0, A, B, magnitude, bias, z, y, dy, dz, dm, W; q and the
// norm are fp32, P, G and H double; arithmetic fp32 unless stated):
//   lk_dora_row_sqnorm_T       one warp per W0 row, lanes stride the row, double sum and warp tree.
//       grid ceil(out/8), block 256.     FLOPs 2·out·in; bytes s·out·in + 4·out.
//   lk_dora_project_T          P[i, a] = Σ_k X[i,k]·A[a,k] (of |X|, |A| when absolute): one warp per
//       row of X, 8 columns of P per pass over the row. grid ceil(rows/8), block 256.
//       FLOPs 2·rows·in·r; bytes s·(rows·in + rows·r·in/8 from L1/L2) + 8·rows·r.
//   lk_dora_weight_norm_T      one thread per row, double: P_i·B_i, B_i G B_iᵀ, |B_i| H |B_i|ᵀ.
//       grid ceil(out/256), block 256. FLOPs out·(2r + 4r²); bytes 8·(out·r + 2r²) + s·out·r + 8·out.
//   lk_dora_row_norm_T         block b recomputes listed row rows[b] in double; block tree sum.
//       grid = the list's length, block 256. FLOPs 2·in·r per row (double); bytes s·(in + r·in + r).
//   lk_dora_dropout_f32        y = x ⊙ lk_dropout_factor(seed, i, p) (DoRA's training dropout path
//       materialises dropout(x) for its second base product, and masks dx), grid-stride.
//       bytes 8·n; one hash per element.
//   lk_dora_scale_columns_T    y = g ⊙ z + bias, grid-stride over M·out; z may be y (in place).
//       grid min(ceil(M·out/256), 8·SMs), block 256. bytes s·(2·M·out + 2·out) + 4·out.
//   lk_dora_magnitude_grad_T   block = 32 columns × 8 row groups: lanes take consecutive columns
//       (coalesced rows of dy and z), the 8 warps stride the rows, a shared [8][32] sum finishes.
//       grid ceil(out/32), block 256. FLOPs 2·M·out; bytes s·(2·M·out + out) + 4·out.
//   lk_dora_scale_grad_T       dz = dy ⊙ g, grid-stride as scale_columns. bytes s·(2·M·out + out) + 4·out.
//   lk_dora_merge_T            W_i <- (m_i/n_i)·(W_i + s·B_i·A) (invert = 0) or (n_i/m_i)·W_i - s·B_i·A
//       (invert = 1), each element in double (r double FMAs) and rounded once to fp32 (then to T),
//       grid-stride.
//       FLOPs 2·out·in·r (double); bytes 2·s·out·in + s·(r·in + out·r + out) + 4·out.
//
// Assumptions: row-major dense tensors, every dimension < 2^31; element counts (M·out, out·in) may
// reach 2^31 and beyond, so every flat index and grid-stride loop is 64-bit; no alignment required. The scale
// and merge kernels take the norm as given: Ops.Dora refuses a zero norm before they run.
#include "common.cuh"
#include "row_projection.cuh"

namespace {

constexpr int kDoraThreads = 256;
constexpr int kDoraWarps = kDoraThreads / 32;
constexpr int kGradColumns = 32;  // magnitude_grad: columns per block, one per lane
constexpr int kPartialTerms = kProjectPartialTerms;  // LK_DORA_PARTIAL_TERMS (row_projection.cuh)
constexpr double kNormTolerance = 1e-4;  // LK_DORA_NORM_TOLERANCE: τ
constexpr double kF32Unit = 1.0 / 16777216.0;
constexpr double kGammaPartial = kPartialTerms * kF32Unit / (1.0 - kPartialTerms * kF32Unit);
static_assert(kDoraThreads % 32 == 0, "whole warps");
static_assert(kGradColumns * kDoraWarps == kDoraThreads, "magnitude_grad: 32 columns x 8 row groups");

template <class T>
LK_DEVICE void lk_dora_row_sqnorm(const T* W0, float* sqnorm, int out, int in) {
    const int lane = (int)threadIdx.x & 31;
    const int row = (int)blockIdx.x * kDoraWarps + (int)threadIdx.x / 32;
    if (row >= out) return;  // warp-uniform; no barrier follows
    const T* w = W0 + (lk_i64)row * in;
    double sum = 0.0;
    for (int k = lane; k < in; k += 32) {
        const double v = lk_load(w + k);
        sum += v * v;  // exact product of an fp32 value
    }
    sum = lk_warp_sum_f64(sum);
    if (lane == 0) sqnorm[row] = (float)sum;
}

// P[row, a] = Σ_k X[row, k]·A[a, k] (absolute values when `absolute`), one warp per row of X
// (row_projection.cuh).
template <class T>
LK_DEVICE void lk_dora_project(const T* X, const T* A, double* P, int rows, int in, int r, int absolute) {
    const int row = (int)blockIdx.x * kDoraWarps + (int)threadIdx.x / 32;
    if (row >= rows) return;  // warp-uniform; no barrier follows
    const T* x = X + (lk_i64)row * in;
    lk_project_row([&](int k) { return lk_load(x + k); }, A, P + (lk_i64)row * r, in, r, absolute != 0);
}

// The certified expansion of row `row` (lora_kernels_dora.h): the norm when certified, else the row
// is appended to `rows` (counts[0] holds the list's length).
template <class T>
LK_DEVICE void lk_dora_weight_norm(const float* w0_sqnorm, const double* P, const double* G, const double* H,
                                   const T* B, float* norm, int* rows, int* counts, int out, int in, int r,
                                   float scale) {
    const int row = (int)blockIdx.x * kDoraThreads + (int)threadIdx.x;
    if (row >= out) return;
    const T* b = B + (lk_i64)row * r;
    const double* p = P + (lk_i64)row * r;
    double cross = 0.0, quadratic = 0.0, beta2 = 0.0;
    for (int a = 0; a < r; ++a) {
        const double ba = lk_load(b + a);
        cross += p[a] * ba;
        double gb = 0.0, hb = 0.0;
        for (int c = 0; c < r; ++c) {
            const double bc = lk_load(b + c);
            gb += G[a * r + c] * bc;
            hb += H[a * r + c] * (bc < 0.0 ? -bc : bc);
        }
        quadratic += ba * gb;
        beta2 += (ba < 0.0 ? -ba : ba) * hb;
    }
    const double s = scale, q = w0_sqnorm[row];
    const double squared = q + 2.0 * s * cross + s * s * quadratic;
    const double root_q = sqrt(q > 0.0 ? q : 0.0), sb = (s < 0.0 ? -s : s) * sqrt(beta2);
    const double terms = (root_q + sb) * (root_q + sb);
    const double bound = (1.0 + 1.0 / 1024.0) * (kF32Unit * q + kGammaPartial * (2.0 * root_q * sb + sb * sb)) +
                         (double)(in + 2 * r + 16) * (1.0 / 9007199254740992.0) * terms;
    if (squared > 0.0 && squared >= bound * (1.0 + 1.0 / kNormTolerance)) {
        norm[row] = (float)sqrt(squared);
    } else {
        rows[atomicAdd(counts, 1)] = row;
    }
}

// Block b: n = ‖w + s·B_row·A‖ for row = rows[b], in double (each B·A product exact); counts[1]
// counts the rows whose norm is exactly 0.
template <class T>
LK_DEVICE void lk_dora_row_norm(const T* W0, const T* A, const T* B, const int* rows, int* counts, float* norm,
                                int in, int r, float scale) {
    LK_SHARED(double, warp_sums, [kDoraWarps]);
    const int row = rows[blockIdx.x];
    const T* w = W0 + (lk_i64)row * in;
    const T* b = B + (lk_i64)row * r;
    double sum = 0.0;
    for (int k = (int)threadIdx.x; k < in; k += kDoraThreads) {
        double ba = 0.0;
        for (int a = 0; a < r; ++a) ba += (double)lk_load(b + a) * (double)lk_load(A + (lk_i64)a * in + k);
        const double v = (double)lk_load(w + k) + (double)scale * ba;
        sum += v * v;
    }
    sum = lk_warp_sum_f64(sum);
    if (((int)threadIdx.x & 31) == 0) warp_sums[threadIdx.x / 32] = sum;
    __syncthreads();
    if (threadIdx.x == 0) {
        double total = 0.0;
        for (int i = 0; i < kDoraWarps; ++i) total += warp_sums[i];
        norm[row] = (float)sqrt(total);
        if (total == 0.0) atomicAdd(counts + 1, 1);
    }
}

// y = x ⊙ mask: lk_dropout_factor(seed, i, p) on flat element i (the LoRA kernels' mask for x [M, in]).
LK_DEVICE void lk_dora_dropout(const float* x, float* y, int n, float p, lk_u64 seed) {
    for (lk_i64 i = lk_grid_first(); i < n; i += lk_grid_stride()) y[i] = x[i] * lk_dropout_factor(seed, (lk_u64)i, p);
}

template <class T>
LK_DEVICE void lk_dora_scale_columns(const T* z, const T* magnitude, const float* norm, const T* bias, T* y, int M,
                                     int out) {
    const lk_i64 total = (lk_i64)M * out;
    for (lk_i64 i = lk_grid_first(); i < total; i += lk_grid_stride()) {
        const int j = (int)(i % out);
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
        for (int t = group; t < M; t += kDoraWarps) {
            const lk_i64 i = (lk_i64)t * out + j;
            sum += lk_load(dy + i) * lk_load(z + i);
        }
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
    const lk_i64 total = (lk_i64)M * out;
    for (lk_i64 i = lk_grid_first(); i < total; i += lk_grid_stride()) {
        const int j = (int)(i % out);
        lk_store(dz + i, lk_load(dy + i) * (lk_load(magnitude + j) / norm[j]));
    }
}

// W_i <- (m_i/n_i)·(W_i + s·B_i·A) (invert = 0) or (n_i/m_i)·W_i - s·B_i·A (invert = 1), in double.
template <class T>
LK_DEVICE void lk_dora_merge(T* W, const T* A, const T* B, const T* magnitude, const float* norm, int out, int in,
                             int r, float scale, int invert) {
    const lk_i64 total = (lk_i64)out * in;
    for (lk_i64 i = lk_grid_first(); i < total; i += lk_grid_stride()) {
        const lk_i64 row = i / in, k = i - row * in;
        double ba = 0.0;
        for (int a = 0; a < r; ++a) ba += (double)lk_load(B + row * r + a) * (double)lk_load(A + (lk_i64)a * in + k);
        const double m = lk_load(magnitude + row), n = norm[row], s = scale, w = lk_load(W + i);
        lk_store(W + i, (float)(invert ? (n / m) * w - s * ba : (m / n) * (w + s * ba)));
    }
}

}  // namespace

// ---- entry points: thin wrappers instantiating each template for fp32 and bf16 storage -----------
extern "C" __global__ void __launch_bounds__(kDoraThreads) lk_dora_row_sqnorm_f32(
    const float* W0, float* sqnorm, int out, int in) {
    lk_dora_row_sqnorm<float>(W0, sqnorm, out, in);
}
LK_KERNEL(lk_dora_row_sqnorm_f32);

extern "C" __global__ void __launch_bounds__(kDoraThreads) lk_dora_project_f32(
    const float* X, const float* A, double* P, int rows, int in, int r, int absolute) {
    lk_dora_project<float>(X, A, P, rows, in, r, absolute);
}
LK_KERNEL(lk_dora_project_f32);

extern "C" __global__ void __launch_bounds__(kDoraThreads) lk_dora_weight_norm_f32(
    const float* w0_sqnorm, const double* P, const double* G, const double* H, const float* B, float* norm, int* rows,
    int* counts, int out, int in, int r, float scale) {
    lk_dora_weight_norm<float>(w0_sqnorm, P, G, H, B, norm, rows, counts, out, in, r, scale);
}
LK_KERNEL(lk_dora_weight_norm_f32);

extern "C" __global__ void __launch_bounds__(kDoraThreads) lk_dora_row_norm_f32(
    const float* W0, const float* A, const float* B, const int* rows, int* counts, float* norm, int in, int r,
    float scale) {
    lk_dora_row_norm<float>(W0, A, B, rows, counts, norm, in, r, scale);
}
LK_KERNEL(lk_dora_row_norm_f32);

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

extern "C" __global__ void __launch_bounds__(kDoraThreads) lk_dora_merge_f32(
    float* W, const float* A, const float* B, const float* magnitude, const float* norm, int out, int in, int r,
    float scale, int invert) {
    lk_dora_merge<float>(W, A, B, magnitude, norm, out, in, r, scale, invert);
}
LK_KERNEL(lk_dora_merge_f32);

extern "C" __global__ void __launch_bounds__(kDoraThreads) lk_dora_row_sqnorm_bf16(
    const lk_bf16* W0, float* sqnorm, int out, int in) {
    lk_dora_row_sqnorm<lk_bf16>(W0, sqnorm, out, in);
}
LK_KERNEL(lk_dora_row_sqnorm_bf16);

extern "C" __global__ void __launch_bounds__(kDoraThreads) lk_dora_project_bf16(
    const lk_bf16* X, const lk_bf16* A, double* P, int rows, int in, int r, int absolute) {
    lk_dora_project<lk_bf16>(X, A, P, rows, in, r, absolute);
}
LK_KERNEL(lk_dora_project_bf16);

extern "C" __global__ void __launch_bounds__(kDoraThreads) lk_dora_weight_norm_bf16(
    const float* w0_sqnorm, const double* P, const double* G, const double* H, const lk_bf16* B, float* norm,
    int* rows, int* counts, int out, int in, int r, float scale) {
    lk_dora_weight_norm<lk_bf16>(w0_sqnorm, P, G, H, B, norm, rows, counts, out, in, r, scale);
}
LK_KERNEL(lk_dora_weight_norm_bf16);

extern "C" __global__ void __launch_bounds__(kDoraThreads) lk_dora_row_norm_bf16(
    const lk_bf16* W0, const lk_bf16* A, const lk_bf16* B, const int* rows, int* counts, float* norm, int in, int r,
    float scale) {
    lk_dora_row_norm<lk_bf16>(W0, A, B, rows, counts, norm, in, r, scale);
}
LK_KERNEL(lk_dora_row_norm_bf16);

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

extern "C" __global__ void __launch_bounds__(kDoraThreads) lk_dora_merge_bf16(
    lk_bf16* W, const lk_bf16* A, const lk_bf16* B, const lk_bf16* magnitude, const float* norm, int out, int in,
    int r, float scale, int invert) {
    lk_dora_merge<lk_bf16>(W, A, B, magnitude, norm, out, in, r, scale, invert);
}
LK_KERNEL(lk_dora_merge_bf16);
