// gated_router.cpp: the router's graph ops of the gated family on the CPU (kernels/gated.cu holds
// their GPU twins): softmax and its backward, top-k with renormalisation and its backward, and
// the load-balancing loss's statistics and gradient (Switch / Mixtral, as HF's
// load_balancing_loss_func computes it; REFERENCE.md has no router, docs/DECISIONS.md says why). Rows are independent and short (E
// experts), so each is one plain loop; sums that feed a division are in double.
#include <algorithm>
#include <cmath>
#include <vector>

#include "check.h"
#include "gated_experts.h"

namespace lk::cpu {
namespace {

void softmax(int64_t M, int64_t E, const float* logits, float* probs) {
    for (int64_t m = 0; m < M; ++m) {
        const float* row = logits + m * E;
        const float top = *std::max_element(row, row + E);
        double sum = 0.0;
        for (int64_t j = 0; j < E; ++j) sum += std::exp((double)row[j] - (double)top);
        for (int64_t j = 0; j < E; ++j)
            probs[m * E + j] = (float)(std::exp((double)row[j] - (double)top) / sum);
    }
}

void softmax_backward(int64_t M, int64_t E, const float* probs, const float* dprobs, float* dlogits) {
    for (int64_t m = 0; m < M; ++m) {
        const float *p = probs + m * E, *dp = dprobs + m * E;
        double inner = 0.0;
        for (int64_t j = 0; j < E; ++j) inner += (double)p[j] * (double)dp[j];
        for (int64_t j = 0; j < E; ++j) dlogits[m * E + j] = (float)((double)p[j] * ((double)dp[j] - inner));
    }
}

// (value, index) pairs ordered by value, then by the lower index: a strict total order, so the
// k picks are distinct and each next pick is the largest pair below the previous one.
bool ranks_below(float value, int64_t index, float bound_value, int64_t bound_index) {
    return value < bound_value || (value == bound_value && index > bound_index);
}

void route_topk(int64_t M, int64_t E, int64_t k, const float* probs, bool renormalize, float* expert,
                float* weight) {
    for (int64_t m = 0; m < M; ++m) {
        const float* row = probs + m * E;
        float previous = INFINITY;
        int64_t previous_index = -1;
        float sum = 0.0f;
        for (int64_t t = 0; t < k; ++t) {
            int64_t best = -1;
            for (int64_t j = 0; j < E; ++j)
                if (ranks_below(row[j], j, previous, previous_index) &&
                    (best < 0 || !ranks_below(row[j], j, row[best], best)))
                    best = j;
            expert[m * k + t] = (float)best;
            weight[m * k + t] = row[best];
            sum += row[best];
            previous = row[best];
            previous_index = best;
        }
        if (renormalize)
            for (int64_t t = 0; t < k; ++t) weight[m * k + t] /= sum;
    }
}

void route_topk_backward(int64_t M, int64_t E, int64_t k, const float* probs, const float* expert,
                         const float* weight, const float* dweight, bool renormalize, float* dprobs) {
    std::fill(dprobs, dprobs + M * E, 0.0f);
    for (int64_t m = 0; m < M; ++m) {
        double sum = 0.0, inner = 0.0;
        for (int64_t t = 0; t < k; ++t) {
            sum += probs[m * E + (int64_t)expert[m * k + t]];
            inner += (double)dweight[m * k + t] * (double)weight[m * k + t];
        }
        for (int64_t t = 0; t < k; ++t) {
            const double d = dweight[m * k + t];
            dprobs[m * E + (int64_t)expert[m * k + t]] = (float)(renormalize ? (d - inner) / sum : d);
        }
    }
}

}  // namespace
}  // namespace lk::cpu

using lk::cpu::ArgCheck;

LK_API lk_status lk_cpu_gated_softmax(int64_t M, int64_t E, const float* logits, float* probs) {
    static const char* const fn = "lk_cpu_gated_softmax";
    ArgCheck check(fn);
    check.nonnegative("M", M).at_least("E", (double)E, 1.0).not_null("logits", logits, M > 0).not_null("probs", probs, M > 0);
    if (!check.ok()) return check.status();
    return lk::cpu::guarded(fn, [&] {
        lk::cpu::softmax(M, E, logits, probs);
        return LK_OK;
    });
}

LK_API lk_status lk_cpu_gated_softmax_backward(int64_t M, int64_t E, const float* probs,
                                               const float* dprobs, float* dlogits) {
    static const char* const fn = "lk_cpu_gated_softmax_backward";
    ArgCheck check(fn);
    check.nonnegative("M", M)
        .at_least("E", (double)E, 1.0)
        .not_null("probs", probs, M > 0)
        .not_null("dprobs", dprobs, M > 0)
        .not_null("dlogits", dlogits, M > 0);
    if (!check.ok()) return check.status();
    return lk::cpu::guarded(fn, [&] {
        lk::cpu::softmax_backward(M, E, probs, dprobs, dlogits);
        return LK_OK;
    });
}

LK_API lk_status lk_cpu_gated_route_topk(int64_t M, int64_t E, int64_t k, const float* probs,
                                         int32_t renormalize, float* expert, float* weight) {
    static const char* const fn = "lk_cpu_gated_route_topk";
    ArgCheck check(fn);
    check.nonnegative("M", M)
        .at_least("k", (double)k, 1.0)
        .at_least("E - k", (double)(E - k), 0.0)
        .not_null("probs", probs, M > 0)
        .not_null("expert", expert, M > 0)
        .not_null("weight", weight, M > 0);
    if (!check.ok()) return check.status();
    return lk::cpu::guarded(fn, [&] {
        lk::cpu::route_topk(M, E, k, probs, renormalize != 0, expert, weight);
        return LK_OK;
    });
}

LK_API lk_status lk_cpu_gated_route_topk_backward(int64_t M, int64_t E, int64_t k, const float* probs,
                                                  const float* expert, const float* weight,
                                                  const float* dweight, int32_t renormalize,
                                                  float* dprobs) {
    static const char* const fn = "lk_cpu_gated_route_topk_backward";
    ArgCheck check(fn);
    check.nonnegative("M", M)
        .at_least("k", (double)k, 1.0)
        .at_least("E - k", (double)(E - k), 0.0)
        .not_null("probs", probs, M > 0)
        .not_null("expert", expert, M > 0)
        .not_null("weight", weight, M > 0)
        .not_null("dweight", dweight, M > 0)
        .not_null("dprobs", dprobs, M > 0);
    if (!check.ok()) return check.status();
    const lk_status experts = lk::cpu::check_experts(fn, M, k, E, expert);
    if (experts != LK_OK) return experts;
    return lk::cpu::guarded(fn, [&] {
        lk::cpu::route_topk_backward(M, E, k, probs, expert, weight, dweight, renormalize != 0, dprobs);
        return LK_OK;
    });
}

LK_API lk_status lk_cpu_gated_balance(int64_t M, int64_t E, int64_t k, const float* probs,
                                      const float* expert, float* stats) {
    static const char* const fn = "lk_cpu_gated_balance";
    ArgCheck check(fn);
    check.nonnegative("M", M)
        .at_least("k", (double)k, 1.0)
        .at_least("E - k", (double)(E - k), 0.0)
        .not_null("probs", probs, M > 0)
        .not_null("expert", expert, M > 0)
        .not_null("stats", stats);
    if (!check.ok()) return check.status();
    const lk_status experts = lk::cpu::check_experts(fn, M, k, E, expert);
    if (experts != LK_OK) return experts;
    return lk::cpu::guarded(fn, [&] {
        std::vector<double> sums((size_t)E, 0.0);
        std::fill(stats, stats + 2 * E, 0.0f);
        for (int64_t i = 0; i < M * k; ++i) stats[(int64_t)expert[i]] += 1.0f;
        for (int64_t m = 0; m < M; ++m)
            for (int64_t j = 0; j < E; ++j) sums[(size_t)j] += probs[m * E + j];
        for (int64_t j = 0; j < E; ++j) stats[E + j] = (float)sums[(size_t)j];
        return LK_OK;
    });
}

LK_API lk_status lk_cpu_gated_balance_backward(int64_t M, int64_t E, const float* stats,
                                               float coefficient, float* dprobs) {
    static const char* const fn = "lk_cpu_gated_balance_backward";
    ArgCheck check(fn);
    check.at_least("M", (double)M, 1.0)
        .at_least("E", (double)E, 1.0)
        .not_null("stats", stats)
        .not_null("dprobs", dprobs)
        .finite("coefficient", coefficient);
    if (!check.ok()) return check.status();
    return lk::cpu::guarded(fn, [&] {
        const double factor = (double)coefficient * (double)E / ((double)M * (double)M);
        for (int64_t m = 0; m < M; ++m)
            for (int64_t j = 0; j < E; ++j) dprobs[m * E + j] = (float)(factor * stats[j]);
        return LK_OK;
    });
}
