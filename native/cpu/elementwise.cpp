// elementwise.cpp: ReLU, axpy and the MSE loss for the autograd tape.
//
// Strategy: plain loops the compiler vectorizes, on OpenMP threads past kElementsPerThread.
// All are memory-bound: relu_forward and axpy move 8 and 12 bytes per element, relu_backward
// 12, mse 8 (+4 with dpred). The MSE sum is accumulated in double, in a fixed order for a given
// thread count (per-thread partial sums added in thread order), so it is reproducible.
#include <omp.h>

#include <cmath>
#include <vector>

#include "check.h"
#include "parallel.h"

using lk::cpu::ArgCheck;
using lk::cpu::elementwise_threads;

LK_API lk_status lk_cpu_relu_forward(int64_t n, const float* x, float* y) {
    ArgCheck check("lk_cpu_relu_forward");
    check.nonnegative("n", n).not_null("x", x, n > 0).not_null("y", y, n > 0);
    if (!check.ok()) return check.status();
    const int threads = elementwise_threads(n);
    // NaN propagates (as torch.relu does): only x <= 0 becomes 0.
#pragma omp parallel for simd schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t i = 0; i < n; ++i) y[i] = x[i] <= 0.0f ? 0.0f : x[i];
    return LK_OK;
}

LK_API lk_status lk_cpu_relu_backward(int64_t n, const float* x, const float* dy, float* dx) {
    ArgCheck check("lk_cpu_relu_backward");
    check.nonnegative("n", n)
        .not_null("x", x, n > 0)
        .not_null("dy", dy, n > 0)
        .not_null("dx", dx, n > 0);
    if (!check.ok()) return check.status();
    const int threads = elementwise_threads(n);
    // The gradient passes where x > 0 (torch's threshold_backward).
#pragma omp parallel for simd schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t i = 0; i < n; ++i) dx[i] = x[i] > 0.0f ? dy[i] : 0.0f;
    return LK_OK;
}

LK_API lk_status lk_cpu_axpy(int64_t n, float alpha, const float* x, float* y) {
    ArgCheck check("lk_cpu_axpy");
    check.nonnegative("n", n).not_null("x", x, n > 0).not_null("y", y, n > 0);
    if (!check.ok()) return check.status();
    const int threads = elementwise_threads(n);
#pragma omp parallel for simd schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
    return LK_OK;
}

LK_API lk_status lk_cpu_mse_loss(int64_t n, const float* pred, const float* target, float* loss,
                                 float* dpred) {
    static const char* const fn = "lk_cpu_mse_loss";
    ArgCheck check(fn);
    check.nonnegative("n", n)
        .not_null("pred", pred, n > 0)
        .not_null("target", target, n > 0)
        .not_null("loss", loss);
    if (!check.ok()) return check.status();
    if (n == 0) {
        // The mean of no elements, as torch.nn.functional.mse_loss gives it.
        loss[0] = NAN;
        return LK_OK;
    }
    return lk::cpu::guarded(fn, [&] {
        const int threads = elementwise_threads(n);
        std::vector<double> partial((size_t)threads, 0.0);
        const double inv_n = 1.0 / (double)n;
#pragma omp parallel num_threads(threads) if (threads > 1)
        {
            int64_t begin, end;
            lk::cpu::thread_share(n, omp_get_thread_num(), omp_get_num_threads(), begin, end);
            double sum = 0.0;
#pragma omp simd reduction(+ : sum)
            for (int64_t i = begin; i < end; ++i) {
                const double d = (double)pred[i] - (double)target[i];
                sum += d * d;
            }
            partial[(size_t)omp_get_thread_num()] = sum;
            if (dpred != nullptr)
#pragma omp simd
                for (int64_t i = begin; i < end; ++i)
                    dpred[i] = (float)(2.0 * ((double)pred[i] - (double)target[i]) * inv_n);
        }
        double total = 0.0;
        for (double s : partial) total += s;
        loss[0] = (float)(total * inv_n);
        return LK_OK;
    });
}
