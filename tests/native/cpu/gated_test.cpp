// lk_cpu_gated_* against naive double-precision references written out here.
//
// Dense gate: y = x W0^T + bias + s ((dropout(x) A^T) .* G) B^T with G per rank ([r]) or per token
// ([M, r]); the backward's dx, dA, dB and the gate's gradient; merge. Top-k over a pool of E rank-1
// experts: forward, backward (every row of dA and column of dB, zero where no token picked the
// expert). Router ops: softmax, top-k with and without renormalisation (ties: the lower index), their
// backwards, the load-balancing statistics and gradient. SoRA's proximal step on a hand-computed case.
// AdaLoRA's EMAs, triplet scores, Gram matrix and orthogonality gradient. Bad arguments.
// Shapes: M in {1, 7, 33} (one row, a prime, past the GEMV cutoff of 16), in/out multiples of no
// micro-tile, r in {1, 8, 17}; E in {5, 37}, k in {1, 3}.
//
// Tolerances, per element, as test_lora.cpp (u = 2^-24, L the longest fp32 reduction chain behind the
// element, magnitude the sum of |terms| of the exact expression):
//   |got - ref| <= 1e-6 + 4 * (L + 2) * u * magnitude
// The fold B' = B * diag(g) and the gate's products add a rounding or two per term, inside the "+ 2".
// Router values are probabilities computed in double and rounded once: 2^-23 relative (two ulps).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "reference.h"

namespace cpu_test {
namespace {

constexpr double kAtol = 1e-6;
double rtol(int64_t longest_reduction) { return 4.0 * (double)(longest_reduction + 2) * kUnitRoundoff; }
const float kNaN = std::numeric_limits<float>::quiet_NaN();

std::vector<double> mask_of(int64_t M, int64_t in, uint64_t seed, float p) {
    std::vector<double> mask((size_t)(M * in));
    for (int64_t i = 0; i < M * in; ++i) mask[(size_t)i] = dropout_factor(seed, (uint64_t)i, p);
    return mask;
}

// ---- the dense gate -------------------------------------------------------------------------------

struct DenseShape {
    int64_t M, in, out, r;
    bool per_token;
};

std::string dense_name(const DenseShape& s) {
    return "M" + std::to_string(s.M) + "_in" + std::to_string(s.in) + "_out" + std::to_string(s.out) + "_r" +
           std::to_string(s.r) + (s.per_token ? "_per_token" : "_per_rank");
}

void PrintTo(const DenseShape& s, std::ostream* os) { *os << dense_name(s); }

std::vector<DenseShape> dense_shapes() {
    std::vector<DenseShape> shapes;
    for (bool per_token : {false, true})
        for (int64_t M : {1, 7, 33})
            for (auto io : {std::pair<int64_t, int64_t>{37, 53}, {130, 71}})
                for (int64_t r : {1, 8, 17}) shapes.push_back({M, io.first, io.second, r, per_token});
    return shapes;
}

struct DenseCase {
    DenseShape s;
    std::vector<float> x, W0, bias, A, B, gate, dy;
    float scale = 0.75f;

    DenseCase(const DenseShape& shape, uint64_t seed) : s(shape) {
        Rng rng(seed);
        x = rng.vector(s.M * s.in);
        W0 = rng.vector(s.out * s.in);
        bias = rng.vector(s.out);
        A = rng.vector(s.r * s.in);
        B = rng.vector(s.out * s.r);
        gate = rng.vector(s.per_token ? s.M * s.r : s.r);
        dy = rng.vector(s.M * s.out);
    }
    int64_t stride() const { return s.per_token ? s.r : 0; }
    double G(int64_t m, int64_t j) const { return gate[(size_t)(m * stride() + j)]; }
};

// u = dropout(x) A^T and its magnitudes.
void reference_u(const DenseCase& c, const std::vector<double>& mask, std::vector<double>& u, std::vector<double>& mag) {
    const auto& s = c.s;
    u.assign((size_t)(s.M * s.r), 0.0);
    mag.assign((size_t)(s.M * s.r), 0.0);
    for (int64_t m = 0; m < s.M; ++m)
        for (int64_t j = 0; j < s.r; ++j)
            for (int64_t k = 0; k < s.in; ++k) {
                const double term = mask[(size_t)(m * s.in + k)] * c.x[(size_t)(m * s.in + k)] * c.A[(size_t)(j * s.in + k)];
                u[(size_t)(m * s.r + j)] += term;
                mag[(size_t)(m * s.r + j)] += std::fabs(term);
            }
}

class GatedForward : public ::testing::TestWithParam<DenseShape> {};

TEST_P(GatedForward, MatchesReference) {
    const DenseCase c(GetParam(), 5000);
    const auto& s = c.s;
    for (float p : {0.0f, 0.3f}) {
        SCOPED_TRACE("dropout=" + std::to_string(p));
        const uint64_t seed = 0xFACE + (uint64_t)s.r;
        std::vector<double> u_ref, u_mag;
        reference_u(c, mask_of(s.M, s.in, seed, p), u_ref, u_mag);
        std::vector<double> y_ref((size_t)(s.M * s.out)), y_mag((size_t)(s.M * s.out));
        for (int64_t m = 0; m < s.M; ++m)
            for (int64_t n = 0; n < s.out; ++n) {
                double sum = c.bias[(size_t)n], mag = std::fabs(sum);
                for (int64_t k = 0; k < s.in; ++k) {
                    const double term = (double)c.x[(size_t)(m * s.in + k)] * c.W0[(size_t)(n * s.in + k)];
                    sum += term;
                    mag += std::fabs(term);
                }
                for (int64_t j = 0; j < s.r; ++j) {
                    const double factor = c.scale * c.G(m, j) * c.B[(size_t)(n * s.r + j)];
                    sum += factor * u_ref[(size_t)(m * s.r + j)];
                    mag += std::fabs(factor) * u_mag[(size_t)(m * s.r + j)];
                }
                y_ref[(size_t)(m * s.out + n)] = sum;
                y_mag[(size_t)(m * s.out + n)] = mag;
            }
        std::vector<float> y((size_t)(s.M * s.out), kNaN), u((size_t)(s.M * s.r), kNaN);
        ASSERT_EQ(lk_cpu_gated_forward(s.M, s.in, s.out, s.r, c.x.data(), c.W0.data(), c.bias.data(), c.A.data(),
                                       c.B.data(), c.gate.data(), c.stride(), c.scale, p, seed, y.data(), u.data()),
                  LK_OK)
            << last_error();
        EXPECT_TRUE(all_near(u.data(), s.r, s.M, s.r, u_ref, u_mag, kAtol, rtol(s.in)));
        EXPECT_TRUE(all_near(y.data(), s.out, s.M, s.out, y_ref, y_mag, kAtol, rtol(s.in + s.r)));
    }
}

INSTANTIATE_TEST_SUITE_P(Shapes, GatedForward, ::testing::ValuesIn(dense_shapes()),
                         [](const ::testing::TestParamInfo<DenseShape>& info) { return dense_name(info.param); });

class GatedBackward : public ::testing::TestWithParam<DenseShape> {};

TEST_P(GatedBackward, MatchesReference) {
    const DenseCase c(GetParam(), 6000);
    const auto& s = c.s;
    for (float p : {0.0f, 0.3f}) {
        SCOPED_TRACE("dropout=" + std::to_string(p));
        const uint64_t seed = 0xBEAD + (uint64_t)s.r;
        const std::vector<double> mask = mask_of(s.M, s.in, seed, p);
        std::vector<double> u_ref, u_mag;
        reference_u(c, mask, u_ref, u_mag);
        std::vector<float> u(u_ref.begin(), u_ref.end());  // what the forward kept, rounded to fp32
        // z = s dy B, du = z .* G
        std::vector<double> z((size_t)(s.M * s.r), 0.0), z_mag((size_t)(s.M * s.r), 0.0);
        for (int64_t m = 0; m < s.M; ++m)
            for (int64_t j = 0; j < s.r; ++j)
                for (int64_t n = 0; n < s.out; ++n) {
                    const double term = c.scale * (double)c.dy[(size_t)(m * s.out + n)] * c.B[(size_t)(n * s.r + j)];
                    z[(size_t)(m * s.r + j)] += term;
                    z_mag[(size_t)(m * s.r + j)] += std::fabs(term);
                }
        const size_t gate_size = c.gate.size();
        std::vector<double> dg_ref(gate_size, 0.0), dg_mag(gate_size, 0.0);
        for (int64_t m = 0; m < s.M; ++m)
            for (int64_t j = 0; j < s.r; ++j) {
                const size_t g = (size_t)(m * c.stride() + j), i = (size_t)(m * s.r + j);
                dg_ref[g] += z[i] * u[i];
                dg_mag[g] += z_mag[i] * std::fabs((double)u[i]);
            }
        std::vector<double> dB_ref((size_t)(s.out * s.r), 0.0), dB_mag((size_t)(s.out * s.r), 0.0);
        for (int64_t n = 0; n < s.out; ++n)
            for (int64_t j = 0; j < s.r; ++j)
                for (int64_t m = 0; m < s.M; ++m) {
                    const double term = c.scale * (double)c.dy[(size_t)(m * s.out + n)] * u[(size_t)(m * s.r + j)] * c.G(m, j);
                    dB_ref[(size_t)(n * s.r + j)] += term;
                    dB_mag[(size_t)(n * s.r + j)] += std::fabs(term);
                }
        std::vector<double> dA_ref((size_t)(s.r * s.in), 0.0), dA_mag((size_t)(s.r * s.in), 0.0);
        std::vector<double> dx_ref((size_t)(s.M * s.in), 0.0), dx_mag((size_t)(s.M * s.in), 0.0);
        for (int64_t m = 0; m < s.M; ++m)
            for (int64_t k = 0; k < s.in; ++k) {
                const size_t e = (size_t)(m * s.in + k);
                double adapter = 0.0, adapter_mag = 0.0;
                for (int64_t j = 0; j < s.r; ++j) {
                    const double du = z[(size_t)(m * s.r + j)] * c.G(m, j), du_mag = z_mag[(size_t)(m * s.r + j)] * std::fabs(c.G(m, j));
                    dA_ref[(size_t)(j * s.in + k)] += du * mask[e] * c.x[e];
                    dA_mag[(size_t)(j * s.in + k)] += du_mag * mask[e] * std::fabs((double)c.x[e]);
                    adapter += du * c.A[(size_t)(j * s.in + k)];
                    adapter_mag += du_mag * std::fabs((double)c.A[(size_t)(j * s.in + k)]);
                }
                dx_ref[e] = mask[e] * adapter;
                dx_mag[e] = mask[e] * adapter_mag;
                for (int64_t n = 0; n < s.out; ++n) {
                    const double term = (double)c.dy[(size_t)(m * s.out + n)] * c.W0[(size_t)(n * s.in + k)];
                    dx_ref[e] += term;
                    dx_mag[e] += std::fabs(term);
                }
            }
        std::vector<float> dx((size_t)(s.M * s.in), kNaN), dA((size_t)(s.r * s.in), kNaN), dB((size_t)(s.out * s.r), kNaN),
            dg(gate_size, kNaN);
        ASSERT_EQ(lk_cpu_gated_backward(s.M, s.in, s.out, s.r, c.x.data(), c.W0.data(), c.A.data(), c.B.data(), c.gate.data(),
                                        c.stride(), u.data(), c.dy.data(), c.scale, p, seed, dx.data(), dA.data(), dB.data(),
                                        dg.data()),
                  LK_OK)
            << last_error();
        EXPECT_TRUE(all_near(dx.data(), s.in, s.M, s.in, dx_ref, dx_mag, kAtol, rtol(s.out + s.r + 2)));
        EXPECT_TRUE(all_near(dA.data(), s.in, s.r, s.in, dA_ref, dA_mag, kAtol, rtol(s.out + s.M + 2)));
        EXPECT_TRUE(all_near(dB.data(), s.r, s.out, s.r, dB_ref, dB_mag, kAtol, rtol(s.M + 2)));
        EXPECT_TRUE(all_near(dg.data(), (int64_t)gate_size, 1, (int64_t)gate_size, dg_ref, dg_mag, kAtol, rtol(s.out + s.M + 2)));

        // Each output alone equals the same output computed with the others.
        std::vector<float> dg_only(gate_size, kNaN);
        ASSERT_EQ(lk_cpu_gated_backward(s.M, s.in, s.out, s.r, nullptr, nullptr, nullptr, c.B.data(), c.gate.data(),
                                        c.stride(), u.data(), c.dy.data(), c.scale, p, seed, nullptr, nullptr, nullptr,
                                        dg_only.data()),
                  LK_OK)
            << last_error();
        EXPECT_TRUE(all_near(dg_only.data(), (int64_t)gate_size, 1, (int64_t)gate_size, dg_ref, dg_mag, kAtol, rtol(s.out + s.M + 2)));
    }
}

INSTANTIATE_TEST_SUITE_P(Shapes, GatedBackward, ::testing::ValuesIn(dense_shapes()),
                         [](const ::testing::TestParamInfo<DenseShape>& info) { return dense_name(info.param); });

TEST(GatedMerge, AddsScaledGatedProductAndUnmergeUndoesIt_out23_in19_r5) {
    const DenseCase c({1, 19, 23, 5, false}, 7000);
    const auto& s = c.s;
    std::vector<double> ref((size_t)(s.out * s.in)), mag((size_t)(s.out * s.in));
    for (int64_t n = 0; n < s.out; ++n)
        for (int64_t k = 0; k < s.in; ++k) {
            double sum = c.W0[(size_t)(n * s.in + k)], m = std::fabs(sum);
            for (int64_t j = 0; j < s.r; ++j) {
                const double term = c.scale * c.B[(size_t)(n * s.r + j)] * c.gate[(size_t)j] * c.A[(size_t)(j * s.in + k)];
                sum += term;
                m += std::fabs(term);
            }
            ref[(size_t)(n * s.in + k)] = sum;
            mag[(size_t)(n * s.in + k)] = m;
        }
    std::vector<float> W = c.W0;
    ASSERT_EQ(lk_cpu_gated_merge(s.out, s.in, s.r, W.data(), c.A.data(), c.B.data(), c.gate.data(), c.scale), LK_OK) << last_error();
    EXPECT_TRUE(all_near(W.data(), s.in, s.out, s.in, ref, mag, kAtol, rtol(s.r + 2)));
    ASSERT_EQ(lk_cpu_gated_merge(s.out, s.in, s.r, W.data(), c.A.data(), c.B.data(), c.gate.data(), -c.scale), LK_OK) << last_error();
    const std::vector<double> original(c.W0.begin(), c.W0.end());
    EXPECT_TRUE(all_near(W.data(), s.in, s.out, s.in, original, mag, kAtol, 2 * rtol(s.r + 2)));
}

// ---- top-k over a pool of rank-1 experts ---------------------------------------------------------

struct TopKShape {
    int64_t M, in, out, E, k;
};

std::string topk_name(const TopKShape& s) {
    return "M" + std::to_string(s.M) + "_in" + std::to_string(s.in) + "_out" + std::to_string(s.out) + "_E" +
           std::to_string(s.E) + "_k" + std::to_string(s.k);
}

void PrintTo(const TopKShape& s, std::ostream* os) { *os << topk_name(s); }

std::vector<TopKShape> topk_shapes() {
    return {{1, 37, 53, 5, 1}, {7, 37, 53, 5, 3}, {33, 130, 71, 37, 3}, {17, 130, 71, 37, 1}, {33, 37, 53, 5, 5}};
}

struct TopKCase {
    TopKShape s;
    std::vector<float> x, W0, bias, A, B, expert, weight, dy;
    float scale = 1.25f;

    TopKCase(const TopKShape& shape, uint64_t seed) : s(shape) {
        Rng rng(seed);
        x = rng.vector(s.M * s.in);
        W0 = rng.vector(s.out * s.in);
        bias = rng.vector(s.out);
        A = rng.vector(s.E * s.in);
        B = rng.vector(s.out * s.E);
        weight = rng.vector(s.M * s.k);
        dy = rng.vector(s.M * s.out);
        // distinct experts per token, drawn so that some experts are picked by no token when E > k
        for (int64_t m = 0; m < s.M; ++m)
            for (int64_t t = 0; t < s.k; ++t) expert.push_back((float)((m * 2 + t * 3) % (s.E > 3 ? s.E - 1 : s.E)));
        for (int64_t m = 0; m < s.M; ++m) {  // make each token's k indices distinct
            for (int64_t t = 1; t < s.k; ++t)
                while (std::find(expert.begin() + m * s.k, expert.begin() + m * s.k + t, expert[(size_t)(m * s.k + t)]) !=
                       expert.begin() + m * s.k + t)
                    expert[(size_t)(m * s.k + t)] = (float)(((int64_t)expert[(size_t)(m * s.k + t)] + 1) % s.E);
        }
    }
    int64_t e(int64_t m, int64_t t) const { return (int64_t)expert[(size_t)(m * s.k + t)]; }
};

class GatedTopK : public ::testing::TestWithParam<TopKShape> {};

TEST_P(GatedTopK, ForwardMatchesReference) {
    const TopKCase c(GetParam(), 8000);
    const auto& s = c.s;
    for (float p : {0.0f, 0.3f}) {
        SCOPED_TRACE("dropout=" + std::to_string(p));
        const uint64_t seed = 0xD00D + (uint64_t)s.E;
        const std::vector<double> mask = mask_of(s.M, s.in, seed, p);
        std::vector<double> h_ref((size_t)(s.M * s.k), 0.0), h_mag((size_t)(s.M * s.k), 0.0);
        for (int64_t m = 0; m < s.M; ++m)
            for (int64_t t = 0; t < s.k; ++t)
                for (int64_t q = 0; q < s.in; ++q) {
                    const double term = mask[(size_t)(m * s.in + q)] * c.x[(size_t)(m * s.in + q)] * c.A[(size_t)(c.e(m, t) * s.in + q)];
                    h_ref[(size_t)(m * s.k + t)] += term;
                    h_mag[(size_t)(m * s.k + t)] += std::fabs(term);
                }
        std::vector<double> y_ref((size_t)(s.M * s.out)), y_mag((size_t)(s.M * s.out));
        for (int64_t m = 0; m < s.M; ++m)
            for (int64_t n = 0; n < s.out; ++n) {
                double sum = c.bias[(size_t)n], mag = std::fabs(sum);
                for (int64_t q = 0; q < s.in; ++q) {
                    const double term = (double)c.x[(size_t)(m * s.in + q)] * c.W0[(size_t)(n * s.in + q)];
                    sum += term;
                    mag += std::fabs(term);
                }
                for (int64_t t = 0; t < s.k; ++t) {
                    const double factor = c.scale * c.weight[(size_t)(m * s.k + t)] * c.B[(size_t)(n * s.E + c.e(m, t))];
                    sum += factor * h_ref[(size_t)(m * s.k + t)];
                    mag += std::fabs(factor) * h_mag[(size_t)(m * s.k + t)];
                }
                y_ref[(size_t)(m * s.out + n)] = sum;
                y_mag[(size_t)(m * s.out + n)] = mag;
            }
        std::vector<float> y((size_t)(s.M * s.out), kNaN), h((size_t)(s.M * s.k), kNaN);
        ASSERT_EQ(lk_cpu_gated_topk_forward(s.M, s.in, s.out, s.E, s.k, c.x.data(), c.W0.data(), c.bias.data(), c.A.data(),
                                            c.B.data(), c.expert.data(), c.weight.data(), c.scale, p, seed, y.data(), h.data()),
                  LK_OK)
            << last_error();
        EXPECT_TRUE(all_near(h.data(), s.k, s.M, s.k, h_ref, h_mag, kAtol, rtol(s.in)));
        EXPECT_TRUE(all_near(y.data(), s.out, s.M, s.out, y_ref, y_mag, kAtol, rtol(s.in + s.k + 2)));
    }
}

TEST_P(GatedTopK, BackwardMatchesReference) {
    const TopKCase c(GetParam(), 9000);
    const auto& s = c.s;
    Rng rng(9001);
    const std::vector<float> h = rng.vector(s.M * s.k);
    for (float p : {0.0f, 0.3f}) {
        SCOPED_TRACE("dropout=" + std::to_string(p));
        const uint64_t seed = 0xCAFE + (uint64_t)s.E;
        const std::vector<double> mask = mask_of(s.M, s.in, seed, p);
        std::vector<double> z((size_t)(s.M * s.k), 0.0), z_mag((size_t)(s.M * s.k), 0.0);
        for (int64_t m = 0; m < s.M; ++m)
            for (int64_t t = 0; t < s.k; ++t)
                for (int64_t n = 0; n < s.out; ++n) {
                    const double term = c.scale * (double)c.dy[(size_t)(m * s.out + n)] * c.B[(size_t)(n * s.E + c.e(m, t))];
                    z[(size_t)(m * s.k + t)] += term;
                    z_mag[(size_t)(m * s.k + t)] += std::fabs(term);
                }
        std::vector<double> dw_ref((size_t)(s.M * s.k)), dw_mag((size_t)(s.M * s.k));
        std::vector<double> dA_ref((size_t)(s.E * s.in), 0.0), dA_mag((size_t)(s.E * s.in), 0.0);
        std::vector<double> dB_ref((size_t)(s.out * s.E), 0.0), dB_mag((size_t)(s.out * s.E), 0.0);
        std::vector<double> dx_ref((size_t)(s.M * s.in), 0.0), dx_mag((size_t)(s.M * s.in), 0.0);
        for (int64_t m = 0; m < s.M; ++m)
            for (int64_t t = 0; t < s.k; ++t) {
                const size_t i = (size_t)(m * s.k + t);
                const int64_t j = c.e(m, t);
                const double w = c.weight[i];
                dw_ref[i] = z[i] * h[i];
                dw_mag[i] = z_mag[i] * std::fabs((double)h[i]);
                for (int64_t q = 0; q < s.in; ++q) {
                    const size_t xe = (size_t)(m * s.in + q);
                    dA_ref[(size_t)(j * s.in + q)] += z[i] * w * mask[xe] * c.x[xe];
                    dA_mag[(size_t)(j * s.in + q)] += z_mag[i] * std::fabs(w * mask[xe] * c.x[xe]);
                    dx_ref[xe] += mask[xe] * z[i] * w * c.A[(size_t)(j * s.in + q)];
                    dx_mag[xe] += mask[xe] * z_mag[i] * std::fabs(w * c.A[(size_t)(j * s.in + q)]);
                }
                for (int64_t n = 0; n < s.out; ++n) {
                    const double term = c.scale * w * h[i] * c.dy[(size_t)(m * s.out + n)];
                    dB_ref[(size_t)(n * s.E + j)] += term;
                    dB_mag[(size_t)(n * s.E + j)] += std::fabs(term);
                }
            }
        for (int64_t m = 0; m < s.M; ++m)
            for (int64_t q = 0; q < s.in; ++q)
                for (int64_t n = 0; n < s.out; ++n) {
                    const double term = (double)c.dy[(size_t)(m * s.out + n)] * c.W0[(size_t)(n * s.in + q)];
                    dx_ref[(size_t)(m * s.in + q)] += term;
                    dx_mag[(size_t)(m * s.in + q)] += std::fabs(term);
                }
        std::vector<float> dx((size_t)(s.M * s.in), kNaN), dA((size_t)(s.E * s.in), kNaN), dB((size_t)(s.out * s.E), kNaN),
            dw((size_t)(s.M * s.k), kNaN);
        ASSERT_EQ(lk_cpu_gated_topk_backward(s.M, s.in, s.out, s.E, s.k, c.x.data(), c.W0.data(), c.A.data(), c.B.data(),
                                             c.expert.data(), c.weight.data(), h.data(), c.dy.data(), c.scale, p, seed, dx.data(),
                                             dA.data(), dB.data(), dw.data()),
                  LK_OK)
            << last_error();
        const int64_t slots = s.M * s.k;
        EXPECT_TRUE(all_near(dw.data(), s.k, s.M, s.k, dw_ref, dw_mag, kAtol, rtol(s.out + 2)));
        EXPECT_TRUE(all_near(dx.data(), s.in, s.M, s.in, dx_ref, dx_mag, kAtol, rtol(s.out + s.out + s.k + 2)));
        // dA and dB sum over the slots of each expert: chains of out (z) then up to M*k slots.
        std::vector<bool> picked((size_t)s.E, false);
        for (float e : c.expert) picked[(size_t)e] = true;
        for (int64_t j = 0; j < s.E; ++j) {
            SCOPED_TRACE("expert " + std::to_string(j) + (picked[(size_t)j] ? " (picked)" : " (never picked)"));
            for (int64_t q = 0; q < s.in; ++q) {
                const size_t i = (size_t)(j * s.in + q);
                EXPECT_LE(std::fabs(dA[i] - dA_ref[i]), kAtol + rtol(s.out + slots) * dA_mag[i]) << "dA[" << j << ", " << q << "]";
            }
            for (int64_t n = 0; n < s.out; ++n) {
                const size_t i = (size_t)(n * s.E + j);
                EXPECT_LE(std::fabs(dB[i] - dB_ref[i]), kAtol + rtol(slots + 2) * dB_mag[i]) << "dB[" << n << ", " << j << "]";
                if (!picked[(size_t)j]) {
                    EXPECT_EQ(dB[i], 0.0f);
                }
            }
        }
        EXPECT_TRUE(std::find(picked.begin(), picked.end(), false) != picked.end() || s.E == s.k)
            << "the case leaves some expert unpicked, so the zero rows are checked";
    }
}

INSTANTIATE_TEST_SUITE_P(Shapes, GatedTopK, ::testing::ValuesIn(topk_shapes()),
                         [](const ::testing::TestParamInfo<TopKShape>& info) { return topk_name(info.param); });

TEST(GatedTopK, RejectsAnExpertIndexOutsideThePool_M2_E4_k2) {
    const std::vector<float> x(2 * 3, 1.0f), W0(5 * 3, 1.0f), A(4 * 3, 1.0f), B(5 * 4, 1.0f), weight(4, 0.5f);
    std::vector<float> y(2 * 5), h(4);
    for (float bad : {4.0f, -1.0f, 1.5f, kNaN}) {
        const std::vector<float> expert = {0.0f, 1.0f, 2.0f, bad};
        EXPECT_EQ(lk_cpu_gated_topk_forward(2, 3, 5, 4, 2, x.data(), W0.data(), nullptr, A.data(), B.data(), expert.data(),
                                            weight.data(), 1.0f, 0.0f, 0, y.data(), h.data()),
                  LK_ERR_INVALID_ARGUMENT);
        EXPECT_NE(last_error().find("expert[3] (token 1, slot 1)"), std::string::npos) << last_error();
    }
    const std::vector<float> expert = {0.0f, 1.0f, 2.0f, 3.0f};
    EXPECT_EQ(lk_cpu_gated_topk_forward(2, 3, 5, 4, 5, x.data(), W0.data(), nullptr, A.data(), B.data(), expert.data(),
                                        weight.data(), 1.0f, 0.0f, 0, y.data(), h.data()),
              LK_ERR_INVALID_ARGUMENT)
        << "k > E";
}

TEST(GatedForward, RejectsAGateStrideThatIsNeitherZeroNorR) {
    const std::vector<float> x(6, 1.0f), W0(15, 1.0f), A(6, 1.0f), B(10, 1.0f), gate(4, 1.0f);
    std::vector<float> y(10), u(4);
    EXPECT_EQ(lk_cpu_gated_forward(2, 3, 5, 2, x.data(), W0.data(), nullptr, A.data(), B.data(), gate.data(), 1, 1.0f, 0.0f, 0,
                                   y.data(), u.data()),
              LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("gate_stride = 1"), std::string::npos) << last_error();
}

// ---- router ---------------------------------------------------------------------------------------

TEST(GatedRouter, SoftmaxAndItsBackwardMatchReference_M5_E37) {
    const int64_t M = 5, E = 37;
    Rng rng(10000);
    std::vector<float> logits = rng.vector(M * E);
    for (float& v : logits) v *= 6.0f;
    std::vector<float> probs((size_t)(M * E), kNaN), dprobs = rng.vector(M * E), dlogits((size_t)(M * E), kNaN);
    ASSERT_EQ(lk_cpu_gated_softmax(M, E, logits.data(), probs.data()), LK_OK) << last_error();
    ASSERT_EQ(lk_cpu_gated_softmax_backward(M, E, probs.data(), dprobs.data(), dlogits.data()), LK_OK) << last_error();
    std::vector<double> p_ref((size_t)(M * E)), p_mag((size_t)(M * E)), d_ref((size_t)(M * E)), d_mag((size_t)(M * E));
    for (int64_t m = 0; m < M; ++m) {
        double top = -INFINITY, sum = 0.0, inner = 0.0;
        for (int64_t j = 0; j < E; ++j) top = std::fmax(top, logits[(size_t)(m * E + j)]);
        for (int64_t j = 0; j < E; ++j) sum += std::exp(logits[(size_t)(m * E + j)] - top);
        for (int64_t j = 0; j < E; ++j) {
            p_ref[(size_t)(m * E + j)] = std::exp(logits[(size_t)(m * E + j)] - top) / sum;
            p_mag[(size_t)(m * E + j)] = p_ref[(size_t)(m * E + j)];
        }
        for (int64_t j = 0; j < E; ++j) inner += (double)probs[(size_t)(m * E + j)] * dprobs[(size_t)(m * E + j)];
        for (int64_t j = 0; j < E; ++j) {
            const double p = probs[(size_t)(m * E + j)];
            d_ref[(size_t)(m * E + j)] = p * (dprobs[(size_t)(m * E + j)] - inner);
            d_mag[(size_t)(m * E + j)] = p * (std::fabs(dprobs[(size_t)(m * E + j)]) + std::fabs(inner));
        }
    }
    EXPECT_TRUE(all_near(probs.data(), E, M, E, p_ref, p_mag, 0.0, 2.0 * kUnitRoundoff));
    EXPECT_TRUE(all_near(dlogits.data(), E, M, E, d_ref, d_mag, kAtol, 2.0 * kUnitRoundoff));
}

TEST(GatedRouter, TopKPicksTheLargestWithTiesToTheLowerIndexAndRenormalises_M2_E6_k3) {
    // Row 0 has a tie between columns 1 and 4 (0.25 each) for the second and third places.
    const std::vector<float> probs = {0.1f, 0.25f, 0.05f, 0.3f, 0.25f, 0.05f,  //
                                      0.5f, 0.1f, 0.1f, 0.1f, 0.1f, 0.1f};
    std::vector<float> expert(6, kNaN), weight(6, kNaN);
    ASSERT_EQ(lk_cpu_gated_route_topk(2, 6, 3, probs.data(), 0, expert.data(), weight.data()), LK_OK) << last_error();
    EXPECT_EQ(expert, (std::vector<float>{3, 1, 4, 0, 1, 2}));
    EXPECT_EQ(weight, (std::vector<float>{0.3f, 0.25f, 0.25f, 0.5f, 0.1f, 0.1f}));
    ASSERT_EQ(lk_cpu_gated_route_topk(2, 6, 3, probs.data(), 1, expert.data(), weight.data()), LK_OK) << last_error();
    const float sum0 = 0.3f + 0.25f + 0.25f, sum1 = 0.5f + 0.1f + 0.1f;
    EXPECT_EQ(weight, (std::vector<float>{0.3f / sum0, 0.25f / sum0, 0.25f / sum0, 0.5f / sum1, 0.1f / sum1, 0.1f / sum1}));

    // Backward with renormalisation: dp_e = (dw_t - sum_s dw_s w_s) / S at the picked experts, 0 elsewhere.
    const std::vector<float> dweight = {1.0f, -2.0f, 0.5f, 0.25f, 3.0f, -1.0f};
    std::vector<float> dprobs(12, kNaN);
    ASSERT_EQ(lk_cpu_gated_route_topk_backward(2, 6, 3, probs.data(), expert.data(), weight.data(), dweight.data(), 1,
                                               dprobs.data()),
              LK_OK)
        << last_error();
    const double sums[] = {sum0, sum1};
    for (int m = 0; m < 2; ++m) {
        double inner = 0.0;
        for (int t = 0; t < 3; ++t) inner += (double)dweight[(size_t)(m * 3 + t)] * weight[(size_t)(m * 3 + t)];
        std::vector<double> want(6, 0.0);
        for (int t = 0; t < 3; ++t) want[(size_t)expert[(size_t)(m * 3 + t)]] = (dweight[(size_t)(m * 3 + t)] - inner) / sums[m];
        for (int j = 0; j < 6; ++j) EXPECT_NEAR(dprobs[(size_t)(m * 6 + j)], want[(size_t)j], 1e-6) << "row " << m << " expert " << j;
    }
}

TEST(GatedRouter, BalanceStatisticsAndGradient_M3_E4_k2) {
    const std::vector<float> probs = {0.4f, 0.3f, 0.2f, 0.1f, 0.1f, 0.6f, 0.2f, 0.1f, 0.25f, 0.25f, 0.25f, 0.25f};
    const std::vector<float> expert = {0, 1, 1, 2, 0, 1};
    std::vector<float> stats(8, kNaN), dprobs(12, kNaN);
    ASSERT_EQ(lk_cpu_gated_balance(3, 4, 2, probs.data(), expert.data(), stats.data()), LK_OK) << last_error();
    EXPECT_EQ(std::vector<float>(stats.begin(), stats.begin() + 4), (std::vector<float>{2, 3, 1, 0}));
    const double sums[] = {0.75, 1.15, 0.65, 0.45};
    for (int j = 0; j < 4; ++j) EXPECT_NEAR(stats[(size_t)(4 + j)], sums[j], 1e-6);
    ASSERT_EQ(lk_cpu_gated_balance_backward(3, 4, stats.data(), 0.5f, dprobs.data()), LK_OK) << last_error();
    for (int m = 0; m < 3; ++m)
        for (int j = 0; j < 4; ++j) EXPECT_NEAR(dprobs[(size_t)(m * 4 + j)], 0.5 * 4 * stats[(size_t)j] / 9.0, 1e-7);
}

// ---- SoRA -----------------------------------------------------------------------------------------

TEST(GatedSoftThreshold, FollowsSorasThreeMaskedAssignmentsInOrder_lambda_0p25) {
    // λ = 0.25 (exact in binary). SparseAdamW: g > λ: g -= λ; then g < -λ: g += λ; then |g| < λ: g = 0.
    //  1.0 → 0.75;  0.4 → 0.15 → 0 (between λ and 2λ: the third test sees the shrunk value);
    //  0.5 → 0.25, kept (|g| == λ is not < λ); 0.25 → kept (not > λ, |g| not < λ); 0.1 → 0;
    //  the negatives mirror them; 0 stays 0.
    std::vector<float> gate = {1.0f, 0.4f, 0.5f, 0.25f, 0.1f, 0.0f, -1.0f, -0.4f, -0.5f, -0.25f, -0.1f};
    ASSERT_EQ(lk_cpu_gated_soft_threshold((int64_t)gate.size(), gate.data(), 0.25f), LK_OK) << last_error();
    EXPECT_EQ(gate, (std::vector<float>{0.75f, 0.0f, 0.25f, 0.25f, 0.0f, 0.0f, -0.75f, 0.0f, -0.25f, -0.25f, 0.0f}));
    EXPECT_EQ(lk_cpu_gated_soft_threshold(1, gate.data(), -1.0f), LK_ERR_INVALID_ARGUMENT);
}

// ---- AdaLoRA --------------------------------------------------------------------------------------

TEST(GatedAdaLora, SensitivityEmasAndTripletScoresMatchReference_r3_in5_out4) {
    const int64_t r = 3, in = 5, out = 4;
    Rng rng(11000);
    const std::vector<float> pA = rng.vector(r * in), gA = rng.vector(r * in), pE = rng.vector(r), gE = rng.vector(r),
                             pB = rng.vector(out * r), gB = rng.vector(out * r);
    const float b1 = 0.85f, b2 = 0.85f;
    std::vector<float> iA(r * in, 0.0f), uA(r * in, 0.0f), iE(r, 0.0f), uE(r, 0.0f), iB(out * r, 0.0f), uB(out * r, 0.0f);
    std::vector<double> riA(iA.size(), 0.0), ruA(iA.size(), 0.0), riE(r, 0.0), ruE(r, 0.0), riB(iB.size(), 0.0), ruB(iB.size(), 0.0);
    auto reference = [&](const std::vector<float>& p, const std::vector<float>& g, std::vector<double>& ipt, std::vector<double>& unc) {
        for (size_t i = 0; i < p.size(); ++i) {
            const double s = std::fabs((double)p[i] * g[i]);
            ipt[i] = b1 * ipt[i] + (1 - b1) * s;
            unc[i] = b2 * unc[i] + (1 - b2) * std::fabs(s - ipt[i]);
        }
    };
    for (int step = 0; step < 3; ++step) {  // three updates, so the EMAs carry history
        ASSERT_EQ(lk_cpu_gated_sensitivity(r * in, pA.data(), gA.data(), iA.data(), uA.data(), b1, b2), LK_OK) << last_error();
        ASSERT_EQ(lk_cpu_gated_sensitivity(r, pE.data(), gE.data(), iE.data(), uE.data(), b1, b2), LK_OK) << last_error();
        ASSERT_EQ(lk_cpu_gated_sensitivity(out * r, pB.data(), gB.data(), iB.data(), uB.data(), b1, b2), LK_OK) << last_error();
        reference(pA, gA, riA, ruA);
        reference(pE, gE, riE, ruE);
        reference(pB, gB, riB, ruB);
    }
    // Each EMA element is a handful of fp32 operations on values of its own size: 1e-6 relative.
    for (size_t i = 0; i < iA.size(); ++i) EXPECT_NEAR(iA[i], riA[i], 1e-6 * riA[i] + 1e-9);
    for (size_t i = 0; i < uB.size(); ++i) EXPECT_NEAR(uB[i], ruB[i], 1e-6 * std::fabs(ruB[i]) + 1e-7);
    std::vector<float> score(r, kNaN);
    ASSERT_EQ(lk_cpu_gated_triplet_score(r, in, out, iA.data(), uA.data(), iE.data(), uE.data(), iB.data(), uB.data(), score.data()),
              LK_OK)
        << last_error();
    for (int64_t i = 0; i < r; ++i) {
        double a = 0.0, b = 0.0;
        for (int64_t c = 0; c < in; ++c) a += riA[(size_t)(i * in + c)] * ruA[(size_t)(i * in + c)];
        for (int64_t n = 0; n < out; ++n) b += riB[(size_t)(n * r + i)] * ruB[(size_t)(n * r + i)];
        const double want = riE[(size_t)i] * ruE[(size_t)i] + a / in + b / out;
        EXPECT_NEAR(score[(size_t)i], want, 1e-5 * want) << "triplet " << i;
    }
}

TEST(GatedAdaLora, GramAndOrthogonalityGradientMatchReference_A3x7_B9x3) {
    Rng rng(12000);
    for (int transpose : {0, 1}) {
        const int64_t rows = transpose ? 9 : 3, cols = transpose ? 3 : 7, side = transpose ? cols : rows;
        const std::vector<float> X = rng.vector(rows * cols);
        std::vector<float> C((size_t)(side * side), kNaN), G((size_t)(rows * cols), kNaN);
        ASSERT_EQ(lk_cpu_gated_gram(rows, cols, X.data(), transpose, C.data()), LK_OK) << last_error();
        std::vector<double> c_ref((size_t)(side * side), 0.0), c_mag((size_t)(side * side), 0.0);
        for (int64_t i = 0; i < side; ++i)
            for (int64_t j = 0; j < side; ++j)
                for (int64_t q = 0; q < (transpose ? rows : cols); ++q) {
                    const double term = transpose ? (double)X[(size_t)(q * cols + i)] * X[(size_t)(q * cols + j)]
                                                  : (double)X[(size_t)(i * cols + q)] * X[(size_t)(j * cols + q)];
                    c_ref[(size_t)(i * side + j)] += term;
                    c_mag[(size_t)(i * side + j)] += std::fabs(term);
                }
        EXPECT_TRUE(all_near(C.data(), side, side, side, c_ref, c_mag, kAtol, rtol(rows + cols)));
        const float coefficient = 0.375f;
        ASSERT_EQ(lk_cpu_gated_orth_grad(rows, cols, X.data(), C.data(), transpose, coefficient, G.data()), LK_OK) << last_error();
        std::vector<double> g_ref((size_t)(rows * cols), 0.0), g_mag((size_t)(rows * cols), 0.0);
        for (int64_t i = 0; i < rows; ++i)
            for (int64_t j = 0; j < cols; ++j)
                for (int64_t q = 0; q < side; ++q) {
                    const double d = transpose ? C[(size_t)(q * side + j)] - (q == j ? 1.0 : 0.0)
                                               : C[(size_t)(i * side + q)] - (i == q ? 1.0 : 0.0);
                    const double term = coefficient * d * (transpose ? X[(size_t)(i * cols + q)] : X[(size_t)(q * cols + j)]);
                    g_ref[(size_t)(i * cols + j)] += term;
                    g_mag[(size_t)(i * cols + j)] += std::fabs(term);
                }
        EXPECT_TRUE(all_near(G.data(), cols, rows, cols, g_ref, g_mag, kAtol, rtol(side + 2)));
    }
}

}  // namespace
}  // namespace cpu_test
