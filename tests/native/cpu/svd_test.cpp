// lk_cpu_svd: A = U diag(S) Vt with orthonormal U, V and descending S >= 0, checked directly (the
// singular vectors' signs are LAPACK's and not unique, so no fixed factors are compared).
//
// Tolerances (LAPACK's SVD is backward stable: the computed factors are exact for A + E with
// ||E|| ~ p(m, n) u ||A||): reconstruction |A - U S Vt|_ij <= 1e-6 + 8 (m + n) u S[0];
// orthonormality |U^T U - I|_ij, |V^T V - I|_ij <= 8 (m + n) u. Independently of LAPACK,
// sum S^2 must equal ||A||_F^2 (computed in double) to 8 (m + n) u relative.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "reference.h"

namespace cpu_test {
namespace {

struct SvdShape {
    int64_t m, n;
};

void PrintTo(const SvdShape& s, std::ostream* os) { *os << "m" << s.m << "_n" << s.n; }

class Svd : public ::testing::TestWithParam<SvdShape> {};

TEST_P(Svd, FactorsReconstructAndAreOrthonormal) {
    const int64_t m = GetParam().m, n = GetParam().n, k = std::min(m, n);
    Rng rng(600 + (uint64_t)(m * 100 + n));
    const std::vector<float> A = rng.vector(m * n);
    const float nan = std::numeric_limits<float>::quiet_NaN();
    std::vector<float> U((size_t)(m * k), nan), S((size_t)k, nan), Vt((size_t)(k * n), nan);
    const std::vector<float> A_copy = A;
    ASSERT_EQ(lk_cpu_svd(m, n, A.data(), U.data(), S.data(), Vt.data()), LK_OK) << last_error();
    EXPECT_EQ(A, A_copy);  // input untouched

    const double u = kUnitRoundoff, c = 8.0 * (double)(m + n) * u;
    for (int64_t i = 0; i < k; ++i) {
        EXPECT_GE(S[(size_t)i], 0.0f);
        if (i > 0) {
            EXPECT_GE(S[(size_t)(i - 1)], S[(size_t)i]) << "descending at " << i;
        }
    }
    double frob = 0.0, s2 = 0.0;
    for (float a : A) frob += (double)a * a;
    for (float s : S) s2 += (double)s * s;
    EXPECT_NEAR(s2, frob, c * frob);
    for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < n; ++j) {
            double sum = 0.0;
            for (int64_t t = 0; t < k; ++t)
                sum += (double)U[(size_t)(i * k + t)] * S[(size_t)t] * Vt[(size_t)(t * n + j)];
            ASSERT_NEAR(sum, A[(size_t)(i * n + j)], 1e-6 + c * S[0])
                << "A[" << i << ", " << j << "]";
        }
    for (int64_t a = 0; a < k; ++a)
        for (int64_t b = 0; b < k; ++b) {
            double uu = 0.0, vv = 0.0;
            for (int64_t i = 0; i < m; ++i)
                uu += (double)U[(size_t)(i * k + a)] * U[(size_t)(i * k + b)];
            for (int64_t j = 0; j < n; ++j)
                vv += (double)Vt[(size_t)(a * n + j)] * Vt[(size_t)(b * n + j)];
            EXPECT_NEAR(uu, a == b ? 1.0 : 0.0, c) << "U^T U [" << a << ", " << b << "]";
            EXPECT_NEAR(vv, a == b ? 1.0 : 0.0, c) << "V^T V [" << a << ", " << b << "]";
        }
}

INSTANTIATE_TEST_SUITE_P(Shapes, Svd,
                         ::testing::Values(SvdShape{1, 1}, SvdShape{7, 3}, SvdShape{3, 7},
                                           SvdShape{64, 33}, SvdShape{1, 5}),
                         [](const ::testing::TestParamInfo<SvdShape>& info) {
                             return "m" + std::to_string(info.param.m) + "_n" +
                                    std::to_string(info.param.n);
                         });

TEST(SvdErrors, ArgumentsAreNamed) {
    std::vector<float> A(6, 1.0f), U(6), S(2), Vt(6);
    EXPECT_EQ(lk_cpu_svd(-1, 3, A.data(), U.data(), S.data(), Vt.data()), LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("m = -1"), std::string::npos) << last_error();
    EXPECT_EQ(lk_cpu_svd(2, 3, nullptr, U.data(), S.data(), Vt.data()), LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("A is NULL"), std::string::npos) << last_error();
    EXPECT_EQ(lk_cpu_svd(2, 3, A.data(), U.data(), nullptr, Vt.data()), LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("S is NULL"), std::string::npos) << last_error();
    EXPECT_EQ(lk_cpu_svd(0, 3, nullptr, nullptr, nullptr, nullptr), LK_OK);
}

// LAPACK's sgesdd never returns on +Inf and calls NaN an illegal argument: both are refused first,
// naming the first bad element.
TEST(SvdErrors, NonFiniteInputIsRefusedNamingTheElement) {
    for (float bad : {std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                      std::numeric_limits<float>::quiet_NaN()}) {
        std::vector<float> A(12, 1.0f), U(9), S(3), Vt(12);
        A[7] = bad;
        A[9] = std::numeric_limits<float>::quiet_NaN();
        EXPECT_EQ(lk_cpu_svd(3, 4, A.data(), U.data(), S.data(), Vt.data()), LK_ERR_INVALID_ARGUMENT);
        EXPECT_NE(last_error().find("A[7] (row 1, column 3)"), std::string::npos) << last_error();
    }
}

}  // namespace
}  // namespace cpu_test
