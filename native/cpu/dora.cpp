// dora.cpp: DoRA weight norm, forward, backward and merge row scaling on the CPU (same argument
// order as kernels/dora.cu; math in native/include/lora_kernels_dora.h, REFERENCE.md §2).
//
// Weight norm, the cheapest exact way (B·A and W0 + s·B·A are never formed, REFERENCE.md §11):
//   ‖w_i‖² once per frozen W0 (row_sqnorm: one pass over W0, summed in double);
//   per step P = W0 Aᵀ [out, r] and G = A Aᵀ [r, r], two packed GEMMs (2·out·in·r + 2·r²·in FLOP,
//   bound by reading W0 once: 4·out·in bytes), then per row, in double,
//   n_i² = ‖w_i‖² + 2s·P_i·B_i + s²·B_i G B_iᵀ (out·(2r + 2r²) FLOP), clamped at 0 so rounding in
//   a near-cancelling row (s·B_i A ≈ -w_i) cannot produce a NaN.
// Forward: the fused LoRA forward (lora.cpp: one GEMM y = [x | s·u]·[W0ᵀ ; Bᵀ]) without bias
//   writes z, then one pass y = g ⊙ z + bias (8 bytes read, 4 written per element; z and y may be
//   the same buffer). The column scale is not fused into the GEMM epilogue: the engine's
//   GemmOutput has no per-column factor, and the pass costs M·out·12 bytes against the GEMM's
//   2·M·out·(in + r) FLOP (about 1 % at in = 4096).
// Backward: one pass over dy and z per column block gives dm_j = Σ_t dy·z / n_j (summed in double,
//   rows in order) and dz = dy ⊙ g; then the LoRA backward (lora.cpp) on dz gives dx, dA, dB.
//   A failure inside the reused LoRA export keeps that export's status and message.
//   Extra over LoRA: M·out·12 bytes and an M·out fp32 temporary.
// Scale rows (merge/unmerge): W[i,:] *= m_i/n_i or n_i/m_i, one pass over W.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "check.h"
#include "common.cuh"
#include "gemm.h"
#include "parallel.h"

namespace lk::cpu {
namespace {

// Columns of an [M, out] matrix one thread owns in the backward's reduction pass: a multiple of
// the widest vector, so each row's slice is a contiguous, vectorizable run.
constexpr int64_t kColumnBlock = 256;

void row_sqnorm(int64_t out, int64_t in, const float* W0, float* sqnorm) {
    const int threads = elementwise_threads(out * in);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t i = 0; i < out; ++i) {
        const float* w = W0 + i * in;
        double sum = 0.0;
#pragma omp simd reduction(+ : sum)
        for (int64_t k = 0; k < in; ++k) sum += (double)w[k] * (double)w[k];
        sqnorm[i] = (float)sum;
    }
}

// G = A Aᵀ [r, r] by one packed GEMM.
std::vector<float> gram(int64_t in, int64_t r, const float* A) {
    std::vector<float> G((size_t)(r * r));
    GemmOutput g_out;
    g_out.c = G.data();
    g_out.ldc = r;
    gemm(r, r, Operand(matrix_piece(A, in, false, in)), Operand(matrix_piece(A, in, true, in)),
         g_out);
    return G;
}

// n_i = sqrt(max(0, ‖w_i‖² + 2s·P_i·B_i + s²·B_i G B_iᵀ)) in double per row; P_i[a] is
// P[i·p_row + a·p_col], so P may be [out, r] (p_row = r, p_col = 1) or Pᵀ [r, out] (1, out).
void combine_norm(int64_t out, int64_t r, const float* w0_sqnorm, const float* P, int64_t p_row,
                  int64_t p_col, const float* G, const float* B, float scale, float* norm) {
    const double s = scale;
    const int threads = elementwise_threads(out * r * r);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t i = 0; i < out; ++i) {
        const float* b = B + i * r;
        const float* p = P + i * p_row;
        double cross = 0.0, quadratic = 0.0;
        for (int64_t a = 0; a < r; ++a) {
            cross += (double)p[a * p_col] * (double)b[a];
            double gb = 0.0;
            for (int64_t c = 0; c < r; ++c) gb += (double)G[(size_t)(a * r + c)] * (double)b[c];
            quadratic += (double)b[a] * gb;
        }
        const double squared = (double)w0_sqnorm[i] + 2.0 * s * cross + s * s * quadratic;
        norm[i] = (float)std::sqrt(std::max(0.0, squared));
    }
}

void weight_norm(int64_t out, int64_t in, int64_t r, const float* W0, const float* w0_sqnorm,
                 const float* A, const float* B, float scale, float* norm) {
    std::vector<float> P((size_t)(out * r));
    GemmOutput p_out;
    p_out.c = P.data();
    p_out.ldc = r;
    gemm(out, r, Operand(matrix_piece(W0, in, false, in)), Operand(matrix_piece(A, in, true, in)),
         p_out);
    const std::vector<float> G = gram(in, r, A);
    combine_norm(out, r, w0_sqnorm, P.data(), r, 1, G.data(), B, scale, norm);
}

// y = g ⊙ z + bias, g = magnitude / norm per column; z may be y.
void scale_columns(int64_t M, int64_t out, const float* z, const float* magnitude,
                   const float* norm, const float* bias, float* y) {
    std::vector<float> g((size_t)out);
    for (int64_t j = 0; j < out; ++j) g[(size_t)j] = magnitude[j] / norm[j];
    const float* gp = g.data();
    const int threads = elementwise_threads(M * out);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t t = 0; t < M; ++t) {
        const float* zt = z + t * out;
        float* yt = y + t * out;
        if (bias != nullptr) {
#pragma omp simd
            for (int64_t j = 0; j < out; ++j) yt[j] = gp[j] * zt[j] + bias[j];
        } else {
#pragma omp simd
            for (int64_t j = 0; j < out; ++j) yt[j] = gp[j] * zt[j];
        }
    }
}

lk_status forward(int64_t M, int64_t in, int64_t out, int64_t r, const float* x, const float* W0,
             const float* bias, const float* A, const float* B, float scale,
             const float* magnitude, const float* norm, float* y, float* u, float* z) {
    float* pre_scale = z != nullptr ? z : y;
    const lk_status status = lk_cpu_lora_forward(M, in, out, r, x, W0, nullptr, A, B, scale, 0.0f,
                                                 0, pre_scale, u);
    if (status != LK_OK) return status;
    scale_columns(M, out, pre_scale, magnitude, norm, bias, y);
    return LK_OK;
}

// dm_j = Σ_t dy[t,j]·z[t,j] / n_j (when dmagnitude) and dz = dy ⊙ g (when dz), one pass.
void magnitude_grad_and_scale(int64_t M, int64_t out, const float* dy, const float* z,
                              const float* magnitude, const float* norm, float* dmagnitude,
                              float* dz) {
    const int64_t blocks = (out + kColumnBlock - 1) / kColumnBlock;
    const int threads = (int)std::max<int64_t>(
        1, std::min<int64_t>({(int64_t)thread_count(), blocks, M * out / kElementsPerThread}));
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t block = 0; block < blocks; ++block) {
        const int64_t j0 = block * kColumnBlock;
        const int64_t width = std::min(kColumnBlock, out - j0);
        double sums[kColumnBlock] = {};
        float g[kColumnBlock];
        if (dz != nullptr)
            for (int64_t j = 0; j < width; ++j) g[j] = magnitude[j0 + j] / norm[j0 + j];
        for (int64_t t = 0; t < M; ++t) {
            const float* dyt = dy + t * out + j0;
            if (dmagnitude != nullptr) {
                const float* zt = z + t * out + j0;
#pragma omp simd
                for (int64_t j = 0; j < width; ++j) sums[j] += (double)dyt[j] * (double)zt[j];
            }
            if (dz != nullptr) {
                float* dzt = dz + t * out + j0;
#pragma omp simd
                for (int64_t j = 0; j < width; ++j) dzt[j] = dyt[j] * g[j];
            }
        }
        if (dmagnitude != nullptr)
            for (int64_t j = 0; j < width; ++j)
                dmagnitude[j0 + j] = (float)(sums[j] / (double)norm[j0 + j]);
    }
}

lk_status backward(int64_t M, int64_t in, int64_t out, int64_t r, const float* x, const float* W0,
              const float* A, const float* B, const float* u, const float* z, const float* dy,
              float scale, const float* magnitude, const float* norm, float* dx, float* dA,
              float* dB, float* dmagnitude) {
    const bool lora = dx != nullptr || dA != nullptr || dB != nullptr;
    // Every element of dz is written by the pass below, so it is not zero-filled first.
    std::unique_ptr<float[]> dz(lora ? new float[(size_t)(M * out)] : nullptr);
    magnitude_grad_and_scale(M, out, dy, z, magnitude, norm, dmagnitude, dz.get());
    if (!lora) return LK_OK;
    return lk_cpu_lora_backward(M, in, out, r, x, W0, A, B, u, dz.get(), scale, 0.0f, 0, dx, dA,
                                dB);
}

}  // namespace
}  // namespace lk::cpu

using lk::cpu::ArgCheck;

LK_API lk_status lk_cpu_dora_row_sqnorm(int64_t out, int64_t in, const float* W0, float* sqnorm) {
    static const char* const fn = "lk_cpu_dora_row_sqnorm";
    ArgCheck check(fn);
    check.nonnegative("out", out)
        .nonnegative("in", in)
        .not_null("W0", W0, out > 0 && in > 0)
        .not_null("sqnorm", sqnorm, out > 0);
    if (!check.ok()) return check.status();
    return lk::cpu::guarded(fn, [&] {
        lk::cpu::row_sqnorm(out, in, W0, sqnorm);
        return LK_OK;
    });
}

LK_API lk_status lk_cpu_dora_weight_norm(int64_t out, int64_t in, int64_t r, const float* W0,
                                         const float* w0_sqnorm, const float* A, const float* B,
                                         float scale, float* norm) {
    static const char* const fn = "lk_cpu_dora_weight_norm";
    ArgCheck check(fn);
    check.nonnegative("out", out)
        .nonnegative("in", in)
        .at_least("r", (double)r, 1.0)
        .not_null("W0", W0, out > 0 && in > 0)
        .not_null("w0_sqnorm", w0_sqnorm, out > 0)
        .not_null("A", A, in > 0)
        .not_null("B", B, out > 0)
        .not_null("norm", norm, out > 0)
        .finite("scale", scale);
    if (!check.ok()) return check.status();
    return lk::cpu::guarded(fn, [&] {
        lk::cpu::weight_norm(out, in, r, W0, w0_sqnorm, A, B, scale, norm);
        return LK_OK;
    });
}

LK_API lk_status lk_cpu_dora_forward(int64_t M, int64_t in, int64_t out, int64_t r,
                                     const float* x, const float* W0, const float* bias,
                                     const float* A, const float* B, float scale,
                                     const float* magnitude, const float* norm, float* y, float* u,
                                     float* z) {
    static const char* const fn = "lk_cpu_dora_forward";
    ArgCheck check(fn);
    check.nonnegative("M", M)
        .nonnegative("in", in)
        .nonnegative("out", out)
        .at_least("r", (double)r, 1.0)
        .not_null("x", x, M > 0 && in > 0)
        .not_null("W0", W0, out > 0 && in > 0)
        .not_null("A", A, in > 0)
        .not_null("B", B, out > 0)
        .not_null("magnitude", magnitude, out > 0)
        .not_null("norm", norm, out > 0)
        .not_null("y", y, M > 0 && out > 0)
        .not_null("u", u, M > 0);
    if (!check.ok()) return check.status();
    return lk::cpu::guarded(fn, [&] {
        return lk::cpu::forward(M, in, out, r, x, W0, bias, A, B, scale, magnitude, norm, y, u, z);
    });
}

LK_API lk_status lk_cpu_dora_backward(int64_t M, int64_t in, int64_t out, int64_t r,
                                      const float* x, const float* W0, const float* A,
                                      const float* B, const float* u, const float* z,
                                      const float* dy, float scale, const float* magnitude,
                                      const float* norm, float* dx, float* dA, float* dB,
                                      float* dmagnitude) {
    static const char* const fn = "lk_cpu_dora_backward";
    const bool want_lora = dx != nullptr || dA != nullptr || dB != nullptr;
    const bool any = want_lora || dmagnitude != nullptr;
    ArgCheck check(fn);
    check.nonnegative("M", M)
        .nonnegative("in", in)
        .nonnegative("out", out)
        .at_least("r", (double)r, 1.0)
        .not_null("dy", dy, any && M > 0 && out > 0)
        .not_null("magnitude", magnitude, want_lora && out > 0)
        .not_null("norm", norm, any && out > 0)
        .not_null("z", z, dmagnitude != nullptr && M > 0 && out > 0)
        .not_null("x", x, dA != nullptr && M > 0 && in > 0)
        .not_null("W0", W0, dx != nullptr && out > 0 && in > 0)
        .not_null("A", A, dx != nullptr && in > 0)
        .not_null("B", B, (dx != nullptr || dA != nullptr) && out > 0)
        .not_null("u", u, dB != nullptr && M > 0);
    if (!check.ok()) return check.status();
    return lk::cpu::guarded(fn, [&] {
        return lk::cpu::backward(M, in, out, r, x, W0, A, B, u, z, dy, scale, magnitude, norm, dx,
                                 dA, dB, dmagnitude);
    });
}

LK_API lk_status lk_cpu_dora_scale_rows(int64_t out, int64_t in, float* W, const float* magnitude,
                                        const float* norm, int32_t invert) {
    static const char* const fn = "lk_cpu_dora_scale_rows";
    ArgCheck check(fn);
    check.nonnegative("out", out)
        .nonnegative("in", in)
        .not_null("W", W, out > 0 && in > 0)
        .not_null("magnitude", magnitude, out > 0)
        .not_null("norm", norm, out > 0);
    if (!check.ok()) return check.status();
    if (invert != 0 && invert != 1)
        return lk::fail(LK_ERR_INVALID_ARGUMENT, "%s: invert = %d is neither 0 nor 1", fn, invert);
    const int threads = lk::cpu::elementwise_threads(out * in);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t i = 0; i < out; ++i) {
        const float factor = invert ? norm[i] / magnitude[i] : magnitude[i] / norm[i];
        float* w = W + i * in;
#pragma omp simd
        for (int64_t k = 0; k < in; ++k) w[k] *= factor;
    }
    return LK_OK;
}

LK_API lk_status lk_cpu_dora_weight_norm_pt(int64_t out, int64_t in, int64_t r,
                                            const float* w0_sqnorm, const float* Pt,
                                            const float* A, const float* B, float scale,
                                            float* norm) {
    static const char* const fn = "lk_cpu_dora_weight_norm_pt";
    ArgCheck check(fn);
    check.nonnegative("out", out)
        .nonnegative("in", in)
        .at_least("r", (double)r, 1.0)
        .not_null("w0_sqnorm", w0_sqnorm, out > 0)
        .not_null("Pt", Pt, out > 0)
        .not_null("A", A, in > 0)
        .not_null("B", B, out > 0)
        .not_null("norm", norm, out > 0)
        .finite("scale", scale);
    if (!check.ok()) return check.status();
    return lk::cpu::guarded(fn, [&] {
        const std::vector<float> G = lk::cpu::gram(in, r, A);
        lk::cpu::combine_norm(out, r, w0_sqnorm, Pt, 1, out, G.data(), B, scale, norm);
        return LK_OK;
    });
}

LK_API lk_status lk_cpu_dora_scale_columns(int64_t M, int64_t out, const float* z,
                                           const float* magnitude, const float* norm,
                                           const float* bias, float* y) {
    static const char* const fn = "lk_cpu_dora_scale_columns";
    ArgCheck check(fn);
    check.nonnegative("M", M)
        .nonnegative("out", out)
        .not_null("z", z, M > 0 && out > 0)
        .not_null("magnitude", magnitude, out > 0)
        .not_null("norm", norm, out > 0)
        .not_null("y", y, M > 0 && out > 0);
    if (!check.ok()) return check.status();
    return lk::cpu::guarded(fn, [&] {
        lk::cpu::scale_columns(M, out, z, magnitude, norm, bias, y);
        return LK_OK;
    });
}

LK_API lk_status lk_cpu_dora_scale_grad(int64_t M, int64_t out, const float* dy, const float* z,
                                        const float* magnitude, const float* norm,
                                        float* dmagnitude, float* dz) {
    static const char* const fn = "lk_cpu_dora_scale_grad";
    ArgCheck check(fn);
    check.nonnegative("M", M)
        .nonnegative("out", out)
        .not_null("dy", dy, M > 0 && out > 0)
        .not_null("z", z, dmagnitude != nullptr && M > 0 && out > 0)
        .not_null("magnitude", magnitude, dz != nullptr && out > 0)
        .not_null("norm", norm, out > 0);
    if (!check.ok()) return check.status();
    return lk::cpu::guarded(fn, [&] {
        lk::cpu::magnitude_grad_and_scale(M, out, dy, z, magnitude, norm, dmagnitude, dz);
        return LK_OK;
    });
}

LK_API lk_status lk_cpu_dora_dropout(int64_t n, const float* x, float p, uint64_t seed, float* y) {
    static const char* const fn = "lk_cpu_dora_dropout";
    ArgCheck check(fn);
    check.nonnegative("n", n).not_null("x", x, n > 0).not_null("y", y, n > 0);
    if (!check.ok()) return check.status();
    if (!(p >= 0.0f && p < 1.0f))
        return lk::fail(LK_ERR_INVALID_ARGUMENT, "%s: p = %g is not in [0, 1)", fn, (double)p);
    const int threads = lk::cpu::elementwise_threads(n);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t i = 0; i < n; ++i) y[i] = x[i] * lk_dropout_factor(seed, (lk_u64)i, p);
    return LK_OK;
}
