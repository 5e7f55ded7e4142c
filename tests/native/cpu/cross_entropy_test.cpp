// lk_cpu_cross_entropy against a double-precision softmax written out here (exp and log in
// double, no max shift needed for the moderate logits of most cases; a shifted one for the large).
//
// Tolerances: the kernel evaluates exp(x - max) in fp32 (the subtraction rounds by u·|x - max|,
// expf adds about 1 u), so each softmax term is off by at most u·(R + 2) relative, R the row's
// largest |x - max|; sums are in double. Hence
//   loss:    |got - ref| <= 4u·(R + 2) + 2u·|ref|          (lse's error, then one rounding)
//   dlogits: |got - ref| <= (4u·(R + 2)·p_j + 2u·|g_j|) / count + 1e-30
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "reference.h"

namespace cpu_test {
namespace {

constexpr int32_t kIgnore = -100;

struct CrossEntropyReference {
    double loss = 0.0;
    std::vector<double> grad, grad_bound;
    double loss_bound = 0.0;
};

CrossEntropyReference reference(int64_t M, int64_t C, const std::vector<float>& logits,
                                const std::vector<int32_t>& targets, double smoothing) {
    CrossEntropyReference ref;
    ref.grad.assign((size_t)(M * C), 0.0);
    ref.grad_bound.assign((size_t)(M * C), 1e-30);
    int64_t count = 0;
    for (int64_t i = 0; i < M; ++i) count += targets[(size_t)i] != kIgnore;
    double total = 0.0, worst_range = 0.0;
    for (int64_t i = 0; i < M; ++i) {
        if (targets[(size_t)i] == kIgnore) continue;
        const float* x = logits.data() + i * C;
        double max = -INFINITY, x_sum = 0.0;
        for (int64_t j = 0; j < C; ++j) max = std::fmax(max, (double)x[j]);
        double exp_sum = 0.0, range = 0.0;
        for (int64_t j = 0; j < C; ++j) {
            exp_sum += std::exp((double)x[j] - max);
            x_sum += x[j];
            range = std::fmax(range, std::fabs((double)x[j] - max));
        }
        worst_range = std::fmax(worst_range, range);
        const double lse = max + std::log(exp_sum);
        const int32_t t = targets[(size_t)i];
        total += lse - (1.0 - smoothing) * x[t] - smoothing * x_sum / (double)C;
        for (int64_t j = 0; j < C; ++j) {
            const double p = std::exp((double)x[j] - max) / exp_sum;
            const double g = p - smoothing / (double)C - (j == t ? 1.0 - smoothing : 0.0);
            ref.grad[(size_t)(i * C + j)] = g / (double)count;
            ref.grad_bound[(size_t)(i * C + j)] +=
                (4.0 * kUnitRoundoff * (range + 2.0) * p + 2.0 * kUnitRoundoff * std::fabs(g)) / (double)count;
        }
    }
    ref.loss = count > 0 ? total / (double)count : NAN;
    ref.loss_bound = 4.0 * kUnitRoundoff * (worst_range + 2.0) + 2.0 * kUnitRoundoff * std::fabs(ref.loss);
    return ref;
}

struct Case {
    int64_t M, C;
    double smoothing;
    float logit_scale;
};

class CrossEntropy : public ::testing::TestWithParam<Case> {};

TEST_P(CrossEntropy, LossAndGradientMatchDoubleReference) {
    const Case c = GetParam();
    Rng rng(7 + c.M * 31 + c.C);
    std::vector<float> logits = rng.vector(c.M * c.C);
    for (float& v : logits) v *= c.logit_scale;
    std::vector<int32_t> targets((size_t)c.M);
    for (int64_t i = 0; i < c.M; ++i) targets[(size_t)i] = (int32_t)(rng.next_u32() % (uint32_t)c.C);
    if (c.M > 2) targets[1] = kIgnore;  // an ignored row: no loss, zero gradient, not counted
    const CrossEntropyReference ref = reference(c.M, c.C, logits, targets, c.smoothing);
    float loss = NAN;
    std::vector<float> grad((size_t)(c.M * c.C), NAN);
    ASSERT_EQ(lk_cpu_cross_entropy(c.M, c.C, logits.data(), targets.data(), kIgnore, (float)c.smoothing, &loss,
                                   grad.data()),
              LK_OK)
        << last_error();
    EXPECT_NEAR(loss, ref.loss, ref.loss_bound);
    if (c.C == 1) {  // one class: p = 1 exactly, so the loss and the gradient are exactly 0
        EXPECT_EQ(loss, 0.0f);
        for (float g : grad) EXPECT_EQ(g, 0.0f);
    } else {
        EXPECT_TRUE(all_near(grad.data(), c.C, c.M, c.C, ref.grad, ref.grad_bound, 0.0, 1.0));
    }
    if (c.M > 2) {
        for (int64_t j = 0; j < c.C; ++j) ASSERT_EQ(grad[(size_t)(c.C + j)], 0.0f) << "ignored row, column " << j;
    }

    float loss_only = NAN;  // dlogits is optional and does not change the loss
    ASSERT_EQ(lk_cpu_cross_entropy(c.M, c.C, logits.data(), targets.data(), kIgnore, (float)c.smoothing, &loss_only,
                                   nullptr),
              LK_OK);
    EXPECT_EQ(std::memcmp(&loss, &loss_only, sizeof loss), 0);
}

// 1 class (loss 0), primes, a vocabulary-sized row, large logits (a naive exp overflows past 88),
// and 37 x 4099 (past the point where rows run on several threads).
INSTANTIATE_TEST_SUITE_P(Shapes, CrossEntropy,
                         ::testing::Values(Case{1, 1, 0.0, 1.0f}, Case{3, 7, 0.0, 1.0f}, Case{17, 1031, 0.1, 4.0f},
                                           Case{2, 50257, 0.0, 2.0f}, Case{5, 13, 0.0, 120.0f},
                                           Case{37, 4099, 0.25, 3.0f}));

TEST(CrossEntropyRules, IsBitIdenticalForEveryThreadCount) {
    const int64_t M = 64, C = 3001;
    Rng rng(5);
    const std::vector<float> logits = rng.vector(M * C);
    std::vector<int32_t> targets((size_t)M);
    for (int64_t i = 0; i < M; ++i) targets[(size_t)i] = (int32_t)(rng.next_u32() % (uint32_t)C);
    const int threads = lk_cpu_get_num_threads();
    float one = NAN, two = NAN;
    ASSERT_EQ(lk_cpu_set_num_threads(1), LK_OK);
    ASSERT_EQ(lk_cpu_cross_entropy(M, C, logits.data(), targets.data(), kIgnore, 0.0f, &one, nullptr), LK_OK);
    ASSERT_EQ(lk_cpu_set_num_threads(2), LK_OK);
    ASSERT_EQ(lk_cpu_cross_entropy(M, C, logits.data(), targets.data(), kIgnore, 0.0f, &two, nullptr), LK_OK);
    ASSERT_EQ(lk_cpu_set_num_threads(threads), LK_OK);
    EXPECT_FALSE(std::isnan(one));
    EXPECT_EQ(std::memcmp(&one, &two, sizeof one), 0) << one << " vs " << two;
}

TEST(CrossEntropyRules, AllRowsIgnoredGiveNaNAndZeroGradientAsTorch) {
    const float logits[6] = {1, 2, 3, 4, 5, 6};
    const int32_t targets[2] = {kIgnore, kIgnore};
    float loss = 0.0f, grad[6];
    ASSERT_EQ(lk_cpu_cross_entropy(2, 3, logits, targets, kIgnore, 0.0f, &loss, grad), LK_OK);
    EXPECT_TRUE(std::isnan(loss));
    for (float g : grad) EXPECT_EQ(g, 0.0f);
    ASSERT_EQ(lk_cpu_cross_entropy(0, 3, nullptr, nullptr, kIgnore, 0.0f, &loss, nullptr), LK_OK);
    EXPECT_TRUE(std::isnan(loss));
}

TEST(CrossEntropyRules, NaNLogitGivesNaNLoss) {
    const float logits[3] = {1.0f, std::numeric_limits<float>::quiet_NaN(), 0.5f};
    const int32_t target = 0;
    float loss = 0.0f;
    ASSERT_EQ(lk_cpu_cross_entropy(1, 3, logits, &target, kIgnore, 0.0f, &loss, nullptr), LK_OK);
    EXPECT_TRUE(std::isnan(loss));
}

TEST(CrossEntropyRules, BadTargetsAndSmoothingAreRejectedByName) {
    const float logits[4] = {1, 2, 3, 4};
    const int32_t out_of_range[2] = {1, 2};
    float loss = 0.0f;
    EXPECT_EQ(lk_cpu_cross_entropy(2, 2, logits, out_of_range, kIgnore, 0.0f, &loss, nullptr), LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("targets[1] = 2"), std::string::npos) << last_error();
    const int32_t negative[2] = {0, -1};
    EXPECT_EQ(lk_cpu_cross_entropy(2, 2, logits, negative, kIgnore, 0.0f, &loss, nullptr), LK_ERR_INVALID_ARGUMENT);
    const int32_t fine[2] = {0, 1};
    EXPECT_EQ(lk_cpu_cross_entropy(2, 2, logits, fine, kIgnore, 1.5f, &loss, nullptr), LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("label_smoothing"), std::string::npos) << last_error();
    EXPECT_EQ(lk_cpu_cross_entropy(2, 0, logits, fine, kIgnore, 0.0f, &loss, nullptr), LK_ERR_INVALID_ARGUMENT);
}

}  // namespace
}  // namespace cpu_test
