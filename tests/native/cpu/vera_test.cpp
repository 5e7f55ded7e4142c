// lk_cpu_vera_forward / _backward / _merge against naive double-precision references.
//
// Every case reads its layer's slices out of larger shared projections, as VeRA layers do: A is
// the top-left [r, in] of a [r, in + 5] vera_A (row stride lda = in + 5) and B the first `out`
// rows of a [out + 3, r] vera_B, so a kernel that ignores lda or reads past the slice fails.
// Shapes: M in {1, 7, 33} (one row, a prime, past the CPU's dot-product cutoff of 32), in/out
// multiples of no micro-tile, r in {1, 8, 17}; dropout 0 and 0.3; with and without bias.
//
// Tolerances, per element, as lora_test.cpp (u = 2^-24, L the longest fp32 reduction chain that
// feeds the element, magnitude the sum of |terms| of the exact expression):
//   |got - ref| <= 1e-6 + 4 * (L + 2) * u * magnitude
// The fold B' = lambda_b * B * lambda_d adds two roundings per term, inside the "+ 2".
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "reference.h"

namespace cpu_test {
namespace {

constexpr double kAtol = 1e-6;
double rtol(int64_t longest_reduction) {
    return 4.0 * (double)(longest_reduction + 2) * kUnitRoundoff;
}
const float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr int64_t kExtraIn = 5, kExtraOut = 3;  // vera_A / vera_B larger than the layer

struct VeraShape {
    int64_t M, in, out, r;
};

std::string vera_name(const VeraShape& s) {
    return "M" + std::to_string(s.M) + "_in" + std::to_string(s.in) + "_out" +
           std::to_string(s.out) + "_r" + std::to_string(s.r);
}

void PrintTo(const VeraShape& s, std::ostream* os) { *os << vera_name(s); }

std::vector<VeraShape> vera_shapes() {
    std::vector<VeraShape> shapes;
    for (int64_t M : {1, 7, 33})
        for (auto io : {std::pair<int64_t, int64_t>{37, 53}, {130, 71}})
            for (int64_t r : {1, 8, 17}) shapes.push_back({M, io.first, io.second, r});
    return shapes;
}

// One layer's data: x, W0, bias, the shared projections and the two vectors.
struct VeraCase {
    int64_t M, in, out, r, lda;
    std::vector<float> x, W0, bias, vera_A, vera_B, lambda_d, lambda_b;

    VeraCase(const VeraShape& s, uint64_t seed)
        : M(s.M), in(s.in), out(s.out), r(s.r), lda(s.in + kExtraIn) {
        Rng rng(seed);
        x = rng.vector(M * in);
        W0 = rng.vector(out * in);
        bias = rng.vector(out);
        vera_A = rng.vector(r * lda);
        vera_B = rng.vector((out + kExtraOut) * r);
        lambda_d = rng.vector(r);
        lambda_b = rng.vector(out);
    }
    double A(int64_t i, int64_t k) const { return vera_A[(size_t)(i * lda + k)]; }
    double B(int64_t j, int64_t i) const { return vera_B[(size_t)(j * r + i)]; }
};

std::vector<double> dropout_mask(int64_t M, int64_t in, uint64_t seed, float p) {
    std::vector<double> mask((size_t)(M * in));
    for (int64_t i = 0; i < M * in; ++i) mask[(size_t)i] = dropout_factor(seed, (uint64_t)i, p);
    return mask;
}

// ---- forward ---------------------------------------------------------------------------------

class VeraForward : public ::testing::TestWithParam<VeraShape> {};

TEST_P(VeraForward, MatchesReference) {
    const VeraCase c(GetParam(), 3000);
    const int64_t M = c.M, in = c.in, out = c.out, r = c.r;
    for (float p : {0.0f, 0.3f}) {
        const uint64_t seed = 0xFEED + (uint64_t)r;
        const std::vector<double> mask = dropout_mask(M, in, seed, p);
        // u = dropout(x) A^T with its magnitudes
        std::vector<double> u_ref((size_t)(M * r)), u_mag((size_t)(M * r));
        for (int64_t m = 0; m < M; ++m)
            for (int64_t i = 0; i < r; ++i) {
                double sum = 0.0, mag = 0.0;
                for (int64_t k = 0; k < in; ++k) {
                    const double term = mask[(size_t)(m * in + k)] * c.x[(size_t)(m * in + k)] * c.A(i, k);
                    sum += term;
                    mag += std::fabs(term);
                }
                u_ref[(size_t)(m * r + i)] = sum;
                u_mag[(size_t)(m * r + i)] = mag;
            }
        for (bool with_bias : {false, true}) {
            SCOPED_TRACE(vera_name(GetParam()) + (with_bias ? " bias" : " no-bias") +
                         " dropout=" + std::to_string(p));
            // y = x W0^T + bias + lambda_b .* ((lambda_d .* u) B^T)
            std::vector<double> y_ref((size_t)(M * out)), y_mag((size_t)(M * out));
            for (int64_t m = 0; m < M; ++m)
                for (int64_t j = 0; j < out; ++j) {
                    double sum = with_bias ? c.bias[(size_t)j] : 0.0;
                    double mag = std::fabs(sum);
                    for (int64_t k = 0; k < in; ++k) {
                        const double term = (double)c.x[(size_t)(m * in + k)] * c.W0[(size_t)(j * in + k)];
                        sum += term;
                        mag += std::fabs(term);
                    }
                    for (int64_t i = 0; i < r; ++i) {
                        const double factor = (double)c.lambda_b[(size_t)j] * c.lambda_d[(size_t)i] * c.B(j, i);
                        sum += factor * u_ref[(size_t)(m * r + i)];
                        mag += std::fabs(factor) * u_mag[(size_t)(m * r + i)];
                    }
                    y_ref[(size_t)(m * out + j)] = sum;
                    y_mag[(size_t)(m * out + j)] = mag;
                }
            std::vector<float> y((size_t)(M * out), kNaN), u((size_t)(M * r), kNaN);
            ASSERT_EQ(lk_cpu_vera_forward(M, in, out, r, c.x.data(), c.W0.data(),
                                          with_bias ? c.bias.data() : nullptr, c.vera_A.data(), c.lda,
                                          c.vera_B.data(), c.lambda_d.data(), c.lambda_b.data(), p, seed,
                                          y.data(), u.data()),
                      LK_OK)
                << last_error();
            EXPECT_TRUE(all_near(u.data(), r, M, r, u_ref, u_mag, kAtol, rtol(in)));
            EXPECT_TRUE(all_near(y.data(), out, M, out, y_ref, y_mag, kAtol, rtol(in + r)));
        }
    }
}

INSTANTIATE_TEST_SUITE_P(Shapes, VeraForward, ::testing::ValuesIn(vera_shapes()),
                         [](const ::testing::TestParamInfo<VeraShape>& info) {
                             return vera_name(info.param);
                         });

// ---- backward --------------------------------------------------------------------------------

class VeraBackward : public ::testing::TestWithParam<VeraShape> {};

TEST_P(VeraBackward, MatchesReference) {
    const VeraCase c(GetParam(), 4000);
    const int64_t M = c.M, in = c.in, out = c.out, r = c.r;
    Rng rng(4001);
    const std::vector<float> u = rng.vector(M * r), dy = rng.vector(M * out);

    // dlambda_b[j] = sum_t dy[t,j] sum_i lambda_d[i] u[t,i] B[j,i]
    // dv[t,i] = sum_j dy[t,j] lambda_b[j] B[j,i];  dlambda_d[i] = sum_t dv[t,i] u[t,i]
    std::vector<double> db_ref((size_t)out), db_mag((size_t)out), dd_ref((size_t)r, 0.0),
        dd_mag((size_t)r, 0.0), dv((size_t)(M * r), 0.0), dv_mag((size_t)(M * r), 0.0);
    for (int64_t j = 0; j < out; ++j) {
        double sum = 0.0, mag = 0.0;
        for (int64_t t = 0; t < M; ++t)
            for (int64_t i = 0; i < r; ++i) {
                const double term = (double)dy[(size_t)(t * out + j)] * c.lambda_d[(size_t)i] *
                                    u[(size_t)(t * r + i)] * c.B(j, i);
                sum += term;
                mag += std::fabs(term);
            }
        db_ref[(size_t)j] = sum;
        db_mag[(size_t)j] = mag;
    }
    for (int64_t t = 0; t < M; ++t)
        for (int64_t i = 0; i < r; ++i)
            for (int64_t j = 0; j < out; ++j) {
                const double term = (double)dy[(size_t)(t * out + j)] * c.lambda_b[(size_t)j] * c.B(j, i);
                dv[(size_t)(t * r + i)] += term;
                dv_mag[(size_t)(t * r + i)] += std::fabs(term);
            }
    for (int64_t i = 0; i < r; ++i)
        for (int64_t t = 0; t < M; ++t) {
            dd_ref[(size_t)i] += dv[(size_t)(t * r + i)] * u[(size_t)(t * r + i)];
            dd_mag[(size_t)i] += dv_mag[(size_t)(t * r + i)] * std::fabs((double)u[(size_t)(t * r + i)]);
        }

    for (float p : {0.0f, 0.3f}) {
        const uint64_t seed = 0xBEEF + (uint64_t)r;
        const std::vector<double> mask = dropout_mask(M, in, seed, p);
        // dx = dy W0 + mask .* ((dv .* lambda_d) A)
        std::vector<double> dx_ref((size_t)(M * in)), dx_mag((size_t)(M * in));
        for (int64_t t = 0; t < M; ++t)
            for (int64_t k = 0; k < in; ++k) {
                double sum = 0.0, mag = 0.0, lora = 0.0, lora_mag = 0.0;
                for (int64_t j = 0; j < out; ++j) {
                    const double term = (double)dy[(size_t)(t * out + j)] * c.W0[(size_t)(j * in + k)];
                    sum += term;
                    mag += std::fabs(term);
                }
                for (int64_t i = 0; i < r; ++i) {
                    const double factor = (double)c.lambda_d[(size_t)i] * c.A(i, k);
                    lora += factor * dv[(size_t)(t * r + i)];
                    lora_mag += std::fabs(factor) * dv_mag[(size_t)(t * r + i)];
                }
                const double f = mask[(size_t)(t * in + k)];
                dx_ref[(size_t)(t * in + k)] = sum + f * lora;
                dx_mag[(size_t)(t * in + k)] = mag + f * lora_mag;
            }
        for (int outputs = 0; outputs < 4; ++outputs) {  // all, dx only, dlambda_d only, dlambda_b only
            const bool want_dx = outputs == 0 || outputs == 1;
            const bool want_dd = outputs == 0 || outputs == 2;
            const bool want_db = outputs == 0 || outputs == 3;
            SCOPED_TRACE(vera_name(GetParam()) + " outputs=" + std::to_string(outputs) +
                         " dropout=" + std::to_string(p));
            std::vector<float> dx((size_t)(M * in), kNaN), dd((size_t)r, kNaN), db((size_t)out, kNaN);
            ASSERT_EQ(lk_cpu_vera_backward(M, in, out, r, c.W0.data(), c.vera_A.data(), c.lda,
                                           c.vera_B.data(), c.lambda_d.data(), c.lambda_b.data(), u.data(),
                                           dy.data(), p, seed, want_dx ? dx.data() : nullptr,
                                           want_dd ? dd.data() : nullptr, want_db ? db.data() : nullptr),
                      LK_OK)
                << last_error();
            if (want_dx) EXPECT_TRUE(all_near(dx.data(), in, M, in, dx_ref, dx_mag, kAtol, rtol(out + r)));
            else EXPECT_TRUE(std::isnan(dx[0])) << "dx was not requested but written";
            if (want_dd) EXPECT_TRUE(all_near(dd.data(), r, 1, r, dd_ref, dd_mag, kAtol, rtol(M + out)));
            else EXPECT_TRUE(std::isnan(dd[0])) << "dlambda_d was not requested but written";
            if (want_db) EXPECT_TRUE(all_near(db.data(), out, 1, out, db_ref, db_mag, kAtol, rtol(M + r)));
            else EXPECT_TRUE(std::isnan(db[0])) << "dlambda_b was not requested but written";
        }
    }
}

INSTANTIATE_TEST_SUITE_P(Shapes, VeraBackward, ::testing::ValuesIn(vera_shapes()),
                         [](const ::testing::TestParamInfo<VeraShape>& info) {
                             return vera_name(info.param);
                         });

// ---- merge -----------------------------------------------------------------------------------

TEST(VeraMerge, MergeAndUnmergeMatchReference_out53_in37_r8) {
    const VeraCase c({1, 37, 53, 8}, 5000);
    for (float scale : {1.0f, -1.0f}) {
        SCOPED_TRACE("scale=" + std::to_string(scale));
        std::vector<double> ref((size_t)(c.out * c.in)), mag((size_t)(c.out * c.in));
        for (int64_t j = 0; j < c.out; ++j)
            for (int64_t k = 0; k < c.in; ++k) {
                double sum = c.W0[(size_t)(j * c.in + k)], m = std::fabs(sum);
                for (int64_t i = 0; i < c.r; ++i) {
                    const double term = (double)scale * c.lambda_b[(size_t)j] * c.B(j, i) *
                                        c.lambda_d[(size_t)i] * c.A(i, k);
                    sum += term;
                    m += std::fabs(term);
                }
                ref[(size_t)(j * c.in + k)] = sum;
                mag[(size_t)(j * c.in + k)] = m;
            }
        std::vector<float> W = c.W0;
        ASSERT_EQ(lk_cpu_vera_merge(c.out, c.in, c.r, W.data(), c.vera_A.data(), c.lda, c.vera_B.data(),
                                    c.lambda_d.data(), c.lambda_b.data(), scale),
                  LK_OK)
            << last_error();
        EXPECT_TRUE(all_near(W.data(), c.in, c.out, c.in, ref, mag, kAtol, rtol(c.r)));
    }
}

// ---- arguments -------------------------------------------------------------------------------

TEST(VeraArguments, RejectsBadArgumentsNamingThem) {
    const VeraCase c({2, 5, 4, 3}, 6000);
    std::vector<float> y(2 * 4), u(2 * 3);
    // lda smaller than in: the slice would overlap the next row of vera_A.
    EXPECT_EQ(lk_cpu_vera_forward(2, 5, 4, 3, c.x.data(), c.W0.data(), nullptr, c.vera_A.data(), 4,
                                  c.vera_B.data(), c.lambda_d.data(), c.lambda_b.data(), 0.0f, 0, y.data(),
                                  u.data()),
              LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("lda"), std::string::npos) << last_error();
    EXPECT_EQ(lk_cpu_vera_forward(2, 5, 4, 0, c.x.data(), c.W0.data(), nullptr, c.vera_A.data(), c.lda,
                                  c.vera_B.data(), c.lambda_d.data(), c.lambda_b.data(), 0.0f, 0, y.data(),
                                  u.data()),
              LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("r ="), std::string::npos) << last_error();
    EXPECT_EQ(lk_cpu_vera_backward(2, 5, 4, 3, c.W0.data(), c.vera_A.data(), c.lda, c.vera_B.data(),
                                   nullptr, c.lambda_b.data(), u.data(), y.data(), 0.0f, 0, nullptr,
                                   u.data(), nullptr),
              LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("lambda_d"), std::string::npos) << last_error();
    std::vector<float> W = c.W0;
    EXPECT_EQ(lk_cpu_vera_merge(4, 5, 3, W.data(), c.vera_A.data(), c.lda, c.vera_B.data(),
                                c.lambda_d.data(), c.lambda_b.data(), std::numeric_limits<float>::infinity()),
              LK_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(W, c.W0) << "a rejected merge must not touch W";
}

}  // namespace
}  // namespace cpu_test
