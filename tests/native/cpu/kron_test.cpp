// lk_cpu_kron_forward / _backward / _merge against naive double-precision references that form
// kron(w1, w2) [out, in] explicitly (the kernels never do).
//
// Shapes: M in {1, 7, 33} (one row, a prime, past the CPU's dot-product cutoff of 16); factor
// shapes square and not, with primes (3, 5, 7, 11, 13), a factor of 1 (kron with a scalar), and a
// w1 larger than w2 (PEFT's factorization with decompose_factor can give either order).
//
// Tolerances, per element, as lora_test.cpp (u = 2^-24, L the longest fp32 chain of additions
// feeding the element, magnitude the sum of |terms| of the exact expression):
//   |got - ref| <= 1e-6 + 4 * (L + 2) * u * magnitude
// The adapter term is a chain of two sums (in_n, then in_m terms, or the backward's analogues)
// whose first result is rounded once more before the second: L = base length + both lengths.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "reference.h"

namespace cpu_test {
namespace {

constexpr double kAtol = 1e-6;
double rtol(int64_t longest_chain) { return 4.0 * (double)(longest_chain + 2) * kUnitRoundoff; }

struct KronShape {
    int64_t M, out_l, out_k, in_m, in_n;
    int64_t in() const { return in_m * in_n; }
    int64_t out() const { return out_l * out_k; }
};

std::string kron_name(const KronShape& s) {
    return "M" + std::to_string(s.M) + "_w1_" + std::to_string(s.out_l) + "x" + std::to_string(s.in_m) + "_w2_" +
           std::to_string(s.out_k) + "x" + std::to_string(s.in_n);
}

void PrintTo(const KronShape& s, std::ostream* os) { *os << kron_name(s); }

std::vector<KronShape> kron_shapes() {
    std::vector<KronShape> shapes;
    for (int64_t M : {1, 7, 33})
        for (KronShape f : {KronShape{0, 4, 4, 4, 4}, KronShape{0, 3, 5, 7, 11}, KronShape{0, 1, 13, 5, 1},
                            KronShape{0, 11, 2, 6, 3}})
            shapes.push_back({M, f.out_l, f.out_k, f.in_m, f.in_n});
    return shapes;
}

struct KronCase {
    KronShape s;
    float scale = 0.75f;
    std::vector<float> x, W0, bias, w1, w2, dy;

    KronCase(const KronShape& shape, uint64_t seed) : s(shape) {
        Rng rng(seed);
        x = rng.vector(s.M * s.in());
        W0 = rng.vector(s.out() * s.in());
        bias = rng.vector(s.out());
        w1 = rng.vector(s.out_l * s.in_m);
        w2 = rng.vector(s.out_k * s.in_n);
        dy = rng.vector(s.M * s.out());
    }
    // kron(w1, w2)[o, i] in double, with o = a*out_k + p, i = j*in_n + q.
    double delta(int64_t o, int64_t i) const {
        const int64_t a = o / s.out_k, p = o % s.out_k, j = i / s.in_n, q = i % s.in_n;
        return (double)w1[(size_t)(a * s.in_m + j)] * (double)w2[(size_t)(p * s.in_n + q)];
    }
    int64_t workspace_floats() const { return s.M * s.in_m * s.out_k; }
};

class KronForward : public ::testing::TestWithParam<KronShape> {};

TEST_P(KronForward, MatchesTheDenseKroneckerProduct) {
    const KronCase c(GetParam(), 101);
    const KronShape& s = c.s;
    std::vector<double> ref((size_t)(s.M * s.out())), magnitude(ref.size());
    for (int64_t m = 0; m < s.M; ++m)
        for (int64_t o = 0; o < s.out(); ++o) {
            double sum = c.bias[(size_t)o], mag = std::fabs(sum);
            for (int64_t i = 0; i < s.in(); ++i) {
                const double xi = c.x[(size_t)(m * s.in() + i)];
                const double base = (double)c.W0[(size_t)(o * s.in() + i)] * xi;
                const double adapter = c.scale * c.delta(o, i) * xi;
                sum += base + adapter;
                mag += std::fabs(base) + std::fabs(adapter);
            }
            ref[(size_t)(m * s.out() + o)] = sum;
            magnitude[(size_t)(m * s.out() + o)] = mag;
        }
    std::vector<float> y((size_t)(s.M * s.out()), std::nanf("")), workspace((size_t)c.workspace_floats());
    ASSERT_EQ(lk_cpu_kron_forward(s.M, s.out_l, s.out_k, s.in_m, s.in_n, c.x.data(), c.W0.data(), c.bias.data(),
                                  c.w1.data(), c.w2.data(), c.scale, workspace.data(), y.data()),
              LK_OK)
        << last_error();
    EXPECT_TRUE(all_near(y.data(), s.out(), s.M, s.out(), ref, magnitude, kAtol, rtol(s.in() + s.in_m + s.in_n)));
}

INSTANTIATE_TEST_SUITE_P(Shapes, KronForward, ::testing::ValuesIn(kron_shapes()),
                         [](const auto& info) { return kron_name(info.param); });

class KronBackward : public ::testing::TestWithParam<KronShape> {};

TEST_P(KronBackward, MatchesTheDenseKroneckerProduct) {
    const KronCase c(GetParam(), 202);
    const KronShape& s = c.s;
    // dx = dy (W0 + s K); dw1[a, j] = s sum_{m, p, q} dy[m, a*out_k + p] w2[p, q] x[m, j*in_n + q];
    // dw2[p, q] = s sum_{m, a, j} dy[m, a*out_k + p] w1[a, j] x[m, j*in_n + q].
    std::vector<double> dx((size_t)(s.M * s.in())), dx_mag(dx.size());
    for (int64_t m = 0; m < s.M; ++m)
        for (int64_t i = 0; i < s.in(); ++i) {
            double sum = 0, mag = 0;
            for (int64_t o = 0; o < s.out(); ++o) {
                const double g = c.dy[(size_t)(m * s.out() + o)];
                const double t = g * ((double)c.W0[(size_t)(o * s.in() + i)] + c.scale * c.delta(o, i));
                sum += t;
                mag += std::fabs(g * c.W0[(size_t)(o * s.in() + i)]) + std::fabs(g * c.scale * c.delta(o, i));
            }
            dx[(size_t)(m * s.in() + i)] = sum;
            dx_mag[(size_t)(m * s.in() + i)] = mag;
        }
    std::vector<double> dw1((size_t)(s.out_l * s.in_m), 0.0), dw1_mag(dw1.size(), 0.0);
    std::vector<double> dw2((size_t)(s.out_k * s.in_n), 0.0), dw2_mag(dw2.size(), 0.0);
    for (int64_t m = 0; m < s.M; ++m)
        for (int64_t a = 0; a < s.out_l; ++a)
            for (int64_t p = 0; p < s.out_k; ++p)
                for (int64_t j = 0; j < s.in_m; ++j)
                    for (int64_t q = 0; q < s.in_n; ++q) {
                        const double g = c.dy[(size_t)(m * s.out() + a * s.out_k + p)] * c.scale;
                        const double xv = c.x[(size_t)(m * s.in() + j * s.in_n + q)];
                        const double t1 = g * c.w2[(size_t)(p * s.in_n + q)] * xv;
                        const double t2 = g * c.w1[(size_t)(a * s.in_m + j)] * xv;
                        dw1[(size_t)(a * s.in_m + j)] += t1;
                        dw1_mag[(size_t)(a * s.in_m + j)] += std::fabs(t1);
                        dw2[(size_t)(p * s.in_n + q)] += t2;
                        dw2_mag[(size_t)(p * s.in_n + q)] += std::fabs(t2);
                    }
    std::vector<float> gx((size_t)(s.M * s.in()), std::nanf("")), g1(dw1.size(), std::nanf("")),
        g2(dw2.size(), std::nanf("")), workspace((size_t)c.workspace_floats());
    ASSERT_EQ(lk_cpu_kron_backward(s.M, s.out_l, s.out_k, s.in_m, s.in_n, c.x.data(), c.W0.data(), c.w1.data(),
                                   c.w2.data(), c.dy.data(), c.scale, workspace.data(), gx.data(), g1.data(), g2.data()),
              LK_OK)
        << last_error();
    EXPECT_TRUE(all_near(gx.data(), s.in(), s.M, s.in(), dx, dx_mag, kAtol, rtol(s.out() + s.out_l + s.out_k)));
    EXPECT_TRUE(all_near(g1.data(), s.in_m, s.out_l, s.in_m, dw1, dw1_mag, kAtol,
                         rtol(s.M * s.out_k + s.in_n)));
    EXPECT_TRUE(all_near(g2.data(), s.in_n, s.out_k, s.in_n, dw2, dw2_mag, kAtol,
                         rtol(s.M * s.in_m + s.out_l)));

    // Each output alone gives the same values (no output depends on another being requested).
    std::vector<float> only((size_t)(s.out_l * s.in_m), std::nanf(""));
    ASSERT_EQ(lk_cpu_kron_backward(s.M, s.out_l, s.out_k, s.in_m, s.in_n, c.x.data(), nullptr, c.w1.data(),
                                   c.w2.data(), c.dy.data(), c.scale, workspace.data(), nullptr, only.data(), nullptr),
              LK_OK)
        << last_error();
    for (size_t i = 0; i < only.size(); ++i) EXPECT_EQ(only[i], g1[i]) << "dw1 alone, element " << i;
}

INSTANTIATE_TEST_SUITE_P(Shapes, KronBackward, ::testing::ValuesIn(kron_shapes()),
                         [](const auto& info) { return kron_name(info.param); });

// A token sum far past one reduction chunk (16) gives the same bits for 1 and 2 threads.
TEST(KronBackward, FactorGradientsAreTheSameForEveryThreadCount) {
    const KronCase c({70, 3, 5, 4, 6}, 303);
    const KronShape& s = c.s;
    std::vector<float> workspace((size_t)c.workspace_floats());
    std::vector<std::vector<float>> runs;
    const int32_t original = lk_cpu_get_num_threads();
    for (int32_t threads : {1, 2}) {
        ASSERT_EQ(lk_cpu_set_num_threads(threads), LK_OK);
        std::vector<float> g((size_t)(s.out_l * s.in_m + s.out_k * s.in_n));
        ASSERT_EQ(lk_cpu_kron_backward(s.M, s.out_l, s.out_k, s.in_m, s.in_n, c.x.data(), nullptr, c.w1.data(),
                                       c.w2.data(), c.dy.data(), c.scale, workspace.data(), nullptr, g.data(),
                                       g.data() + s.out_l * s.in_m),
                  LK_OK)
            << last_error();
        runs.push_back(g);
    }
    ASSERT_EQ(lk_cpu_set_num_threads(original), LK_OK);
    for (size_t i = 0; i < runs[0].size(); ++i) EXPECT_EQ(runs[0][i], runs[1][i]) << "element " << i;
}

// Merge adds s*kron(w1, w2), also for a convolution weight [out, in, kh, kw] (w1 acting as
// [out_l, in_m, 1, 1], PEFT's make_kron); unmerge (-s) restores W up to two roundings.
TEST(KronMerge, AddsTheKroneckerProductToLinearAndConvolutionWeights) {
    for (int64_t spatial : {1, 6}) {
        const int64_t out_l = 3, out_k = 5, in_m = 2, in_n = 7, out = out_l * out_k, in = in_m * in_n;
        Rng rng(404 + spatial);
        const std::vector<float> W0 = rng.vector(out * in * spatial), w1 = rng.vector(out_l * in_m),
                                 w2 = rng.vector(out_k * in_n * spatial);
        const float scale = -1.5f;
        std::vector<double> ref(W0.size()), magnitude(W0.size());
        for (int64_t o = 0; o < out; ++o)
            for (int64_t i = 0; i < in; ++i)
                for (int64_t e = 0; e < spatial; ++e) {
                    const int64_t a = o / out_k, p = o % out_k, j = i / in_n, q = i % in_n;
                    const size_t at = (size_t)((o * in + i) * spatial + e);
                    const double d = (double)scale * w1[(size_t)(a * in_m + j)] * w2[(size_t)((p * in_n + q) * spatial + e)];
                    ref[at] = W0[at] + d;
                    magnitude[at] = std::fabs(W0[at]) + std::fabs(d);
                }
        std::vector<float> W = W0;
        ASSERT_EQ(lk_cpu_kron_merge(out_l, out_k, in_m, in_n, spatial, W.data(), w1.data(), w2.data(), scale), LK_OK)
            << last_error();
        EXPECT_TRUE(all_near(W.data(), in * spatial, out, in * spatial, ref, magnitude, kAtol, rtol(1)))
            << "spatial " << spatial;
        ASSERT_EQ(lk_cpu_kron_merge(out_l, out_k, in_m, in_n, spatial, W.data(), w1.data(), w2.data(), -scale), LK_OK);
        std::vector<double> original(W0.begin(), W0.end());
        EXPECT_TRUE(all_near(W.data(), in * spatial, out, in * spatial, original, magnitude, kAtol, rtol(2)))
            << "unmerge, spatial " << spatial;
    }
}

TEST(KronArguments, BadArgumentsAreRefusedByName) {
    float value = 1.0f;
    EXPECT_EQ(lk_cpu_kron_forward(2, 1, 1, 1, 1, &value, &value, nullptr, &value, &value, 1.0f, nullptr, &value),
              LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("workspace"), std::string::npos) << last_error();
    EXPECT_EQ(lk_cpu_kron_forward(1, -1, 1, 1, 1, &value, &value, nullptr, &value, &value, 1.0f, &value, &value),
              LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("out_l"), std::string::npos) << last_error();
    EXPECT_EQ(lk_cpu_kron_backward(1, 1, 1, 1, 1, nullptr, &value, &value, &value, &value, 1.0f, &value, nullptr,
                                   &value, nullptr),
              LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find(": x is NULL"), std::string::npos) << last_error();
    EXPECT_EQ(lk_cpu_kron_merge(1, 1, 1, 1, 1, &value, &value, &value, std::nanf("")), LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("scale"), std::string::npos) << last_error();
}

}  // namespace
}  // namespace cpu_test
