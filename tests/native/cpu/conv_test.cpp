// lk_cpu_conv2d_forward / _backward_data / _backward_weight against a direct seven-loop reference
// in double (n, o, ho, wo, c, a, b), written out here.
//
// Shapes: pointwise (1x1, the path without im2col), 3x3 with padding, strided, dilated,
// rectangular kernels and images, prime channel counts and sizes, a window that leaves only one
// output row, batches of 1, 3 and 19 (past one weight-gradient chunk of 16); alpha and beta both
// exercised (beta 0 leaves NaN in the output, so reading it fails).
// Tolerance, per element: |got - ref| <= 1e-6 + 4 * (L + 2) * u * magnitude, L the reduction length
// (C*KH*KW forward, O*KH*KW backward data, N*HO*WO backward weight, plus the chunk sums).
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "reference.h"

namespace cpu_test {
namespace {

struct ConvCase {
    lk_conv2d_shape s;
    float alpha, beta;
    int64_t HO() const { return (s.H + 2 * s.pad_h - s.dilation_h * (s.KH - 1) - 1) / s.stride_h + 1; }
    int64_t WO() const { return (s.W + 2 * s.pad_w - s.dilation_w * (s.KW - 1) - 1) / s.stride_w + 1; }
};

std::string conv_name(const ConvCase& c) {
    const lk_conv2d_shape& s = c.s;
    return "N" + std::to_string(s.N) + "_C" + std::to_string(s.C) + "_" + std::to_string(s.H) + "x" + std::to_string(s.W) +
           "_O" + std::to_string(s.O) + "_k" + std::to_string(s.KH) + "x" + std::to_string(s.KW) + "_s" +
           std::to_string(s.stride_h) + std::to_string(s.stride_w) + "_p" + std::to_string(s.pad_h) +
           std::to_string(s.pad_w) + "_d" + std::to_string(s.dilation_h) + std::to_string(s.dilation_w) +
           (c.beta != 0.0f ? "_beta" : "");
}

void PrintTo(const ConvCase& c, std::ostream* os) { *os << conv_name(c); }

std::vector<ConvCase> conv_cases() {
    return {
        {{1, 3, 5, 7, 4, 1, 1, 1, 1, 0, 0, 1, 1}, 1.0f, 0.0f},    // pointwise
        {{3, 5, 7, 6, 2, 1, 1, 1, 1, 0, 0, 1, 1}, 0.5f, 0.5f},    // pointwise, alpha and beta
        {{3, 3, 7, 5, 5, 3, 3, 1, 1, 1, 1, 1, 1}, 1.0f, 0.0f},    // 3x3, padding 1
        {{2, 2, 9, 8, 3, 3, 2, 2, 3, 1, 0, 1, 1}, -0.75f, 0.5f},  // rectangular kernel, strides 2 and 3
        {{2, 3, 11, 10, 2, 3, 3, 1, 2, 2, 1, 2, 3}, 1.0f, 0.0f},  // dilation 2 and 3, padding
        {{19, 2, 4, 5, 3, 2, 2, 2, 1, 0, 1, 1, 1}, 1.0f, 0.0f},   // 19 images: two weight-gradient chunks
        {{1, 1, 3, 13, 1, 3, 3, 1, 1, 0, 0, 1, 1}, 1.0f, 0.5f},   // one output row
        {{2, 7, 1, 1, 5, 3, 3, 1, 1, 1, 1, 1, 1}, 1.0f, 0.0f},    // 1x1 image, 3x3 kernel, padding 1
    };
}

struct ConvData {
    ConvCase c;
    int64_t HO, WO;
    std::vector<float> x, w, bias, dy;
    ConvData(const ConvCase& cc, uint64_t seed) : c(cc), HO(cc.HO()), WO(cc.WO()) {
        Rng rng(seed);
        const lk_conv2d_shape& s = c.s;
        x = rng.vector(s.N * s.C * s.H * s.W);
        w = rng.vector(s.O * s.C * s.KH * s.KW);
        bias = rng.vector(s.O);
        dy = rng.vector(s.N * s.O * HO * WO);
    }
    // Calls f(n, o, ho, wo, c, a, b, x index, w index) for every term of the convolution: the seven loops.
    template <class F>
    void for_each_term(const F& f) const {
        const lk_conv2d_shape& s = c.s;
        for (int64_t n = 0; n < s.N; ++n)
            for (int64_t o = 0; o < s.O; ++o)
                for (int64_t ho = 0; ho < HO; ++ho)
                    for (int64_t wo = 0; wo < WO; ++wo)
                        for (int64_t ch = 0; ch < s.C; ++ch)
                            for (int64_t a = 0; a < s.KH; ++a)
                                for (int64_t b = 0; b < s.KW; ++b) {
                                    const int64_t h = ho * s.stride_h - s.pad_h + a * s.dilation_h;
                                    const int64_t v = wo * s.stride_w - s.pad_w + b * s.dilation_w;
                                    if (h < 0 || h >= s.H || v < 0 || v >= s.W) continue;
                                    f((size_t)(((n * s.O + o) * HO + ho) * WO + wo), (size_t)(((n * s.C + ch) * s.H + h) * s.W + v),
                                      (size_t)(((o * s.C + ch) * s.KH + a) * s.KW + b));
                                }
    }
};

class Conv2d : public ::testing::TestWithParam<ConvCase> {};

TEST_P(Conv2d, ForwardMatchesTheSevenLoopReference) {
    const ConvData d(GetParam(), 606);
    const lk_conv2d_shape& s = d.c.s;
    const int64_t count = s.N * s.O * d.HO * d.WO;
    const std::vector<float> y0 = Rng(607).vector(count);
    std::vector<double> ref(count, 0.0), magnitude(count, 0.0);
    d.for_each_term([&](size_t yi, size_t xi, size_t wi) {
        ref[yi] += (double)d.c.alpha * d.x[xi] * d.w[wi];
        magnitude[yi] += std::fabs((double)d.c.alpha * d.x[xi] * d.w[wi]);
    });
    for (int64_t i = 0; i < count; ++i) {
        const int64_t o = (i / (d.HO * d.WO)) % s.O;
        ref[i] += (double)d.bias[o] + (double)d.c.beta * y0[i];
        magnitude[i] += std::fabs((double)d.bias[o]) + std::fabs((double)d.c.beta * y0[i]);
    }
    std::vector<float> y = d.c.beta == 0.0f ? std::vector<float>(count, std::nanf("")) : y0;
    ASSERT_EQ(lk_cpu_conv2d_forward(&s, d.x.data(), d.w.data(), d.bias.data(), d.c.alpha, d.c.beta, y.data()), LK_OK)
        << last_error();
    EXPECT_TRUE(all_near(y.data(), d.HO * d.WO, s.N * s.O, d.HO * d.WO, ref, magnitude, 1e-6,
                         4.0 * (double)(s.C * s.KH * s.KW + 3) * kUnitRoundoff));
}

TEST_P(Conv2d, BackwardDataMatchesTheSevenLoopReference) {
    const ConvData d(GetParam(), 616);
    const lk_conv2d_shape& s = d.c.s;
    const int64_t count = s.N * s.C * s.H * s.W;
    const std::vector<float> dx0 = Rng(617).vector(count);
    std::vector<double> ref(count, 0.0), magnitude(count, 0.0);
    d.for_each_term([&](size_t yi, size_t xi, size_t wi) {
        ref[xi] += (double)d.c.alpha * d.dy[yi] * d.w[wi];
        magnitude[xi] += std::fabs((double)d.c.alpha * d.dy[yi] * d.w[wi]);
    });
    for (int64_t i = 0; i < count; ++i) {
        ref[i] += (double)d.c.beta * dx0[i];
        magnitude[i] += std::fabs((double)d.c.beta * dx0[i]);
    }
    std::vector<float> dx = d.c.beta == 0.0f ? std::vector<float>(count, std::nanf("")) : dx0;
    ASSERT_EQ(lk_cpu_conv2d_backward_data(&s, d.dy.data(), d.w.data(), d.c.alpha, d.c.beta, dx.data()), LK_OK)
        << last_error();
    // A padded corner no window reaches has a zero reference; the rest of the case is non-zero.
    EXPECT_TRUE(all_near(dx.data(), s.H * s.W, s.N * s.C, s.H * s.W, ref, magnitude, 1e-6,
                         4.0 * (double)(s.O * s.KH * s.KW + 3) * kUnitRoundoff));
}

TEST_P(Conv2d, BackwardWeightMatchesTheSevenLoopReference) {
    const ConvData d(GetParam(), 626);
    const lk_conv2d_shape& s = d.c.s;
    const int64_t count = s.O * s.C * s.KH * s.KW;
    const std::vector<float> dw0 = Rng(627).vector(count);
    std::vector<double> ref(count, 0.0), magnitude(count, 0.0);
    d.for_each_term([&](size_t yi, size_t xi, size_t wi) {
        ref[wi] += (double)d.c.alpha * d.dy[yi] * d.x[xi];
        magnitude[wi] += std::fabs((double)d.c.alpha * d.dy[yi] * d.x[xi]);
    });
    for (int64_t i = 0; i < count; ++i) {
        ref[i] += (double)d.c.beta * dw0[i];
        magnitude[i] += std::fabs((double)d.c.beta * dw0[i]);
    }
    std::vector<float> dw = d.c.beta == 0.0f ? std::vector<float>(count, std::nanf("")) : dw0;
    ASSERT_EQ(lk_cpu_conv2d_backward_weight(&s, d.x.data(), d.dy.data(), d.c.alpha, d.c.beta, dw.data()), LK_OK)
        << last_error();
    EXPECT_TRUE(all_near(dw.data(), s.C * s.KH * s.KW, s.O, s.C * s.KH * s.KW, ref, magnitude, 1e-6,
                         4.0 * (double)(s.N * d.HO * d.WO + 4) * kUnitRoundoff));
}

INSTANTIATE_TEST_SUITE_P(Shapes, Conv2d, ::testing::ValuesIn(conv_cases()),
                         [](const auto& info) { return conv_name(info.param); });

TEST(Conv2dArguments, BadShapesAreRefusedByName) {
    float value = 1.0f;
    lk_conv2d_shape s{1, 1, 2, 2, 1, 3, 3, 1, 1, 0, 0, 1, 1};  // a 3x3 window on a 2x2 image, no padding
    EXPECT_EQ(lk_cpu_conv2d_forward(&s, &value, &value, nullptr, 1.0f, 0.0f, &value), LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("HO"), std::string::npos) << last_error();
    s = {1, 1, 4, 4, 1, 3, 3, 0, 1, 0, 0, 1, 1};
    EXPECT_EQ(lk_cpu_conv2d_backward_data(&s, &value, &value, 1.0f, 0.0f, &value), LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("stride_h"), std::string::npos) << last_error();
    s = {1, 1, 4, 4, 1, 3, 3, 1, 1, -1, 0, 1, 1};
    EXPECT_EQ(lk_cpu_conv2d_backward_weight(&s, &value, &value, 1.0f, 0.0f, &value), LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("pad_h"), std::string::npos) << last_error();
    EXPECT_EQ(lk_cpu_conv2d_forward(nullptr, &value, &value, nullptr, 1.0f, 0.0f, &value), LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("shape"), std::string::npos) << last_error();
}

}  // namespace
}  // namespace cpu_test
