// lk_cpu_lora_forward / _backward / _merge against naive double-precision references.
//
// Shapes: M in {1, 7, 16, 33, 130} (the dot-product path for few rows, the packed GEMM for
// more), in/out that are multiples of no micro-tile (and in = 1030 > every ISA's kc block),
// r in {0 (plain linear), 1, 8, 16, 64}, with and without bias, dropout 0 and 0.3 (the mask
// comes from kernels/common.cuh's lk_dropout_factor, as every backend's does).
//
// Tolerances, per output element, with u = 2^-24 and L the longest fp32 reduction feeding it:
//   |got - ref| <= 1e-6 + 4 * (L + 2) * u * magnitude
// where magnitude is the sum of |terms| of the exact expression, an upstream intermediate
// (u in y, du in dA and dx) entering with its own sum of |terms| since its error carries over.
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

struct Shape {
    int64_t M, in, out;
};

std::string shape_name(const Shape& s) {
    return "M" + std::to_string(s.M) + "_in" + std::to_string(s.in) + "_out" +
           std::to_string(s.out);
}

void PrintTo(const Shape& s, std::ostream* os) { *os << shape_name(s); }

// The dropout factor of every element of x [M, in] (all 1 when p == 0).
std::vector<double> dropout_mask(int64_t M, int64_t in, uint64_t seed, float p) {
    std::vector<double> mask((size_t)(M * in));
    for (int64_t i = 0; i < M * in; ++i) mask[(size_t)i] = dropout_factor(seed, (uint64_t)i, p);
    return mask;
}

// At p = 0.3 over more than a few dozen elements the mask must both drop and keep (else the
// dropout cases would test nothing).
void expect_mask_drops_and_keeps(const std::vector<double>& mask, float p) {
    if (p == 0.0f || mask.size() < 64) return;
    int64_t dropped = 0;
    for (double f : mask) dropped += f == 0.0;
    EXPECT_GT(dropped, 0);
    EXPECT_LT(dropped, (int64_t)mask.size());
}

// ---- forward ---------------------------------------------------------------------------------

class LoraForward : public ::testing::TestWithParam<Shape> {};

// sum_k a[i*lda + k] * b[j*ldb + k] and sum_k |a * b| for every (i, j): the fp64 reference of
// every product below, with operands addressed through strides so transposes need no copies.
struct Product {
    std::vector<double> value, magnitude;
};

Product reference_product(int64_t rows, int64_t cols, int64_t K, const float* a, int64_t a_row,
                          int64_t a_k, const float* b, int64_t b_col, int64_t b_k,
                          const std::vector<double>* a_factor = nullptr) {
    Product p{std::vector<double>((size_t)(rows * cols)),
              std::vector<double>((size_t)(rows * cols))};
    for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < cols; ++j) {
            double sum = 0.0, mag = 0.0;
            for (int64_t k = 0; k < K; ++k) {
                const int64_t ai = i * a_row + k * a_k;
                const double term =
                    (a_factor ? (*a_factor)[(size_t)ai] : 1.0) * a[ai] * b[j * b_col + k * b_k];
                sum += term;
                mag += std::fabs(term);
            }
            p.value[(size_t)(i * cols + j)] = sum;
            p.magnitude[(size_t)(i * cols + j)] = mag;
        }
    return p;
}

TEST_P(LoraForward, MatchesReference) {
    const Shape s = GetParam();
    const int64_t M = s.M, in = s.in, out = s.out;
    Rng rng(1000);
    const std::vector<float> x = rng.vector(M * in), W0 = rng.vector(out * in),
                             bias = rng.vector(out);
    const Product base =
        reference_product(M, out, in, x.data(), in, 1, W0.data(), in, 1);  // x W0^T
    const float scale = 0.75f;
    for (int64_t r : {0, 1, 8, 16, 64}) {
        const std::vector<float> A = rng.vector(r * in), B = rng.vector(out * r);
        for (float p : {0.0f, 0.3f}) {
            const uint64_t seed = 0x5EED + (uint64_t)r;
            const std::vector<double> mask = dropout_mask(M, in, seed, p);
            expect_mask_drops_and_keeps(mask, p);
            // u = dropout(x) A^T
            const Product u_ref =
                reference_product(M, r, in, x.data(), in, 1, A.data(), in, 1, &mask);
            for (bool with_bias : {false, true}) {
                SCOPED_TRACE(shape_name(s) + " r=" + std::to_string(r) +
                             (with_bias ? " bias" : " no-bias") + " dropout=" + std::to_string(p));
                // y = x W0^T + bias + scale * u B^T
                std::vector<double> y_ref = base.value, y_mag = base.magnitude;
                for (int64_t m = 0; m < M; ++m)
                    for (int64_t j = 0; j < out; ++j) {
                        double& sum = y_ref[(size_t)(m * out + j)];
                        double& mag = y_mag[(size_t)(m * out + j)];
                        if (with_bias) {
                            sum += bias[j];
                            mag += std::fabs((double)bias[j]);
                        }
                        for (int64_t t = 0; t < r; ++t) {
                            sum += (double)scale * u_ref.value[(size_t)(m * r + t)] * B[j * r + t];
                            mag += std::fabs((double)scale * B[j * r + t]) *
                                   u_ref.magnitude[(size_t)(m * r + t)];
                        }
                    }

                std::vector<float> y((size_t)(M * out), kNaN), u((size_t)(M * r), kNaN);
                ASSERT_EQ(lk_cpu_lora_forward(M, in, out, r, x.data(), W0.data(),
                                              with_bias ? bias.data() : nullptr,
                                              r ? A.data() : nullptr, r ? B.data() : nullptr, scale,
                                              p, seed, y.data(), r ? u.data() : nullptr),
                          LK_OK)
                    << last_error();
                EXPECT_TRUE(
                    all_near(u.data(), r, M, r, u_ref.value, u_ref.magnitude, kAtol, rtol(in)));
                EXPECT_TRUE(all_near(y.data(), out, M, out, y_ref, y_mag, kAtol, rtol(in + r)));
            }
        }
    }
}

std::vector<Shape> forward_shapes() {
    std::vector<Shape> shapes;
    for (int64_t M : {1, 7, 16, 33, 130})
        for (auto io : {std::pair<int64_t, int64_t>{37, 53}, {300, 130}, {1030, 70}})
            shapes.push_back({M, io.first, io.second});
    return shapes;
}

INSTANTIATE_TEST_SUITE_P(Shapes, LoraForward, ::testing::ValuesIn(forward_shapes()),
                         [](const ::testing::TestParamInfo<Shape>& info) {
                             return shape_name(info.param);
                         });

TEST(LoraForwardEdges, EmptyInputGivesBiasAndZeroU) {
    // in = 0: every product is empty; y is the bias and u is zero (overwritten, not left as NaN).
    const float bias[3] = {1.5f, -2.0f, 0.25f};
    const float B[3 * 2] = {1, 2, 3, 4, 5, 6};
    std::vector<float> y(2 * 3, kNaN), u(2 * 2, kNaN);
    ASSERT_EQ(lk_cpu_lora_forward(2, 0, 3, 2, nullptr, nullptr, bias, nullptr, B, 1.0f, 0.0f, 0,
                                  y.data(), u.data()),
              LK_OK)
        << last_error();
    EXPECT_EQ(y, (std::vector<float>{1.5f, -2.0f, 0.25f, 1.5f, -2.0f, 0.25f}));
    EXPECT_EQ(u, std::vector<float>(4, 0.0f));
}

// ---- backward --------------------------------------------------------------------------------

enum class Outputs { All, DxOnly, DaOnly, DbOnly };

const char* outputs_name(Outputs o) {
    switch (o) {
        case Outputs::All:
            return "dx+dA+dB";
        case Outputs::DxOnly:
            return "dx";
        case Outputs::DaOnly:
            return "dA";
        case Outputs::DbOnly:
            return "dB";
    }
    return "?";
}

class LoraBackward : public ::testing::TestWithParam<Shape> {};

TEST_P(LoraBackward, MatchesReference) {
    const Shape s = GetParam();
    const int64_t M = s.M, in = s.in, out = s.out;
    Rng rng(2000);
    const std::vector<float> x = rng.vector(M * in), W0 = rng.vector(out * in),
                             dy = rng.vector(M * out);
    const Product dx_base =
        reference_product(M, in, out, dy.data(), out, 1, W0.data(), 1, in);  // dy W0
    const float scale = -1.5f;
    for (int64_t r : {0, 1, 16, 64}) {
        const std::vector<float> A = rng.vector(r * in), B = rng.vector(out * r),
                                 u = rng.vector(M * r);
        // du = s dy B;  dB = s dy^T u (both scaled below)
        Product du = reference_product(M, r, out, dy.data(), out, 1, B.data(), 1, r);
        Product dB_ref = reference_product(out, r, M, dy.data(), 1, out, u.data(), 1, r);
        for (Product* product : {&du, &dB_ref})
            for (size_t i = 0; i < product->value.size(); ++i) {
                product->value[i] *= scale;
                product->magnitude[i] *= std::fabs(scale);
            }
        for (float p : {0.0f, 0.3f}) {
            SCOPED_TRACE(shape_name(s) + " r=" + std::to_string(r) +
                         " dropout=" + std::to_string(p));
            const uint64_t seed = 0xD0 + (uint64_t)r;
            const std::vector<double> mask = dropout_mask(M, in, seed, p);
            expect_mask_drops_and_keeps(mask, p);

            // dA = du^T (mask .* x), du's error carried by its magnitude.
            std::vector<double> dA_ref((size_t)(r * in)), dA_mag((size_t)(r * in));
            for (int64_t t = 0; t < r; ++t)
                for (int64_t i = 0; i < in; ++i) {
                    double sum = 0.0, mag = 0.0;
                    for (int64_t m = 0; m < M; ++m) {
                        const double xd = mask[(size_t)(m * in + i)] * x[m * in + i];
                        sum += du.value[(size_t)(m * r + t)] * xd;
                        mag += du.magnitude[(size_t)(m * r + t)] * std::fabs(xd);
                    }
                    dA_ref[(size_t)(t * in + i)] = sum;
                    dA_mag[(size_t)(t * in + i)] = mag;
                }
            // dx = dy W0 + mask .* (du A)
            std::vector<double> dx_ref = dx_base.value, dx_mag = dx_base.magnitude;
            for (int64_t m = 0; m < M; ++m)
                for (int64_t i = 0; i < in; ++i) {
                    double lora = 0.0, lora_mag = 0.0;
                    for (int64_t t = 0; t < r; ++t) {
                        lora += du.value[(size_t)(m * r + t)] * A[t * in + i];
                        lora_mag +=
                            du.magnitude[(size_t)(m * r + t)] * std::fabs((double)A[t * in + i]);
                    }
                    const double f = mask[(size_t)(m * in + i)];
                    dx_ref[(size_t)(m * in + i)] += f * lora;
                    dx_mag[(size_t)(m * in + i)] += f * lora_mag;
                }

            for (Outputs outputs :
                 {Outputs::All, Outputs::DxOnly, Outputs::DaOnly, Outputs::DbOnly}) {
                SCOPED_TRACE(std::string("outputs=") + outputs_name(outputs));
                const bool want_dx = outputs == Outputs::All || outputs == Outputs::DxOnly;
                const bool want_dA = outputs == Outputs::All || outputs == Outputs::DaOnly;
                const bool want_dB = outputs == Outputs::All || outputs == Outputs::DbOnly;
                // Outputs start as NaN: they must be overwritten, not accumulated into.
                std::vector<float> dx((size_t)(M * in), kNaN), dA((size_t)(r * in), kNaN),
                    dB((size_t)(out * r), kNaN);
                ASSERT_EQ(lk_cpu_lora_backward(
                              M, in, out, r, x.data(), W0.data(), r ? A.data() : nullptr,
                              r ? B.data() : nullptr, r ? u.data() : nullptr, dy.data(), scale, p,
                              seed, want_dx ? dx.data() : nullptr, want_dA ? dA.data() : nullptr,
                              want_dB ? dB.data() : nullptr),
                          LK_OK)
                    << last_error();
                if (want_dx) {
                    EXPECT_TRUE(
                        all_near(dx.data(), in, M, in, dx_ref, dx_mag, kAtol, rtol(out + r)));
                } else {
                    for (float v : dx)
                        ASSERT_TRUE(std::isnan(v)) << "dx was written though not requested";
                }
                if (want_dA) {
                    EXPECT_TRUE(
                        all_near(dA.data(), in, r, in, dA_ref, dA_mag, kAtol, rtol(out + M)));
                }
                if (want_dB) {
                    EXPECT_TRUE(all_near(dB.data(), r, out, r, dB_ref.value, dB_ref.magnitude,
                                         kAtol, rtol(M)));
                }
            }
        }
    }
}

std::vector<Shape> backward_shapes() {
    std::vector<Shape> shapes;
    // M <= 16: the small-M dx path (gemv_tn.h), 16 its largest M and its 8-row register tile.
    for (int64_t M : {1, 7, 16, 33, 130})
        for (auto io : {std::pair<int64_t, int64_t>{37, 53}, {300, 130}, {70, 1030}})
            shapes.push_back({M, io.first, io.second});
    // Small M with enough work (>= 2e6 multiply-adds) that the dx path splits W0's rows across
    // threads and reduces their partial dx (run with 2 or more OpenMP threads).
    shapes.push_back({1, 1030, 2053});
    shapes.push_back({16, 300, 1030});
    return shapes;
}

INSTANTIATE_TEST_SUITE_P(Shapes, LoraBackward, ::testing::ValuesIn(backward_shapes()),
                         [](const ::testing::TestParamInfo<Shape>& info) {
                             return shape_name(info.param);
                         });

TEST(LoraBackwardEdges, NoRowsGivesZeroWeightGradients) {
    // M = 0: dA and dB are sums over no rows, so they are zero (and must be written).
    const float A[2 * 3] = {1, 2, 3, 4, 5, 6}, B[4 * 2] = {1, 2, 3, 4, 5, 6, 7, 8};
    std::vector<float> dA(2 * 3, kNaN), dB(4 * 2, kNaN);
    ASSERT_EQ(lk_cpu_lora_backward(0, 3, 4, 2, nullptr, nullptr, A, B, nullptr, nullptr, 1.0f, 0.0f,
                                   0, nullptr, dA.data(), dB.data()),
              LK_OK)
        << last_error();
    EXPECT_EQ(dA, std::vector<float>(6, 0.0f));
    EXPECT_EQ(dB, std::vector<float>(8, 0.0f));
}

// ---- merge / unmerge -------------------------------------------------------------------------

struct MergeShape {
    int64_t out, in, r;
};

void PrintTo(const MergeShape& s, std::ostream* os) {
    *os << "out" << s.out << "_in" << s.in << "_r" << s.r;
}

class LoraMerge : public ::testing::TestWithParam<MergeShape> {};

// merge: W1 = W + s B A, |W1 - ref| <= 1e-6 + 4 (r + 2) u (|W| + |s| sum_t |B_ot A_ti|);
// unmerge (-s) restores W within twice that (both rounding steps, same magnitudes).
TEST_P(LoraMerge, MergeThenUnmergeRestoresW) {
    const MergeShape s = GetParam();
    Rng rng(3000 + s.r);
    const std::vector<float> W = rng.vector(s.out * s.in), A = rng.vector(s.r * s.in),
                             B = rng.vector(s.out * s.r);
    const float scale = 0.625f;
    std::vector<double> merged_ref((size_t)(s.out * s.in)), magnitude((size_t)(s.out * s.in)),
        original(W.begin(), W.end());
    for (int64_t o = 0; o < s.out; ++o)
        for (int64_t i = 0; i < s.in; ++i) {
            double sum = W[o * s.in + i], mag = std::fabs(sum);
            for (int64_t t = 0; t < s.r; ++t) {
                sum += (double)scale * B[o * s.r + t] * A[t * s.in + i];
                mag += std::fabs((double)scale * B[o * s.r + t] * A[t * s.in + i]);
            }
            merged_ref[(size_t)(o * s.in + i)] = sum;
            magnitude[(size_t)(o * s.in + i)] = mag;
        }
    std::vector<float> Wm = W;
    ASSERT_EQ(lk_cpu_lora_merge(s.out, s.in, s.r, Wm.data(), A.data(), B.data(), scale), LK_OK)
        << last_error();
    EXPECT_TRUE(all_near(Wm.data(), s.in, s.out, s.in, merged_ref, magnitude, kAtol, rtol(s.r)));
    ASSERT_EQ(lk_cpu_lora_merge(s.out, s.in, s.r, Wm.data(), A.data(), B.data(), -scale), LK_OK)
        << last_error();
    EXPECT_TRUE(
        all_near(Wm.data(), s.in, s.out, s.in, original, magnitude, kAtol, 2.0 * rtol(s.r)));
}

INSTANTIATE_TEST_SUITE_P(Shapes, LoraMerge,
                         ::testing::Values(MergeShape{37, 53, 1}, MergeShape{130, 300, 16},
                                           MergeShape{65, 1030, 64}, MergeShape{4200, 7, 8}),
                         [](const ::testing::TestParamInfo<MergeShape>& info) {
                             return "out" + std::to_string(info.param.out) + "_in" +
                                    std::to_string(info.param.in) + "_r" +
                                    std::to_string(info.param.r);
                         });

TEST(LoraMergeEdges, RankZeroLeavesWUnchanged) {
    std::vector<float> W = {1.0f, -2.0f, 3.0f, 4.0f};
    ASSERT_EQ(lk_cpu_lora_merge(2, 2, 0, W.data(), nullptr, nullptr, 5.0f), LK_OK) << last_error();
    EXPECT_EQ(W, (std::vector<float>{1.0f, -2.0f, 3.0f, 4.0f}));
}

}  // namespace
}  // namespace cpu_test
