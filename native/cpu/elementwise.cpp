// elementwise.cpp: ReLU, axpy and the MSE loss for the autograd tape, and the non-finite scan
// behind the library's input checks.
//
// Strategy: plain loops the compiler vectorizes, on OpenMP threads past kElementsPerThread.
// All are memory-bound: relu_forward and axpy move 8 and 12 bytes per element, relu_backward
// 12, mse 8 (+4 with dpred), first_nonfinite 4. The MSE sum is accumulated in double over fixed
// chunks of kSumChunk elements whose partial sums are added in chunk order, so the loss is the
// same bit for bit whatever the thread count. first_nonfinite tests 1024-element chunks with a
// branch-free OR of "exponent all ones" (vectorized) and scans only a flagged chunk.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "check.h"
#include "parallel.h"

using lk::cpu::ArgCheck;
using lk::cpu::elementwise_threads;

namespace {

// Elements per partial sum of the MSE loss: the summation order depends on this, not on threads.
constexpr int64_t kSumChunk = 1 << 14;
// Elements tested per branch-free pass of the non-finite scan.
constexpr int64_t kScanChunk = 1024;

bool non_finite(float v) {
    uint32_t bits;
    __builtin_memcpy(&bits, &v, sizeof bits);
    return (bits & 0x7f800000u) == 0x7f800000u;
}

// The first non-finite index in [begin, end), or end.
int64_t first_nonfinite_in(const float* x, int64_t begin, int64_t end) {
    for (int64_t chunk = begin; chunk < end; chunk += kScanChunk) {
        const int64_t stop = std::min(end, chunk + kScanChunk);
        int flagged = 0;
#pragma omp simd reduction(| : flagged)
        for (int64_t i = chunk; i < stop; ++i) flagged |= non_finite(x[i]) ? 1 : 0;
        if (!flagged) continue;
        for (int64_t i = chunk; i < stop; ++i)
            if (non_finite(x[i])) return i;
    }
    return end;
}

}  // namespace

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
        const int64_t chunks = (n + kSumChunk - 1) / kSumChunk;
        std::vector<double> partial((size_t)chunks, 0.0);
        const double inv_n = 1.0 / (double)n;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
        for (int64_t chunk = 0; chunk < chunks; ++chunk) {
            const int64_t begin = chunk * kSumChunk, end = std::min(n, begin + kSumChunk);
            double sum = 0.0;
#pragma omp simd reduction(+ : sum)
            for (int64_t i = begin; i < end; ++i) {
                const double d = (double)pred[i] - (double)target[i];
                sum += d * d;
            }
            partial[(size_t)chunk] = sum;
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

LK_API lk_status lk_cpu_first_nonfinite(int64_t n, const float* x, int64_t* index) {
    ArgCheck check("lk_cpu_first_nonfinite");
    check.nonnegative("n", n).not_null("x", x, n > 0).not_null("index", index);
    if (!check.ok()) return check.status();
    const int threads = elementwise_threads(n);
    int64_t first = n;
#pragma omp parallel num_threads(threads) if (threads > 1) reduction(min : first)
    {
        int64_t begin, end;
        lk::cpu::thread_share(n, omp_get_thread_num(), omp_get_num_threads(), begin, end);
        const int64_t found = first_nonfinite_in(x, begin, end);
        if (found < end) first = found;
    }
    index[0] = first < n ? first : -1;
    return LK_OK;
}
