// lk_cpu_sgemm against a naive double-precision reference: all four transpose combinations,
// padded leading dimensions, alpha/beta (beta == 0 over a NaN-filled C), sizes 1, primes and
// non-multiples of every micro-tile and cache block, and the degenerate sizes.
//
// Tolerance, per element of C (fp32 accumulation over K products, then alpha and beta):
//   |got - ref| <= 1e-6 + 4 * (K + 2) * 2^-24 * (|alpha| * sum_k |a_ik * b_kj| + |beta * c_ij|)
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "reference.h"

namespace cpu_test {
namespace {

constexpr float kPadSentinel = 12345.0f;  // fills C's padding columns, which must stay untouched

struct SgemmProblem {
    int trans_a, trans_b;
    int64_t M, N, K;
    float alpha, beta;
};

std::string name(const SgemmProblem& p) {
    return std::string(p.trans_a ? "T" : "N") + (p.trans_b ? "T" : "N") +
           " M=" + std::to_string(p.M) + " N=" + std::to_string(p.N) + " K=" + std::to_string(p.K) +
           " alpha=" + std::to_string(p.alpha) + " beta=" + std::to_string(p.beta);
}

// Runs one product with padded leading dimensions and checks C, including its padding.
void check_sgemm(const SgemmProblem& p, uint64_t seed) {
    SCOPED_TRACE(name(p));
    Rng rng(seed);
    const int64_t a_rows = p.trans_a ? p.K : p.M, a_cols = p.trans_a ? p.M : p.K;
    const int64_t b_rows = p.trans_b ? p.N : p.K, b_cols = p.trans_b ? p.K : p.N;
    const int64_t lda = a_cols + 3, ldb = b_cols + 5, ldc = p.N + 2;
    std::vector<float> A = rng.vector(a_rows * lda), B = rng.vector(b_rows * ldb);
    std::vector<float> C = rng.vector(p.M * ldc);
    const std::vector<float> C0 = C;
    for (int64_t i = 0; i < p.M; ++i) {
        for (int64_t j = 0; j < p.N; ++j)
            if (p.beta == 0.0f) C[i * ldc + j] = std::numeric_limits<float>::quiet_NaN();
        for (int64_t j = p.N; j < ldc; ++j) C[i * ldc + j] = kPadSentinel;
    }

    std::vector<double> ref((size_t)(p.M * p.N)), magnitude((size_t)(p.M * p.N));
    for (int64_t i = 0; i < p.M; ++i)
        for (int64_t j = 0; j < p.N; ++j) {
            double sum = 0.0, sum_abs = 0.0;
            for (int64_t k = 0; k < p.K; ++k) {
                const double a = p.trans_a ? A[k * lda + i] : A[i * lda + k];
                const double b = p.trans_b ? B[j * ldb + k] : B[k * ldb + j];
                sum += a * b;
                sum_abs += std::fabs(a * b);
            }
            const double c0 = p.beta == 0.0f ? 0.0 : (double)p.beta * C0[i * ldc + j];
            ref[(size_t)(i * p.N + j)] = p.alpha * sum + c0;
            magnitude[(size_t)(i * p.N + j)] = std::fabs(p.alpha) * sum_abs + std::fabs(c0);
        }

    ASSERT_EQ(lk_cpu_sgemm(p.trans_a, p.trans_b, p.M, p.N, p.K, p.alpha, A.data(), lda, B.data(),
                           ldb, p.beta, C.data(), ldc),
              LK_OK)
        << last_error();
    EXPECT_TRUE(all_near(C.data(), ldc, p.M, p.N, ref, magnitude, 1e-6,
                         4.0 * (double)(p.K + 2) * kUnitRoundoff));
    for (int64_t i = 0; i < p.M; ++i)
        for (int64_t j = p.N; j < ldc; ++j)
            ASSERT_EQ(C[i * ldc + j], kPadSentinel) << "padding of row " << i << " was written";
}

// ---- every (N, K) in the size set for one transpose combination and one M -------------------

struct SizesCase {
    int trans_a, trans_b;
    int64_t M;
};

void PrintTo(const SizesCase& c, std::ostream* os) {
    *os << (c.trans_a ? "T" : "N") << (c.trans_b ? "T" : "N") << "_M" << c.M;
}

class SgemmSizes : public ::testing::TestWithParam<SizesCase> {};

TEST_P(SgemmSizes, MatchesReferenceForEveryNAndK) {
    const SizesCase c = GetParam();
    const int64_t sizes[] = {1, 7, 17, 33, 130, 257};
    uint64_t seed = 1;
    for (int64_t N : sizes)
        for (int64_t K : sizes) {
            // Alternately beta == 0 (over a NaN-filled C) and a general alpha, beta.
            if (seed % 2)
                check_sgemm({c.trans_a, c.trans_b, c.M, N, K, 0.75f, 0.0f}, seed);
            else
                check_sgemm({c.trans_a, c.trans_b, c.M, N, K, -1.25f, 0.5f}, seed);
            ++seed;
        }
}

std::vector<SizesCase> sizes_cases() {
    std::vector<SizesCase> cases;
    for (int ta = 0; ta < 2; ++ta)
        for (int tb = 0; tb < 2; ++tb)
            for (int64_t M : {1, 7, 17, 33, 130, 257}) cases.push_back({ta, tb, M});
    return cases;
}

INSTANTIATE_TEST_SUITE_P(Transposes, SgemmSizes, ::testing::ValuesIn(sizes_cases()),
                         [](const ::testing::TestParamInfo<SizesCase>& info) {
                             return std::string(info.param.trans_a ? "T" : "N") +
                                    (info.param.trans_b ? "T" : "N") + "_M" +
                                    std::to_string(info.param.M);
                         });

// ---- shapes that span several cache blocks along each dimension ------------------------------

class SgemmBlocks : public ::testing::TestWithParam<int> {};

TEST_P(SgemmBlocks, SpansSeveralCacheBlocks) {
    const int trans_a = GetParam() / 2, trans_b = GetParam() % 2;
    // K = 2500: several kc blocks for every ISA's kc; M = 600: several mc blocks;
    // N = 8300: several nc blocks (nc <= 4096); M = 5 with x * W^T: the dot-product path.
    check_sgemm({trans_a, trans_b, 37, 45, 2500, 1.0f, 0.0f}, 101);
    check_sgemm({trans_a, trans_b, 600, 29, 61, 0.5f, -1.0f}, 102);
    check_sgemm({trans_a, trans_b, 9, 8300, 13, 1.0f, 1.0f}, 103);
    check_sgemm({trans_a, trans_b, 5, 1031, 523, 2.0f, 0.0f}, 104);
}

INSTANTIATE_TEST_SUITE_P(Transposes, SgemmBlocks, ::testing::Values(0, 1, 2, 3),
                         [](const ::testing::TestParamInfo<int>& info) {
                             return std::string(info.param / 2 ? "T" : "N") +
                                    (info.param % 2 ? "T" : "N");
                         });

// ---- degenerate sizes --------------------------------------------------------------------------

TEST(Sgemm, KZeroScalesCByBeta) {
    std::vector<float> C = {1.0f, -2.0f, 3.0f, 4.0f, 5.0f, -6.0f};  // M=2, N=3
    ASSERT_EQ(lk_cpu_sgemm(0, 0, 2, 3, 0, 1.0f, nullptr, 1, nullptr, 3, -0.5f, C.data(), 3), LK_OK);
    const std::vector<float> expected = {-0.5f, 1.0f, -1.5f, -2.0f, -2.5f, 3.0f};
    EXPECT_EQ(C, expected);
}

TEST(Sgemm, KZeroAndBetaZeroOverwritesNaN) {
    std::vector<float> C(6, std::numeric_limits<float>::quiet_NaN());
    ASSERT_EQ(lk_cpu_sgemm(0, 0, 2, 3, 0, 1.0f, nullptr, 1, nullptr, 3, 0.0f, C.data(), 3), LK_OK);
    EXPECT_EQ(C, std::vector<float>(6, 0.0f));
}

TEST(Sgemm, AlphaZeroReadsNeitherAnorB) {
    std::vector<float> C = {2.0f, 4.0f};  // M=1, N=2, K=5 with A and B NULL
    ASSERT_EQ(lk_cpu_sgemm(0, 1, 1, 2, 5, 0.0f, nullptr, 5, nullptr, 5, 0.25f, C.data(), 2), LK_OK)
        << last_error();
    EXPECT_EQ(C, (std::vector<float>{0.5f, 1.0f}));
}

TEST(Sgemm, EmptyMOrNLeavesCUntouched) {
    std::vector<float> A(12, 1.0f), B(12, 1.0f), C = {7.0f, 8.0f};
    ASSERT_EQ(lk_cpu_sgemm(0, 0, 0, 2, 3, 1.0f, A.data(), 3, B.data(), 2, 0.0f, C.data(), 2),
              LK_OK);
    ASSERT_EQ(lk_cpu_sgemm(0, 0, 2, 0, 3, 1.0f, A.data(), 3, B.data(), 1, 0.0f, C.data(), 1),
              LK_OK);
    EXPECT_EQ(C, (std::vector<float>{7.0f, 8.0f}));
}

// Threads split the tiles of C; each tile's arithmetic does not depend on which thread runs it,
// so any thread count must give the same bits (a race or a missed tile would not).
TEST(Sgemm, OneThreadAndAllThreadsGiveIdenticalBits) {
    const int64_t M = 130, N = 257, K = 300;
    Rng rng(7);
    const std::vector<float> A = rng.vector(M * K), B = rng.vector(K * N);
    std::vector<float> C_one((size_t)(M * N)), C_all((size_t)(M * N));
    const int32_t default_threads = lk_cpu_get_num_threads();
    ASSERT_EQ(lk_cpu_set_num_threads(1), LK_OK);
    EXPECT_EQ(lk_cpu_get_num_threads(), 1);
    ASSERT_EQ(lk_cpu_sgemm(0, 0, M, N, K, 1.0f, A.data(), K, B.data(), N, 0.0f, C_one.data(), N),
              LK_OK);
    ASSERT_EQ(lk_cpu_set_num_threads(0), LK_OK);
    EXPECT_EQ(lk_cpu_get_num_threads(), default_threads);
    ASSERT_EQ(lk_cpu_set_num_threads(4), LK_OK);  // more threads than this machine's cores
    ASSERT_EQ(lk_cpu_sgemm(0, 0, M, N, K, 1.0f, A.data(), K, B.data(), N, 0.0f, C_all.data(), N),
              LK_OK);
    ASSERT_EQ(lk_cpu_set_num_threads(0), LK_OK);
    EXPECT_EQ(C_one, C_all);
}

}  // namespace
}  // namespace cpu_test
