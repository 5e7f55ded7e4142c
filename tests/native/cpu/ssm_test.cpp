// lk_cpu_ssm_* against a direct sequential scan in double (Mamba's selective_scan_ref, written out here),
// the backward against central differences of that double forward for the loss Σ dy ⊙ y, the decode step
// against the scan (L steps from h0 reproduce y and the last state), and the convolution against its
// definition, with its backward by central differences too.
//
// Tolerances: normwise (the scan multiplies exponentials, so Σ|terms| of absolute inputs bounds nothing):
// |got - want| <= 1e-6 + K·2^-24·max|want| with K = 32 per step chain (softplus, exp, two products and the
// N-term sum; the decays keep earlier steps' errors from growing) and K = 32 + 2·D for dB, dC (summed over D
// channels). Central differences use h = 1e-3 on a double forward: truncation O(h²) ≈ 1e-6 relative,
// inside the 1e-5 normwise bound they get.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "reference.h"

namespace cpu_test {
namespace {

struct Scan {
    int64_t batch, L, D, N;
    std::vector<float> u, delta, delta_bias, A, B, C, Dskip, z, h0;
};

Scan make_scan(int64_t batch, int64_t L, int64_t D, int64_t N, uint64_t seed) {
    Rng rng(seed);
    Scan s{batch, L, D, N, rng.vector(batch * L * D), rng.vector(batch * L * D), rng.vector(D), rng.vector(D * N),
           rng.vector(batch * L * N), rng.vector(batch * L * N), rng.vector(D), rng.vector(batch * L * D), rng.vector(batch * D * N)};
    for (float& a : s.A) a = -4.0f * std::fabs(a);  // Mamba's A = -exp(A_log) < 0
    return s;
}

double softplus(double x) { return x <= 20.0 ? std::log1p(std::exp(x)) : x; }
double silu(double x) { return x / (1.0 + std::exp(-x)); }

// y in double, and the last state, straight from the definition.
std::vector<double> reference_scan(const Scan& s, std::vector<double>* last = nullptr) {
    std::vector<double> y((size_t)(s.batch * s.L * s.D));
    if (last) last->assign((size_t)(s.batch * s.D * s.N), 0.0);
    for (int64_t b = 0; b < s.batch; ++b)
        for (int64_t d = 0; d < s.D; ++d) {
            std::vector<double> h((size_t)s.N);
            for (int64_t n = 0; n < s.N; ++n) h[(size_t)n] = s.h0[(size_t)((b * s.D + d) * s.N + n)];
            for (int64_t t = 0; t < s.L; ++t) {
                const int64_t r = b * s.L + t;
                const double dt = softplus((double)s.delta[(size_t)(r * s.D + d)] + s.delta_bias[(size_t)d]),
                             x = s.u[(size_t)(r * s.D + d)];
                double sum = 0.0;
                for (int64_t n = 0; n < s.N; ++n) {
                    h[(size_t)n] = std::exp(dt * s.A[(size_t)(d * s.N + n)]) * h[(size_t)n] + dt * s.B[(size_t)(r * s.N + n)] * x;
                    sum += s.C[(size_t)(r * s.N + n)] * h[(size_t)n];
                }
                y[(size_t)(r * s.D + d)] = (sum + s.Dskip[(size_t)d] * x) * silu(s.z[(size_t)(r * s.D + d)]);
            }
            if (last)
                for (int64_t n = 0; n < s.N; ++n) (*last)[(size_t)((b * s.D + d) * s.N + n)] = h[(size_t)n];
        }
    return y;
}

::testing::AssertionResult normwise(const char* what, const std::vector<float>& got, const std::vector<double>& want, double K) {
    double scale = 0.0;
    for (double v : want) scale = std::max(scale, std::fabs(v));
    if (!(scale > 1e-3)) return ::testing::AssertionFailure() << what << ": the reference is (near) zero";
    const double tol = 1e-6 + K * kUnitRoundoff * scale;
    for (size_t i = 0; i < want.size(); ++i)
        if (!(std::fabs(got[i] - want[i]) <= tol))
            return ::testing::AssertionFailure() << what << "[" << i << "] got " << got[i] << " want " << want[i] << " tol " << tol;
    return ::testing::AssertionSuccess();
}

// d(Σ dy ⊙ f) / d values[i] by central differences of a double function, h = 1e-3.
std::vector<double> central(std::vector<float>& values, const std::function<double()>& loss) {
    std::vector<double> grad(values.size());
    for (size_t i = 0; i < values.size(); ++i) {
        const float saved = values[i];
        const double h = 1e-3;
        values[i] = (float)(saved + h);
        const double up = loss(), step_up = (double)values[i] - saved;
        values[i] = (float)(saved - h);
        const double down = loss(), step_down = saved - (double)values[i];
        values[i] = saved;
        grad[i] = (up - down) / (step_up + step_down);
    }
    return grad;
}

struct ScanShape {
    int64_t batch, L, D, N;
};

class SsmScan : public ::testing::TestWithParam<ScanShape> {};

TEST_P(SsmScan, ForwardMatchesSequentialReference) {
    const ScanShape p = GetParam();
    const Scan s = make_scan(p.batch, p.L, p.D, p.N, 9000);
    std::vector<double> want_last;
    const std::vector<double> want = reference_scan(s, &want_last);
    std::vector<float> y(want.size(), NAN), last(want_last.size(), NAN);
    ASSERT_EQ(lk_cpu_ssm_scan_forward(s.batch, s.L, s.D, s.N, s.u.data(), s.D, s.delta.data(), s.D, s.delta_bias.data(),
                                      s.A.data(), s.B.data(), s.C.data(), s.N, s.Dskip.data(), s.z.data(), s.D, s.h0.data(),
                                      y.data(), s.D, last.data()),
              LK_OK)
        << last_error();
    EXPECT_TRUE(normwise("y", y, want, 32));
    EXPECT_TRUE(normwise("last state", last, want_last, 32));
}

TEST_P(SsmScan, BackwardMatchesCentralDifferences) {
    const ScanShape p = GetParam();
    Scan s = make_scan(p.batch, p.L, p.D, p.N, 9100);
    Rng rng(9101);
    const std::vector<float> dy = rng.vector(s.batch * s.L * s.D);
    auto loss = [&] {
        const std::vector<double> y = reference_scan(s);
        double sum = 0.0;
        for (size_t i = 0; i < y.size(); ++i) sum += dy[i] * y[i];
        return sum;
    };
    const size_t rows = (size_t)(s.batch * s.L);
    std::vector<float> du(rows * s.D, NAN), ddelta(rows * s.D, NAN), dB(rows * s.N, NAN), dC(rows * s.N, NAN), dz(rows * s.D, NAN);
    ASSERT_EQ(lk_cpu_ssm_scan_backward(s.batch, s.L, s.D, s.N, s.u.data(), s.D, s.delta.data(), s.D, s.delta_bias.data(),
                                       s.A.data(), s.B.data(), s.C.data(), s.N, s.Dskip.data(), s.z.data(), s.D, s.h0.data(),
                                       dy.data(), s.D, du.data(), s.D, ddelta.data(), s.D, dB.data(), dC.data(), s.N, dz.data(),
                                       s.D),
              LK_OK)
        << last_error();
    const double K = 32 + 2 * (double)s.D;
    EXPECT_TRUE(normwise("du", du, central(s.u, loss), K + 200));  // + h²-truncation (1e-5 relative)
    EXPECT_TRUE(normwise("ddelta", ddelta, central(s.delta, loss), K + 200));
    EXPECT_TRUE(normwise("dB", dB, central(s.B, loss), K + 200));
    EXPECT_TRUE(normwise("dC", dC, central(s.C, loss), K + 200));
    EXPECT_TRUE(normwise("dz", dz, central(s.z, loss), K + 200));
}

TEST_P(SsmScan, DecodeStepsReproduceTheScan) {
    const ScanShape p = GetParam();
    const Scan s = make_scan(p.batch, p.L, p.D, p.N, 9200);
    std::vector<double> want_last;
    const std::vector<double> want = reference_scan(s, &want_last);
    std::vector<float> h = s.h0, y(want.size(), NAN), row((size_t)(s.batch * s.D));
    for (int64_t t = 0; t < s.L; ++t) {
        // Step t takes row t of every sequence: rows b·L + t, a stride of L rows between the sequences.
        const int64_t offset = t * s.D, ld = s.L * s.D, ld_bc = s.L * s.N;
        ASSERT_EQ(lk_cpu_ssm_step(s.batch, s.D, s.N, s.u.data() + offset, ld, s.delta.data() + offset, ld, s.delta_bias.data(),
                                  s.A.data(), s.B.data() + t * s.N, s.C.data() + t * s.N, ld_bc, s.Dskip.data(),
                                  s.z.data() + offset, ld, h.data(), y.data() + offset, ld),
                  LK_OK)
            << last_error();
    }
    EXPECT_TRUE(normwise("y by steps", y, want, 32));
    EXPECT_TRUE(normwise("state after the steps", h, want_last, 32));
}

INSTANTIATE_TEST_SUITE_P(Shapes, SsmScan,
                         ::testing::Values(ScanShape{1, 1, 3, 16}, ScanShape{2, 17, 5, 4}, ScanShape{1, 40, 33, 16}),
                         [](const ::testing::TestParamInfo<ScanShape>& info) {
                             return "B" + std::to_string(info.param.batch) + "_L" + std::to_string(info.param.L) + "_D" +
                                    std::to_string(info.param.D) + "_N" + std::to_string(info.param.N);
                         });

TEST(SsmConv, ForwardAndBackwardMatchTheDefinition) {
    const int64_t batch = 2, L = 11, D = 5, K = 4;
    Rng rng(9300);
    std::vector<float> x = rng.vector(batch * L * D), weight = rng.vector(D * K), bias = rng.vector(D), dy = rng.vector(batch * L * D);
    auto forward = [&] {
        std::vector<double> y((size_t)(batch * L * D));
        for (int64_t b = 0; b < batch; ++b)
            for (int64_t t = 0; t < L; ++t)
                for (int64_t d = 0; d < D; ++d) {
                    double pre = bias[(size_t)d];
                    for (int64_t j = 0; j < K; ++j)
                        if (t - K + 1 + j >= 0) pre += (double)weight[(size_t)(d * K + j)] * x[(size_t)(((b * L) + t - K + 1 + j) * D + d)];
                    y[(size_t)((b * L + t) * D + d)] = silu(pre);
                }
        return y;
    };
    std::vector<float> y((size_t)(batch * L * D), NAN), dx(y.size(), NAN);
    ASSERT_EQ(lk_cpu_ssm_conv_forward(batch, L, D, K, x.data(), D, weight.data(), bias.data(), y.data(), D), LK_OK) << last_error();
    EXPECT_TRUE(normwise("conv y", y, forward(), 32));
    ASSERT_EQ(lk_cpu_ssm_conv_backward(batch, L, D, K, x.data(), D, weight.data(), bias.data(), dy.data(), D, dx.data(), D), LK_OK)
        << last_error();
    auto loss = [&] {
        const std::vector<double> out = forward();
        double sum = 0.0;
        for (size_t i = 0; i < out.size(); ++i) sum += dy[i] * out[i];
        return sum;
    };
    EXPECT_TRUE(normwise("conv dx", dx, central(x, loss), 232));

    // K steps from an empty window reproduce the forward's first rows of the first sequence.
    std::vector<float> state((size_t)(D * (K - 1)), 0.0f), step((size_t)D);
    const std::vector<double> want = forward();
    for (int64_t t = 0; t < L; ++t) {
        ASSERT_EQ(lk_cpu_ssm_conv_step(1, D, K, x.data() + t * D, D, weight.data(), bias.data(), state.data(), step.data(), D), LK_OK);
        EXPECT_TRUE(normwise("conv step", step, std::vector<double>(want.begin() + t * D, want.begin() + (t + 1) * D), 32)) << "t " << t;
    }
}

TEST(SsmArguments, TooManyStatesAreRejected) {
    const float v[32] = {};
    float y[32];
    EXPECT_EQ(lk_cpu_ssm_scan_forward(1, 1, 1, LK_SSM_MAX_STATE + 1, v, 1, v, 1, nullptr, v, v, v, LK_SSM_MAX_STATE + 1, v,
                                      nullptr, 0, nullptr, y, 1, nullptr),
              LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("N = 17 states is over LK_SSM_MAX_STATE = 16"), std::string::npos) << last_error();
    EXPECT_EQ(lk_cpu_ssm_scan_forward(1, 2, 3, 2, v, 2, v, 3, nullptr, v, v, v, 2, v, nullptr, 0, nullptr, y, 3, nullptr),
              LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("ld_u = 2 is smaller than the stored row length 3"), std::string::npos) << last_error();
}

}  // namespace
}  // namespace cpu_test
