// moe.cpp: the mixture-of-experts steps around the segmented products on the CPU, the counterpart of
// kernels/moe.cu (lora_kernels_moe.h). All are memory-bound row copies, weighted row sums and
// element-wise activations: plain loops the compiler vectorizes, on OpenMP threads over rows (each
// output row written by one thread, its terms added in a fixed order, so results do not depend on the
// thread count).
//   gather            bytes 8·P·width
//   combine           bytes 4·(k + 1)·T·width; FLOP 2·k·T·width
//   combine_backward  bytes 4·3·P·width (d_o and the dgates dot products); FLOP 3·P·width
//   swiglu            bytes 12·n; backward 20·n (two exponentials per element)
#include <omp.h>

#include <cstdint>

#include "activations.cuh"
#include "check.h"
#include "parallel.h"

using lk::cpu::ArgCheck;
using lk::cpu::elementwise_threads;

LK_API lk_status lk_cpu_moe_gather(int64_t P, int64_t width, const float* x, const int32_t* tokens, float* xs) {
    ArgCheck check("lk_cpu_moe_gather");
    check.nonnegative("P", P)
        .nonnegative("width", width)
        .not_null("x", x, P > 0 && width > 0)
        .not_null("tokens", tokens, P > 0)
        .not_null("xs", xs, P > 0 && width > 0);
    if (!check.ok()) return check.status();
    const int threads = elementwise_threads(P * width);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t p = 0; p < P; ++p) {
        const float* source = x + (int64_t)tokens[p] * width;
        float* target = xs + p * width;
        for (int64_t i = 0; i < width; ++i) target[i] = source[i];
    }
    return LK_OK;
}

LK_API lk_status lk_cpu_moe_combine(int64_t T, int64_t k, int64_t width, const float* o, const int32_t* positions,
                                    const float* gates, const float* bias, float* y) {
    ArgCheck check("lk_cpu_moe_combine");
    check.nonnegative("T", T)
        .nonnegative("k", k)
        .nonnegative("width", width)
        .not_null("o", o, T > 0 && k > 0 && width > 0)
        .not_null("positions", positions, T > 0 && k > 0)
        .not_null("y", y, T > 0 && width > 0);
    if (!check.ok()) return check.status();
    const int threads = elementwise_threads(T * k * width);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t t = 0; t < T; ++t) {
        float* row = y + t * width;
        for (int64_t i = 0; i < width; ++i) row[i] = bias != nullptr ? bias[i] : 0.0f;
        for (int64_t j = 0; j < k; ++j) {
            const int64_t p = positions[t * k + j];
            const float g = gates != nullptr ? gates[p] : 1.0f;
            const float* source = o + p * width;
            for (int64_t i = 0; i < width; ++i) row[i] += g * source[i];
        }
    }
    return LK_OK;
}

LK_API lk_status lk_cpu_moe_combine_backward(int64_t P, int64_t width, const float* dy, const float* o,
                                             const int32_t* tokens, const float* gates, float* d_o, float* dgates) {
    ArgCheck check("lk_cpu_moe_combine_backward");
    check.nonnegative("P", P)
        .nonnegative("width", width)
        .not_null("dy", dy, P > 0 && width > 0)
        .not_null("tokens", tokens, P > 0)
        .not_null("gates", gates, d_o != nullptr && P > 0)
        .not_null("o", o, dgates != nullptr && P > 0 && width > 0);
    if (!check.ok()) return check.status();
    const int threads = elementwise_threads(P * width);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t p = 0; p < P; ++p) {
        const float* g = dy + (int64_t)tokens[p] * width;
        if (d_o != nullptr)
            for (int64_t i = 0; i < width; ++i) d_o[p * width + i] = gates[p] * g[i];
        if (dgates != nullptr) {
            double sum = 0.0;  // one dot product per assignment, summed in double in index order
            for (int64_t i = 0; i < width; ++i) sum += (double)g[i] * o[p * width + i];
            dgates[p] = (float)sum;
        }
    }
    return LK_OK;
}

LK_API lk_status lk_cpu_moe_swiglu(int64_t n, const float* g, const float* u, float* h) {
    ArgCheck check("lk_cpu_moe_swiglu");
    check.nonnegative("n", n).not_null("g", g, n > 0).not_null("u", u, n > 0).not_null("h", h, n > 0);
    if (!check.ok()) return check.status();
    const int threads = elementwise_threads(n);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t i = 0; i < n; ++i) h[i] = lk_silu(g[i]) * u[i];
    return LK_OK;
}

LK_API lk_status lk_cpu_moe_swiglu_backward(int64_t n, const float* g, const float* u, const float* dh, float* dg,
                                            float* du) {
    ArgCheck check("lk_cpu_moe_swiglu_backward");
    check.nonnegative("n", n)
        .not_null("g", g, n > 0)
        .not_null("u", u, n > 0 && dg != nullptr)
        .not_null("dh", dh, n > 0);
    if (!check.ok()) return check.status();
    const int threads = elementwise_threads(n);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t i = 0; i < n; ++i) {
        if (dg != nullptr) dg[i] = dh[i] * u[i] * lk_silu_grad(g[i]);
        if (du != nullptr) du[i] = dh[i] * lk_silu(g[i]);
    }
    return LK_OK;
}
