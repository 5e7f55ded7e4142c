// lk_cpu_moe_* against naive double-precision references: gather, the weighted combine (and the plain
// sum with gates NULL), its backward, SwiGLU and its backward (the latter also against central
// differences of the double forward). Routing tables come from a random top-k choice of E = 5 experts
// per token, sorted by expert, as the MoE layer builds them. Shapes: T in {1, 7, 33}, k in {1, 2, 3},
// widths that are multiples of no vector width.
//
// Tolerances: copies are exact; a sum of k weighted rows errs by at most (k + 1)·2^-24·Σ|terms|
// (1e-6 absolute floor); the dgates dot products are summed in double (2^-24 of the result for its
// final rounding, 1e-6 floor). SwiGLU: silu(g)·u with one exponential, a division and two products
// errs by a few ulps: 8·2^-24·|result| + 1e-7.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "reference.h"

namespace cpu_test {
namespace {

constexpr int64_t kExperts = 5;

// The MoE layer's routing tables for T tokens choosing k distinct experts each: tokens[p] and gates[p]
// in sorted (by expert, then token) order, positions[t·k + j] the sorted position of choice j.
struct Routing {
    std::vector<int32_t> tokens, positions;
    std::vector<float> gates;
};

Routing make_routing(Rng& rng, int64_t T, int64_t k) {
    std::vector<std::vector<int64_t>> choice((size_t)T);
    for (auto& c : choice) {
        std::vector<int64_t> experts(kExperts);
        std::iota(experts.begin(), experts.end(), 0);
        for (int64_t i = kExperts - 1; i > 0; --i) std::swap(experts[(size_t)i], experts[rng.next_u32() % (i + 1)]);
        c.assign(experts.begin(), experts.begin() + k);
    }
    Routing r{std::vector<int32_t>((size_t)(T * k)), std::vector<int32_t>((size_t)(T * k)), std::vector<float>((size_t)(T * k))};
    int64_t p = 0;
    for (int64_t e = 0; e < kExperts; ++e)
        for (int64_t t = 0; t < T; ++t)
            for (int64_t j = 0; j < k; ++j)
                if (choice[(size_t)t][(size_t)j] == e) {
                    r.tokens[(size_t)p] = (int32_t)t;
                    r.positions[(size_t)(t * k + j)] = (int32_t)p;
                    r.gates[(size_t)p] = 0.25f + 0.5f * (float)(rng.next_u32() % 1000) / 1000.0f;
                    ++p;
                }
    return r;
}

struct MoeShape {
    int64_t T, k, width;
};

class MoeRows : public ::testing::TestWithParam<MoeShape> {};

TEST_P(MoeRows, GatherCombineAndBackwardMatchReference) {
    const MoeShape s = GetParam();
    Rng rng(7000 + (uint64_t)(s.T * 10 + s.k));
    const int64_t P = s.T * s.k;
    const Routing routing = make_routing(rng, s.T, s.k);
    const std::vector<float> x = rng.vector(s.T * s.width), o = rng.vector(P * s.width), bias = rng.vector(s.width),
                             dy = rng.vector(s.T * s.width);

    std::vector<float> xs((size_t)(P * s.width), NAN);
    ASSERT_EQ(lk_cpu_moe_gather(P, s.width, x.data(), routing.tokens.data(), xs.data()), LK_OK) << last_error();
    for (int64_t p = 0; p < P; ++p)
        for (int64_t c = 0; c < s.width; ++c)
            ASSERT_EQ(xs[(size_t)(p * s.width + c)], x[(size_t)(routing.tokens[(size_t)p] * s.width + c)]) << "p " << p;

    for (bool weighted : {true, false}) {
        SCOPED_TRACE(weighted ? "weighted, with bias" : "plain sum");
        std::vector<double> ref((size_t)(s.T * s.width)), mag(ref.size());
        for (int64_t t = 0; t < s.T; ++t)
            for (int64_t c = 0; c < s.width; ++c) {
                double sum = weighted ? bias[(size_t)c] : 0.0, m = std::fabs(sum);
                for (int64_t j = 0; j < s.k; ++j) {
                    const int64_t p = routing.positions[(size_t)(t * s.k + j)];
                    const double term = (weighted ? (double)routing.gates[(size_t)p] : 1.0) * o[(size_t)(p * s.width + c)];
                    sum += term;
                    m += std::fabs(term);
                }
                ref[(size_t)(t * s.width + c)] = sum;
                mag[(size_t)(t * s.width + c)] = m;
            }
        std::vector<float> y((size_t)(s.T * s.width), NAN);
        ASSERT_EQ(lk_cpu_moe_combine(s.T, s.k, s.width, o.data(), routing.positions.data(),
                                     weighted ? routing.gates.data() : nullptr, weighted ? bias.data() : nullptr, y.data()),
                  LK_OK)
            << last_error();
        EXPECT_TRUE(all_near(y.data(), s.width, s.T, s.width, ref, mag, 1e-6, (double)(s.k + 1) * kUnitRoundoff));
    }

    std::vector<double> d_o_ref((size_t)(P * s.width)), d_o_mag(d_o_ref.size()), dg_ref((size_t)P), dg_mag((size_t)P);
    for (int64_t p = 0; p < P; ++p) {
        const int64_t t = routing.tokens[(size_t)p];
        for (int64_t c = 0; c < s.width; ++c) {
            const double g = dy[(size_t)(t * s.width + c)];
            d_o_ref[(size_t)(p * s.width + c)] = routing.gates[(size_t)p] * g;
            d_o_mag[(size_t)(p * s.width + c)] = std::fabs(d_o_ref[(size_t)(p * s.width + c)]);
            dg_ref[(size_t)p] += g * o[(size_t)(p * s.width + c)];
        }
        dg_mag[(size_t)p] = std::fabs(dg_ref[(size_t)p]);
    }
    std::vector<float> d_o((size_t)(P * s.width), NAN), dgates((size_t)P, NAN);
    ASSERT_EQ(lk_cpu_moe_combine_backward(P, s.width, dy.data(), o.data(), routing.tokens.data(), routing.gates.data(),
                                          d_o.data(), dgates.data()),
              LK_OK)
        << last_error();
    EXPECT_TRUE(all_near(d_o.data(), s.width, P, s.width, d_o_ref, d_o_mag, 0.0, kUnitRoundoff));
    EXPECT_TRUE(all_near(dgates.data(), 1, P, 1, dg_ref, dg_mag, 1e-6, kUnitRoundoff));
}

INSTANTIATE_TEST_SUITE_P(Shapes, MoeRows,
                         ::testing::Values(MoeShape{1, 1, 7}, MoeShape{7, 2, 33}, MoeShape{33, 3, 17}, MoeShape{33, 2, 130}),
                         [](const ::testing::TestParamInfo<MoeShape>& info) {
                             return "T" + std::to_string(info.param.T) + "_k" + std::to_string(info.param.k) + "_w" +
                                    std::to_string(info.param.width);
                         });

double silu(double g) { return g / (1.0 + std::exp(-g)); }

TEST(MoeSwiGlu, MatchesReferenceAndCentralDifferences) {
    Rng rng(7100);
    const int64_t n = 1031;
    std::vector<float> g = rng.vector(n), u = rng.vector(n), dh = rng.vector(n);
    for (int64_t i = 0; i < n; ++i) g[(size_t)i] *= 8.0f;  // both tails of the sigmoid, |g| up to 8
    g[0] = 30.0f;
    g[1] = -30.0f;  // saturated: e^-|g| underflows nothing, the formula must not overflow
    std::vector<double> h_ref((size_t)n), dg_ref((size_t)n), du_ref((size_t)n), h_mag((size_t)n), dg_mag((size_t)n), du_mag((size_t)n);
    for (int64_t i = 0; i < n; ++i) {
        const double gi = g[(size_t)i], ui = u[(size_t)i], di = dh[(size_t)i], step = 1e-4 * std::max(1.0, std::fabs(gi));
        h_ref[(size_t)i] = silu(gi) * ui;
        du_ref[(size_t)i] = di * silu(gi);
        dg_ref[(size_t)i] = di * ui * (silu(gi + step) - silu(gi - step)) / (2 * step);  // central difference
        h_mag[(size_t)i] = std::fabs(h_ref[(size_t)i]);
        du_mag[(size_t)i] = std::fabs(du_ref[(size_t)i]);
        dg_mag[(size_t)i] = std::fabs(di * ui);  // |silu'| <= 1.1: the bound scales with |dh·u|
    }
    std::vector<float> h((size_t)n, NAN), dg((size_t)n, NAN), du((size_t)n, NAN);
    ASSERT_EQ(lk_cpu_moe_swiglu(n, g.data(), u.data(), h.data()), LK_OK) << last_error();
    ASSERT_EQ(lk_cpu_moe_swiglu_backward(n, g.data(), u.data(), dh.data(), dg.data(), du.data()), LK_OK) << last_error();
    EXPECT_TRUE(all_near(h.data(), 1, n, 1, h_ref, h_mag, 1e-7, 8 * kUnitRoundoff));
    EXPECT_TRUE(all_near(du.data(), 1, n, 1, du_ref, du_mag, 1e-7, 8 * kUnitRoundoff));
    // The central difference errs by O(step²·|silu'''|) ≈ 1e-8·|g|², far inside 1e-6.
    EXPECT_TRUE(all_near(dg.data(), 1, n, 1, dg_ref, dg_mag, 1e-7, 1e-6));
}

TEST(MoeArguments, NullsAreRejected) {
    const float v[2] = {1, 2};
    const int32_t t[1] = {0};
    float out[2];
    EXPECT_EQ(lk_cpu_moe_gather(1, 2, nullptr, t, out), LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("x is NULL"), std::string::npos) << last_error();
    EXPECT_EQ(lk_cpu_moe_combine(1, 1, 2, v, nullptr, nullptr, nullptr, out), LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("positions is NULL"), std::string::npos) << last_error();
    EXPECT_EQ(lk_cpu_moe_combine_backward(1, 2, v, nullptr, t, v, nullptr, out), LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("o is NULL"), std::string::npos) << last_error();
}

}  // namespace
}  // namespace cpu_test
