// lk_cpu_nf4_matmul, lk_cpu_qlora_forward and lk_cpu_qlora_backward against double-precision
// references built on a naive decode of the same codes (nf4_reference.h).
//
// Shapes: M in {1, 7, 16} (the decode path) and {17, 33} (the tiled path); (in, out, blocksize)
// with in = 192 = 3 blocks of 64 (the AVX-512 register path), in = 100 with blocksize 32 (blocks
// cross rows: the scratch-row path), in = 33 (odd: rows start mid-byte), out = 37 and 13 (no
// multiple of any tile); plain and double-quantized statistics, NF4 and FP4.
//
// Tolerance per output element, u = 2^-24, L the longest fp32 reduction feeding it:
//   |got - ref| <= 1e-6 + 4 * (L + 2) * u * magnitude
// with magnitude the sum of |terms| (as lora_test.cpp). The reference uses the decoded weights
// exactly (table value times the block's fp32 absmax, both exact in double), so only the
// kernel's fp32 accumulation and the one rounding of table * absmax enter.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "nf4_reference.h"

namespace cpu_test {
namespace {

constexpr double kAtol = 1e-6;
double rtol(int64_t longest_reduction) {
    return 4.0 * (double)(longest_reduction + 2) * kUnitRoundoff;
}
const float kNaN = std::numeric_limits<float>::quiet_NaN();

struct Layout {
    int64_t in, out, blocksize;
    int32_t quant_type;
    bool nested;
};

std::string layout_name(const Layout& l) {
    return std::string(l.quant_type == LK_QUANT_NF4 ? "nf4" : "fp4") + "_in" +
           std::to_string(l.in) + "_out" + std::to_string(l.out) + "_bs" +
           std::to_string(l.blocksize) + (l.nested ? "_nested" : "");
}

void PrintTo(const Layout& l, std::ostream* os) { *os << layout_name(l); }

// A quantized random weight and its exact decode (what the kernels must multiply by).
struct QuantWeight {
    std::vector<uint8_t> codes, qabsmax;
    std::vector<float> absmax, absmax2, decoded_absmax;
    float offset = 0.0f;
    lk_quant_stats stats{};
    std::vector<double> W;  // [out, in]
};

QuantWeight make_weight(const Layout& l, uint64_t seed) {
    const int64_t n = l.in * l.out, nb = (n + l.blocksize - 1) / l.blocksize;
    Rng rng(seed);
    const std::vector<float> w = gaussian(rng, n, 0.2f);
    QuantWeight q;
    q.codes.assign((size_t)((n + 1) / 2), 0);
    q.absmax.assign((size_t)nb, 0.0f);
    EXPECT_EQ(lk_cpu_quantize_4bit(l.quant_type, n, l.blocksize, w.data(), q.codes.data(),
                                   q.absmax.data()),
              LK_OK)
        << last_error();
    q.stats.quant_type = l.quant_type;
    q.stats.blocksize = l.blocksize;
    q.decoded_absmax = q.absmax;
    if (l.nested) {
        q.qabsmax.assign((size_t)nb, 0);
        q.absmax2.assign((size_t)((nb + 255) / 256), 0.0f);
        EXPECT_EQ(lk_cpu_double_quantize(nb, q.absmax.data(), q.qabsmax.data(), q.absmax2.data(),
                                         &q.offset),
                  LK_OK)
            << last_error();
        for (int64_t b = 0; b < nb; ++b)
            q.decoded_absmax[(size_t)b] =
                from_bits(kRefDynamicSigned[q.qabsmax[(size_t)b]]) * q.absmax2[(size_t)(b / 256)] +
                q.offset;
        q.stats.qabsmax = q.qabsmax.data();
        q.stats.absmax2 = q.absmax2.data();
        q.stats.offset = q.offset;
    } else {
        q.stats.absmax = q.absmax.data();
    }
    q.W = naive_decode(l.quant_type, n, l.blocksize, q.codes, q.decoded_absmax);
    return q;
}

struct Product {
    std::vector<double> value, magnitude;
};

// out[i, j] = sum_k a(i, k) * b(j, k), a and b given as element functions.
template <class A, class B>
Product product(int64_t rows, int64_t cols, int64_t K, const A& a, const B& b) {
    Product p{std::vector<double>((size_t)(rows * cols)),
              std::vector<double>((size_t)(rows * cols))};
    for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < cols; ++j) {
            double sum = 0.0, mag = 0.0;
            for (int64_t k = 0; k < K; ++k) {
                const double t = a(i, k) * b(j, k);
                sum += t;
                mag += std::fabs(t);
            }
            p.value[(size_t)(i * cols + j)] = sum;
            p.magnitude[(size_t)(i * cols + j)] = mag;
        }
    return p;
}

std::vector<Layout> layouts() {
    return {{192, 37, 64, LK_QUANT_NF4, false}, {192, 37, 64, LK_QUANT_NF4, true},
            {100, 13, 32, LK_QUANT_NF4, false}, {100, 13, 32, LK_QUANT_FP4, true},
            {33, 5, 32, LK_QUANT_NF4, false},   {256, 20, 128, LK_QUANT_FP4, false}};
}

class Nf4Matmul : public ::testing::TestWithParam<Layout> {};

TEST_P(Nf4Matmul, MatchesDequantizedReference) {
    const Layout l = GetParam();
    const QuantWeight q = make_weight(l, 100 + (uint64_t)l.in);
    Rng rng(7);
    const std::vector<float> bias = rng.vector(l.out);
    for (int64_t M : {1, 7, 16, 17, 33}) {
        SCOPED_TRACE(layout_name(l) + " M=" + std::to_string(M));
        const std::vector<float> x = rng.vector(M * l.in);
        Product ref = product(
            M, l.out, l.in, [&](int64_t m, int64_t k) { return (double)x[(size_t)(m * l.in + k)]; },
            [&](int64_t j, int64_t k) { return q.W[(size_t)(j * l.in + k)]; });
        std::vector<float> y((size_t)(M * l.out), kNaN);
        ASSERT_EQ(lk_cpu_nf4_matmul(M, l.in, l.out, x.data(), q.codes.data(), &q.stats, nullptr,
                                    y.data()),
                  LK_OK)
            << last_error();
        EXPECT_TRUE(
            all_near(y.data(), l.out, M, l.out, ref.value, ref.magnitude, kAtol, rtol(l.in)));
        for (int64_t i = 0; i < M * l.out; ++i) {
            ref.value[(size_t)i] += bias[(size_t)(i % l.out)];
            ref.magnitude[(size_t)i] += std::fabs(bias[(size_t)(i % l.out)]);
        }
        ASSERT_EQ(lk_cpu_nf4_matmul(M, l.in, l.out, x.data(), q.codes.data(), &q.stats, bias.data(),
                                    y.data()),
                  LK_OK)
            << last_error();
        EXPECT_TRUE(
            all_near(y.data(), l.out, M, l.out, ref.value, ref.magnitude, kAtol, rtol(l.in + 1)));
    }
}

INSTANTIATE_TEST_SUITE_P(Layouts, Nf4Matmul, ::testing::ValuesIn(layouts()),
                         [](const ::testing::TestParamInfo<Layout>& info) {
                             return layout_name(info.param);
                         });

// ---- QLoRA ------------------------------------------------------------------------------------

std::vector<double> mask_of(int64_t M, int64_t in, uint64_t seed, float p) {
    std::vector<double> mask((size_t)(M * in));
    for (int64_t i = 0; i < M * in; ++i) mask[(size_t)i] = dropout_factor(seed, (uint64_t)i, p);
    return mask;
}

class QloraForward : public ::testing::TestWithParam<Layout> {};

TEST_P(QloraForward, MatchesReference) {
    const Layout l = GetParam();
    const QuantWeight q = make_weight(l, 200 + (uint64_t)l.in);
    Rng rng(11);
    const std::vector<float> bias = rng.vector(l.out);
    const float scale = 0.5f;
    for (int64_t M : {1, 16, 33})
        for (int64_t r : {0, 4})
            for (float p : {0.0f, 0.3f}) {
                SCOPED_TRACE(layout_name(l) + " M=" + std::to_string(M) +
                             " r=" + std::to_string(r) + " p=" + std::to_string(p));
                const std::vector<float> x = rng.vector(M * l.in), A = rng.vector(r * l.in),
                                         B = rng.vector(l.out * r);
                const uint64_t seed = 99 + (uint64_t)M;
                const std::vector<double> mask = mask_of(M, l.in, seed, p);
                const Product u_ref = product(
                    M, r, l.in,
                    [&](int64_t m, int64_t k) {
                        return mask[(size_t)(m * l.in + k)] * x[(size_t)(m * l.in + k)];
                    },
                    [&](int64_t t, int64_t k) { return (double)A[(size_t)(t * l.in + k)]; });
                Product y_ref = product(
                    M, l.out, l.in,
                    [&](int64_t m, int64_t k) { return (double)x[(size_t)(m * l.in + k)]; },
                    [&](int64_t j, int64_t k) { return q.W[(size_t)(j * l.in + k)]; });
                for (int64_t m = 0; m < M; ++m)
                    for (int64_t j = 0; j < l.out; ++j) {
                        double& v = y_ref.value[(size_t)(m * l.out + j)];
                        double& mag = y_ref.magnitude[(size_t)(m * l.out + j)];
                        v += bias[(size_t)j];
                        mag += std::fabs(bias[(size_t)j]);
                        for (int64_t t = 0; t < r; ++t) {
                            v += scale * u_ref.value[(size_t)(m * r + t)] * B[(size_t)(j * r + t)];
                            mag += std::fabs(scale * B[(size_t)(j * r + t)]) *
                                   u_ref.magnitude[(size_t)(m * r + t)];
                        }
                    }
                std::vector<float> y((size_t)(M * l.out), kNaN), u((size_t)(M * r), kNaN);
                ASSERT_EQ(lk_cpu_qlora_forward(M, l.in, l.out, r, x.data(), q.codes.data(),
                                               &q.stats, bias.data(), r ? A.data() : nullptr,
                                               r ? B.data() : nullptr, scale, p, seed, y.data(),
                                               r ? u.data() : nullptr),
                          LK_OK)
                    << last_error();
                if (r > 0) {
                    EXPECT_TRUE(all_near(u.data(), r, M, r, u_ref.value, u_ref.magnitude, kAtol,
                                         rtol(l.in)));
                }
                EXPECT_TRUE(all_near(y.data(), l.out, M, l.out, y_ref.value, y_ref.magnitude, kAtol,
                                     rtol(l.in + r + 1)));
            }
}

INSTANTIATE_TEST_SUITE_P(Layouts, QloraForward,
                         ::testing::Values(Layout{192, 37, 64, LK_QUANT_NF4, true},
                                           Layout{100, 13, 32, LK_QUANT_NF4, false}),
                         [](const ::testing::TestParamInfo<Layout>& info) {
                             return layout_name(info.param);
                         });

class QloraBackward : public ::testing::TestWithParam<Layout> {};

TEST_P(QloraBackward, MatchesReference) {
    const Layout l = GetParam();
    const QuantWeight q = make_weight(l, 300 + (uint64_t)l.in);
    Rng rng(13);
    const float scale = 1.5f;
    const int64_t r = 4;
    for (int64_t M : {1, 17})
        for (float p : {0.0f, 0.3f}) {
            SCOPED_TRACE(layout_name(l) + " M=" + std::to_string(M) + " p=" + std::to_string(p));
            const std::vector<float> x = rng.vector(M * l.in), A = rng.vector(r * l.in),
                                     B = rng.vector(l.out * r), dy = rng.vector(M * l.out);
            const uint64_t seed = 1234 + (uint64_t)M;
            const std::vector<double> mask = mask_of(M, l.in, seed, p);
            // u as the forward computes it (in fp32, the backward's input).
            std::vector<float> u((size_t)(M * r));
            for (int64_t m = 0; m < M; ++m)
                for (int64_t t = 0; t < r; ++t) {
                    double s = 0.0;
                    for (int64_t k = 0; k < l.in; ++k)
                        s += mask[(size_t)(m * l.in + k)] * x[(size_t)(m * l.in + k)] *
                             A[(size_t)(t * l.in + k)];
                    u[(size_t)(m * r + t)] = (float)s;
                }
            // du = s * dy B [M, r]
            const Product du = product(
                M, r, l.out,
                [&](int64_t m, int64_t j) { return scale * (double)dy[(size_t)(m * l.out + j)]; },
                [&](int64_t t, int64_t j) { return (double)B[(size_t)(j * r + t)]; });
            // dx = dy W + mask .* (du A)
            Product dx_ref = product(
                M, l.in, l.out,
                [&](int64_t m, int64_t j) { return (double)dy[(size_t)(m * l.out + j)]; },
                [&](int64_t k, int64_t j) { return q.W[(size_t)(j * l.in + k)]; });
            for (int64_t m = 0; m < M; ++m)
                for (int64_t k = 0; k < l.in; ++k) {
                    const double f = mask[(size_t)(m * l.in + k)];
                    for (int64_t t = 0; t < r; ++t) {
                        dx_ref.value[(size_t)(m * l.in + k)] +=
                            f * du.value[(size_t)(m * r + t)] * A[(size_t)(t * l.in + k)];
                        dx_ref.magnitude[(size_t)(m * l.in + k)] +=
                            f * du.magnitude[(size_t)(m * r + t)] *
                            std::fabs(A[(size_t)(t * l.in + k)]);
                    }
                }
            // dA = du^T dropout(x) [r, in]; dB = s * dy^T u [out, r]
            Product dA_ref = product(
                r, l.in, M, [&](int64_t t, int64_t m) { return du.value[(size_t)(m * r + t)]; },
                [&](int64_t k, int64_t m) {
                    return mask[(size_t)(m * l.in + k)] * x[(size_t)(m * l.in + k)];
                });
            for (int64_t t = 0; t < r; ++t)
                for (int64_t k = 0; k < l.in; ++k) {
                    double mag = 0.0;
                    for (int64_t m = 0; m < M; ++m)
                        mag += du.magnitude[(size_t)(m * r + t)] *
                               std::fabs(mask[(size_t)(m * l.in + k)] * x[(size_t)(m * l.in + k)]);
                    dA_ref.magnitude[(size_t)(t * l.in + k)] = mag;
                }
            const Product dB_ref = product(
                l.out, r, M,
                [&](int64_t j, int64_t m) { return scale * (double)dy[(size_t)(m * l.out + j)]; },
                [&](int64_t t, int64_t m) { return (double)u[(size_t)(m * r + t)]; });

            std::vector<float> dx((size_t)(M * l.in), kNaN), dA((size_t)(r * l.in), kNaN),
                dB((size_t)(l.out * r), kNaN);
            ASSERT_EQ(lk_cpu_qlora_backward(M, l.in, l.out, r, x.data(), q.codes.data(), &q.stats,
                                            A.data(), B.data(), u.data(), dy.data(), scale, p, seed,
                                            dx.data(), dA.data(), dB.data()),
                      LK_OK)
                << last_error();
            EXPECT_TRUE(all_near(dx.data(), l.in, M, l.in, dx_ref.value, dx_ref.magnitude, kAtol,
                                 rtol(l.out + r)));
            EXPECT_TRUE(all_near(dA.data(), l.in, r, l.in, dA_ref.value, dA_ref.magnitude, kAtol,
                                 rtol(M + l.out)));
            EXPECT_TRUE(
                all_near(dB.data(), r, l.out, r, dB_ref.value, dB_ref.magnitude, kAtol, rtol(M)));
            // dx alone (dA, dB NULL) is the same.
            std::vector<float> dx_only((size_t)(M * l.in), kNaN);
            ASSERT_EQ(lk_cpu_qlora_backward(M, l.in, l.out, r, x.data(), q.codes.data(), &q.stats,
                                            A.data(), B.data(), u.data(), dy.data(), scale, p, seed,
                                            dx_only.data(), nullptr, nullptr),
                      LK_OK)
                << last_error();
            EXPECT_EQ(dx_only, dx);
        }
}

INSTANTIATE_TEST_SUITE_P(Layouts, QloraBackward,
                         ::testing::Values(Layout{192, 37, 64, LK_QUANT_NF4, true},
                                           Layout{100, 13, 32, LK_QUANT_NF4, false}),
                         [](const ::testing::TestParamInfo<Layout>& info) {
                             return layout_name(info.param);
                         });

TEST(Nf4MatmulEdges, EmptyReductionGivesBias) {
    // in = 0: no codes to read, y = bias (and u = 0 for the QLoRA forward).
    const std::vector<float> bias = {0.5f, -2.0f, 3.0f};
    lk_quant_stats stats{LK_QUANT_NF4, 0, 64, nullptr, nullptr, nullptr, 0.0f, 0};
    std::vector<float> y(6, kNaN), u(4, kNaN);
    ASSERT_EQ(lk_cpu_nf4_matmul(2, 0, 3, nullptr, nullptr, &stats, bias.data(), y.data()), LK_OK)
        << last_error();
    for (int64_t i = 0; i < 6; ++i) EXPECT_EQ(y[(size_t)i], bias[(size_t)(i % 3)]);
    const std::vector<float> B(6, 1.0f);
    std::fill(y.begin(), y.end(), kNaN);
    ASSERT_EQ(lk_cpu_qlora_forward(2, 0, 3, 2, nullptr, nullptr, &stats, bias.data(), nullptr,
                                   B.data(), 1.0f, 0.0f, 0, y.data(), u.data()),
              LK_OK)
        << last_error();
    for (int64_t i = 0; i < 6; ++i) EXPECT_EQ(y[(size_t)i], bias[(size_t)(i % 3)]);
    for (float v : u) EXPECT_EQ(v, 0.0f);
    // M = 0: a valid weight, no x and no y.
    const std::vector<uint8_t> codes(96, 0x77);
    const std::vector<float> absmax(3, 1.0f);
    stats.absmax = absmax.data();
    EXPECT_EQ(lk_cpu_nf4_matmul(0, 64, 3, nullptr, codes.data(), &stats, nullptr, nullptr), LK_OK)
        << last_error();
}

TEST(Nf4MatmulErrors, ArgumentsAreNamed) {
    std::vector<float> x(64, 1.0f), y(2), absmax(2, 1.0f);
    std::vector<uint8_t> codes(64);
    lk_quant_stats stats{LK_QUANT_NF4, 0, 64, absmax.data(), nullptr, nullptr, 0.0f, 0};
    EXPECT_EQ(lk_cpu_nf4_matmul(1, 64, 2, x.data(), nullptr, &stats, nullptr, y.data()),
              LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("codes is NULL"), std::string::npos) << last_error();
    EXPECT_EQ(lk_cpu_nf4_matmul(1, 64, 2, nullptr, codes.data(), &stats, nullptr, y.data()),
              LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("x is NULL"), std::string::npos) << last_error();
    EXPECT_EQ(lk_cpu_nf4_matmul(1, 64, 2, x.data(), codes.data(), nullptr, nullptr, y.data()),
              LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("stats is NULL"), std::string::npos) << last_error();
    stats.blocksize = 8192;
    EXPECT_EQ(lk_cpu_nf4_matmul(1, 64, 2, x.data(), codes.data(), &stats, nullptr, y.data()),
              LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("blocksize = 8192"), std::string::npos) << last_error();
    stats.blocksize = 64;
    EXPECT_EQ(lk_cpu_qlora_forward(1, 64, 2, 4, x.data(), codes.data(), &stats, nullptr, nullptr,
                                   y.data(), 1.0f, 0.0f, 0, y.data(), y.data()),
              LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("lk_cpu_qlora_forward: A is NULL"), std::string::npos)
        << last_error();
    EXPECT_EQ(lk_cpu_qlora_backward(1, 64, 2, 0, x.data(), codes.data(), &stats, nullptr, nullptr,
                                    nullptr, y.data(), 1.0f, 1.0f, 0, x.data(), nullptr, nullptr),
              LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("dropout_p"), std::string::npos) << last_error();
}

}  // namespace
}  // namespace cpu_test
