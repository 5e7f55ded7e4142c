// kron.cpp: the Kronecker adapter (LoKr / KronA) on the CPU (same argument order as kernels/kron.cu).
//
// Never forms kron(w1, w2) [out, in]. Per token, Y_t = s * w1 * X_t * w2^T with X_t = x[t] viewed
// [in_m, in_n] and Y_t = y[t] viewed [out_l, out_k] (lora_kernels_kron.h):
//   forward:  y = x W0^T + bias (LoRA's forward with r = 0: the packed GEMM, or W0 streamed once
//             for M <= 16); T = X w2^T for all tokens at once (x viewed [M*in_m, in_n]: one GEMM);
//             y_t += s * w1 * T_t (a batched GEMM over the tokens, accumulated into y).
//             FLOP 2*M*out*in + 2*M*in_m*out_k*(in_n + out_l); bytes: W0, x, y (read and written
//             once more), T (4*M*in_m*out_k, written and read), the factors.
//   backward: E_t = w1^T * dY_t (batched); dx = dy W0 + s * E w2 (one GEMM over all tokens, E
//             viewed [M*in_m, out_k], accumulated on the base dx); dw2 = s * E^T X (one GEMM with
//             K = M*in_m); T = X w2^T again (into the same workspace) and dw1 = s * sum_t dY_t T_t^T
//             (a batched GEMM reduced over the tokens in a fixed order).
//             FLOP 2*M*out*in (dx base) + 2*M*out_k*in_m*(out_l + in_n) (E, dx adapter) +
//             2*M*in_m*out_k*in_n (dw2) + 2*M*in_m*out_k*(in_n + out_l) (T, dw1).
//   merge:    W += s * kron(w1, w2) element by element (bound by W's traffic).
// The adapter's products are the engine's (batched_gemm.h over gemm.h): at in = out = 4096 with
// 64 x 64 factors and M = 512 they add 0.54 GFLOP to the base's 17.2 GFLOP.
#include <omp.h>

#include "batched_gemm.h"
#include "check.h"
#include "parallel.h"

namespace lk::cpu {
namespace {

struct KronDims {
    int64_t M, out_l, out_k, in_m, in_n;
    int64_t in() const { return in_m * in_n; }
    int64_t out() const { return out_l * out_k; }
    int64_t token_t() const { return in_m * out_k; }  // workspace floats per token
};

// T = X w2^T for every token: x viewed [M*in_m, in_n] times w2^T [in_n, out_k].
void project_tokens(const KronDims& d, const float* x, const float* w2, float* t) {
    batched_gemm(1, d.M * d.in_m, d.out_k, d.in_n, {x, 0, false}, {w2, 0, true}, 1.0f, 0.0f, t, 0,
                 false);
}

lk_status forward(const KronDims& d, const float* x, const float* W0, const float* bias,
                  const float* w1, const float* w2, float scale, float* t, float* y) {
    const lk_status base =
        lk_cpu_lora_forward(d.M, d.in(), d.out(), 0, x, W0, bias, nullptr, nullptr, 0.0f, 0.0f, 0, y, nullptr);
    if (base != LK_OK || scale == 0.0f) return base;  // scale 0: the base alone (a merged layer's forward)
    project_tokens(d, x, w2, t);
    // y_t += s * w1 [out_l, in_m] * T_t [in_m, out_k], y_t = y[t] viewed [out_l, out_k].
    batched_gemm(d.M, d.out_l, d.out_k, d.in_m, {w1, 0, false}, {t, d.token_t(), false}, scale, 1.0f,
                 y, d.out(), false);
    return LK_OK;
}

lk_status backward(const KronDims& d, const float* x, const float* W0, const float* w1,
                   const float* w2, const float* dy, float scale, float* e, float* dx, float* dw1,
                   float* dw2) {
    if (dx != nullptr || dw2 != nullptr)  // E_t = w1^T [in_m, out_l] * dY_t [out_l, out_k]
        batched_gemm(d.M, d.in_m, d.out_k, d.out_l, {w1, 0, true}, {dy, d.out(), false}, 1.0f, 0.0f,
                     e, d.token_t(), false);
    if (dx != nullptr) {
        const lk_status base = lk_cpu_lora_backward(d.M, d.in(), d.out(), 0, nullptr, W0, nullptr, nullptr,
                                                    nullptr, dy, 0.0f, 0.0f, 0, dx, nullptr, nullptr);
        if (base != LK_OK) return base;
        // dx viewed [M*in_m, in_n] += s * E [M*in_m, out_k] * w2 [out_k, in_n].
        batched_gemm(1, d.M * d.in_m, d.in_n, d.out_k, {e, 0, false}, {w2, 0, false}, scale, 1.0f, dx,
                     0, false);
    }
    if (dw2 != nullptr)  // dw2 = s * E^T [out_k, M*in_m] * X [M*in_m, in_n]
        batched_gemm(1, d.out_k, d.in_n, d.M * d.in_m, {e, 0, true}, {x, 0, false}, scale, 0.0f, dw2,
                     0, false);
    if (dw1 != nullptr) {  // dw1 = s * sum_t dY_t [out_l, out_k] * T_t^T [out_k, in_m]
        project_tokens(d, x, w2, e);
        batched_gemm(d.M, d.out_l, d.in_m, d.out_k, {dy, d.out(), false}, {e, d.token_t(), true}, scale,
                     0.0f, dw1, 0, true);
    }
    return LK_OK;
}

void merge(int64_t out_l, int64_t out_k, int64_t in_m, int64_t in_n, int64_t spatial, float* W,
           const float* w1, const float* w2, float scale) {
    const int64_t rows = out_l * out_k, row_length = in_m * in_n * spatial;
    const int threads = elementwise_threads(rows * row_length);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t row = 0; row < rows; ++row) {
        const int64_t i = row / out_k, p = row % out_k;
        float* w = W + row * row_length;
        const float* w2_row = w2 + p * in_n * spatial;
        for (int64_t j = 0; j < in_m; ++j) {
            const float a = scale * w1[i * in_m + j];
            float* block = w + j * in_n * spatial;
            for (int64_t e = 0; e < in_n * spatial; ++e) block[e] += a * w2_row[e];
        }
    }
}

// The checks every Kronecker export shares: non-negative factor dims.
ArgCheck& check_factor_dims(ArgCheck& check, int64_t out_l, int64_t out_k, int64_t in_m, int64_t in_n) {
    return check.nonnegative("out_l", out_l)
        .nonnegative("out_k", out_k)
        .nonnegative("in_m", in_m)
        .nonnegative("in_n", in_n);
}

}  // namespace
}  // namespace lk::cpu

using lk::cpu::ArgCheck;

LK_API lk_status lk_cpu_kron_forward(int64_t M, int64_t out_l, int64_t out_k, int64_t in_m, int64_t in_n,
                                     const float* x, const float* W0, const float* bias, const float* w1,
                                     const float* w2, float scale, float* workspace, float* y) {
    static const char* const fn = "lk_cpu_kron_forward";
    const lk::cpu::KronDims d{M, out_l, out_k, in_m, in_n};
    ArgCheck check(fn);
    check.nonnegative("M", M);
    lk::cpu::check_factor_dims(check, out_l, out_k, in_m, in_n)
        .not_null("x", x, M > 0 && d.in() > 0)
        .not_null("W0", W0, d.out() > 0 && d.in() > 0)
        .not_null("w1", w1, out_l > 0 && in_m > 0)
        .not_null("w2", w2, out_k > 0 && in_n > 0)
        .not_null("workspace", workspace, M > 0 && d.token_t() > 0)
        .not_null("y", y, M > 0 && d.out() > 0)
        .finite("scale", scale);
    if (!check.ok()) return check.status();
    return lk::cpu::guarded(fn, [&] { return lk::cpu::forward(d, x, W0, bias, w1, w2, scale, workspace, y); });
}

LK_API lk_status lk_cpu_kron_backward(int64_t M, int64_t out_l, int64_t out_k, int64_t in_m, int64_t in_n,
                                      const float* x, const float* W0, const float* w1, const float* w2,
                                      const float* dy, float scale, float* workspace, float* dx, float* dw1,
                                      float* dw2) {
    static const char* const fn = "lk_cpu_kron_backward";
    const lk::cpu::KronDims d{M, out_l, out_k, in_m, in_n};
    const bool any = dx != nullptr || dw1 != nullptr || dw2 != nullptr;
    const bool factor_grads = dw1 != nullptr || dw2 != nullptr;
    ArgCheck check(fn);
    check.nonnegative("M", M);
    lk::cpu::check_factor_dims(check, out_l, out_k, in_m, in_n)
        .not_null("dy", dy, any && M > 0 && d.out() > 0)
        .not_null("x", x, factor_grads && M > 0 && d.in() > 0)
        .not_null("W0", W0, dx != nullptr && d.out() > 0 && d.in() > 0)
        .not_null("w1", w1, (dx != nullptr || dw2 != nullptr) && out_l > 0 && in_m > 0)
        .not_null("w2", w2, (dx != nullptr || dw1 != nullptr) && out_k > 0 && in_n > 0)
        .not_null("workspace", workspace, any && M > 0 && d.token_t() > 0)
        .finite("scale", scale);
    if (!check.ok()) return check.status();
    return lk::cpu::guarded(fn, [&] {
        return lk::cpu::backward(d, x, W0, w1, w2, dy, scale, workspace, dx, dw1, dw2);
    });
}

LK_API lk_status lk_cpu_kron_merge(int64_t out_l, int64_t out_k, int64_t in_m, int64_t in_n, int64_t spatial,
                                   float* W, const float* w1, const float* w2, float scale) {
    static const char* const fn = "lk_cpu_kron_merge";
    const bool has_elements = out_l * out_k > 0 && in_m * in_n * spatial > 0;
    ArgCheck check(fn);
    lk::cpu::check_factor_dims(check, out_l, out_k, in_m, in_n)
        .nonnegative("spatial", spatial)
        .not_null("W", W, has_elements)
        .not_null("w1", w1, has_elements)
        .not_null("w2", w2, has_elements)
        .finite("scale", scale);
    if (!check.ok()) return check.status();
    return lk::cpu::guarded(fn, [&] {
        lk::cpu::merge(out_l, out_k, in_m, in_n, spatial, W, w1, w2, scale);
        return LK_OK;
    });
}
