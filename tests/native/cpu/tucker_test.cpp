// lk_cpu_tucker_batched_matmul (the mode products of the Tucker family, and the per-token and
// per-image products of the Kronecker and convolution adapters) against a naive double reference.
//
// Cases: every (trans_a, trans_b); batch 1, 3 and 37 (past two reduction chunks of 16); A or B
// shared by the batch (stride 0) or not; independent and reduced; beta 0 (C holds NaN, so a kernel
// that reads it fails) and beta 0.5; M, N, K primes and 1, and products large enough for the
// engine to thread (run one after another) as well as small ones (run side by side).
// Tolerance, per element: |got - ref| <= 1e-6 + 4 * (L + 2) * u * magnitude with L = K (independent)
// or batch * K (reduced; the chunk sums add one more rounding per chunk, inside the +2 and L).
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "reference.h"

namespace cpu_test {
namespace {

struct BatchedCase {
    int64_t batch, M, N, K;
    bool trans_a, trans_b, shared_a, shared_b, reduce;
    float beta;
};

std::string batched_name(const BatchedCase& c) {
    return "b" + std::to_string(c.batch) + "_M" + std::to_string(c.M) + "_N" + std::to_string(c.N) + "_K" +
           std::to_string(c.K) + (c.trans_a ? "_At" : "_A") + (c.shared_a ? "s" : "") + (c.trans_b ? "_Bt" : "_B") +
           (c.shared_b ? "s" : "") + (c.reduce ? "_sum" : "") + (c.beta != 0.0f ? "_beta" : "");
}

void PrintTo(const BatchedCase& c, std::ostream* os) { *os << batched_name(c); }

std::vector<BatchedCase> batched_cases() {
    std::vector<BatchedCase> cases;
    for (bool ta : {false, true})
        for (bool tb : {false, true}) {
            cases.push_back({1, 7, 5, 3, ta, tb, false, false, false, 0.0f});
            cases.push_back({3, 1, 13, 11, ta, tb, true, false, false, 0.5f});
            cases.push_back({37, 6, 4, 9, ta, tb, false, true, false, 0.0f});
            cases.push_back({37, 5, 3, 2, ta, tb, false, false, true, 0.5f});
            cases.push_back({3, 11, 1, 17, ta, tb, true, false, true, 0.0f});
        }
    cases.push_back({3, 160, 150, 140, false, true, true, false, false, 0.0f});  // threaded products
    cases.push_back({20, 150, 140, 130, true, false, false, false, true, 0.0f});
    return cases;
}

class TuckerBatchedMatmul : public ::testing::TestWithParam<BatchedCase> {};

TEST_P(TuckerBatchedMatmul, MatchesTheDoubleReference) {
    const BatchedCase c = GetParam();
    Rng rng(505);
    const int64_t a_size = c.M * c.K, b_size = c.K * c.N, c_size = c.M * c.N;
    const int64_t stride_a = c.shared_a ? 0 : a_size, stride_b = c.shared_b ? 0 : b_size;
    const int64_t stride_c = c.reduce ? 0 : c_size, outputs = c.reduce ? 1 : c.batch;
    const std::vector<float> A = rng.vector(c.shared_a ? a_size : c.batch * a_size),
                             B = rng.vector(c.shared_b ? b_size : c.batch * b_size),
                             C0 = rng.vector(outputs * c_size);
    const float alpha = -0.625f;
    auto a_at = [&](int64_t b, int64_t i, int64_t k) {
        return (double)A[(size_t)(b * stride_a + (c.trans_a ? k * c.M + i : i * c.K + k))];
    };
    auto b_at = [&](int64_t b, int64_t k, int64_t j) {
        return (double)B[(size_t)(b * stride_b + (c.trans_b ? j * c.K + k : k * c.N + j))];
    };
    std::vector<double> ref((size_t)(outputs * c_size), 0.0), magnitude(ref.size(), 0.0);
    for (int64_t b = 0; b < c.batch; ++b)
        for (int64_t i = 0; i < c.M; ++i)
            for (int64_t j = 0; j < c.N; ++j) {
                const size_t at = (size_t)((c.reduce ? 0 : b) * c_size + i * c.N + j);
                for (int64_t k = 0; k < c.K; ++k) {
                    const double t = alpha * a_at(b, i, k) * b_at(b, k, j);
                    ref[at] += t;
                    magnitude[at] += std::fabs(t);
                }
            }
    for (size_t at = 0; at < ref.size(); ++at) {
        ref[at] += (double)c.beta * C0[at];
        magnitude[at] += std::fabs((double)c.beta * C0[at]);
    }
    std::vector<float> C = c.beta == 0.0f ? std::vector<float>(C0.size(), std::nanf("")) : C0;
    ASSERT_EQ(lk_cpu_tucker_batched_matmul(c.batch, c.M, c.N, c.K, c.trans_a, A.data(), stride_a, c.trans_b,
                                           B.data(), stride_b, alpha, c.beta, C.data(), stride_c, c.reduce),
              LK_OK)
        << last_error();
    const int64_t chain = c.reduce ? c.batch * c.K : c.K;
    EXPECT_TRUE(all_near(C.data(), c.N, outputs * c.M, c.N, ref, magnitude, 1e-6,
                         4.0 * (double)(chain + 2) * kUnitRoundoff));
}

INSTANTIATE_TEST_SUITE_P(Cases, TuckerBatchedMatmul, ::testing::ValuesIn(batched_cases()),
                         [](const auto& info) { return batched_name(info.param); });

TEST(TuckerBatchedMatmulArguments, BadArgumentsAreRefusedByName) {
    float value = 1.0f;
    EXPECT_EQ(lk_cpu_tucker_batched_matmul(1, 1, 1, 1, 2, &value, 0, 0, &value, 0, 1.0f, 0.0f, &value, 0, 0),
              LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("trans_a = 2"), std::string::npos) << last_error();
    EXPECT_EQ(lk_cpu_tucker_batched_matmul(1, 1, 1, 1, 0, nullptr, 0, 0, &value, 0, 1.0f, 0.0f, &value, 0, 0),
              LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("A is NULL"), std::string::npos) << last_error();
    EXPECT_EQ(lk_cpu_tucker_batched_matmul(1, 1, 1, 1, 0, &value, -1, 0, &value, 0, 1.0f, 0.0f, &value, 0, 0),
              LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("stride_a"), std::string::npos) << last_error();
}

}  // namespace
}  // namespace cpu_test
