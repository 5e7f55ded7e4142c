// cross_entropy.cpp: softmax cross-entropy over rows of logits with class-index targets
// (torch.nn.functional.cross_entropy, reduction "mean", ignore_index, label_smoothing).
//
// Strategy: rows in parallel (OpenMP, static), each in three passes as kernels/cross_entropy.cu:
// the row's max, then Σ exp(x - max) and Σ x in double, then the gradient. Each row's loss is
// stored and the losses are added in row order afterwards, so the result is the same bit for bit
// for every thread count. 8 B/element read (12 with the gradient written).
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "check.h"
#include "parallel.h"

using lk::cpu::ArgCheck;

LK_API lk_status lk_cpu_cross_entropy(int64_t M, int64_t C, const float* logits, const int32_t* targets,
                                      int32_t ignore_index, float label_smoothing, float* loss,
                                      float* dlogits) {
    static const char* const fn = "lk_cpu_cross_entropy";
    ArgCheck check(fn);
    check.nonnegative("M", M)
        .at_least("C", (double)C, 1.0)
        .not_null("logits", logits, M > 0)
        .not_null("targets", targets, M > 0)
        .not_null("loss", loss);
    if (check.ok() && !(label_smoothing >= 0.0f && label_smoothing <= 1.0f))
        return lk::fail(LK_ERR_INVALID_ARGUMENT, "%s: label_smoothing = %g is outside [0, 1]", fn,
                        (double)label_smoothing);
    if (!check.ok()) return check.status();
    int64_t count = 0;
    for (int64_t i = 0; i < M; ++i) {
        if (targets[i] == ignore_index) continue;
        if (targets[i] < 0 || targets[i] >= C)
            return lk::fail(LK_ERR_INVALID_ARGUMENT,
                            "%s: targets[%lld] = %d is outside [0, C = %lld) and is not ignore_index %d", fn,
                            (long long)i, (int)targets[i], (long long)C, (int)ignore_index);
        ++count;
    }
    return lk::cpu::guarded(fn, [&] {
        std::vector<double> row_loss((size_t)M, 0.0);
        const double inv_count = count > 0 ? 1.0 / (double)count : 0.0;
        const double smoothing = label_smoothing, spread = smoothing / (double)C;
        const int threads = lk::cpu::elementwise_threads(M * C);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
        for (int64_t row = 0; row < M; ++row) {
            const float* x = logits + row * C;
            float* dx = dlogits ? dlogits + row * C : nullptr;
            const int32_t target = targets[row];
            if (target == ignore_index) {
                if (dx)
                    for (int64_t j = 0; j < C; ++j) dx[j] = 0.0f;
                continue;
            }
            float row_max = -INFINITY;
            for (int64_t j = 0; j < C; ++j) row_max = x[j] > row_max ? x[j] : row_max;
            double exp_sum = 0.0, x_sum = 0.0;
            for (int64_t j = 0; j < C; ++j) {
                exp_sum += (double)std::exp(x[j] - row_max);
                x_sum += (double)x[j];
            }
            const double lse = (double)row_max + std::log(exp_sum);
            row_loss[(size_t)row] = lse - (1.0 - smoothing) * (double)x[target] - smoothing * x_sum / (double)C;
            if (dx) {
                const double inv_sum = 1.0 / exp_sum;
                for (int64_t j = 0; j < C; ++j) {
                    const double p = (double)std::exp(x[j] - row_max) * inv_sum;
                    dx[j] = (float)((p - spread - (j == target ? 1.0 - smoothing : 0.0)) * inv_count);
                }
            }
        }
        double total = 0.0;
        for (double l : row_loss) total += l;
        // The mean over no rows (all ignored, or M = 0) is NaN, as in torch.
        loss[0] = count > 0 ? (float)(total * inv_count) : NAN;
        return LK_OK;
    });
}
