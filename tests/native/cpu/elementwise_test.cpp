// ReLU, axpy, MSE and the bf16 conversions against double-precision references.
// Lengths: 0 (nothing is read or written), 1, primes, and 200003 (past the point where the loops go multi-threaded).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "reference.h"

namespace cpu_test {
namespace {

const int64_t kLengths[] = {0, 1, 7, 1031, 200003};
const float kNaN = std::numeric_limits<float>::quiet_NaN();
const float kInf = std::numeric_limits<float>::infinity();

// ---- ReLU (exact: a select, no arithmetic) ------------------------------------------------------

TEST(Relu, ForwardAndBackwardAreExact) {
    for (int64_t n : kLengths) {
        SCOPED_TRACE("n=" + std::to_string(n));
        Rng rng(10 + n);
        const std::vector<float> x = rng.vector(n), dy = rng.vector(n);
        std::vector<float> y((size_t)n, kNaN), dx((size_t)n, kNaN);
        ASSERT_EQ(lk_cpu_relu_forward(n, x.data(), y.data()), LK_OK);
        ASSERT_EQ(lk_cpu_relu_backward(n, x.data(), dy.data(), dx.data()), LK_OK);
        int64_t positive = 0;
        for (int64_t i = 0; i < n; ++i) {
            positive += x[i] > 0.0f;
            ASSERT_EQ(y[i], x[i] > 0.0f ? x[i] : 0.0f) << "i=" << i;
            ASSERT_EQ(dx[i], x[i] > 0.0f ? dy[i] : 0.0f) << "i=" << i;
        }
        if (n > 100) {
            EXPECT_TRUE(positive > 0 && positive < n);
        }
    }
}

TEST(Relu, NaNPropagatesForwardAndBlocksTheGradient) {
    const float x[4] = {kNaN, -kInf, kInf, -0.0f}, dy[4] = {1.0f, 2.0f, 3.0f, 4.0f};
    float y[4], dx[4];
    ASSERT_EQ(lk_cpu_relu_forward(4, x, y), LK_OK);
    ASSERT_EQ(lk_cpu_relu_backward(4, x, dy, dx), LK_OK);
    EXPECT_TRUE(std::isnan(y[0]));
    EXPECT_EQ(y[1], 0.0f);
    EXPECT_EQ(y[2], kInf);
    EXPECT_EQ(y[3], 0.0f);
    EXPECT_EQ(dx[0], 0.0f);
    EXPECT_EQ(dx[1], 0.0f);
    EXPECT_EQ(dx[2], 3.0f);
    EXPECT_EQ(dx[3], 0.0f);
}

// ---- axpy: |got - ref| <= 1e-30 + 2 * 2^-24 * (|y| + |alpha * x|) (a multiply and an add) ----

TEST(Axpy, MatchesReference) {
    for (int64_t n : kLengths) {
        SCOPED_TRACE("n=" + std::to_string(n));
        Rng rng(20 + n);
        const std::vector<float> x = rng.vector(n), y0 = rng.vector(n);
        const float alpha = -0.375f;
        std::vector<double> ref((size_t)n), magnitude((size_t)n);
        for (int64_t i = 0; i < n; ++i) {
            ref[(size_t)i] = (double)y0[i] + (double)alpha * x[i];
            magnitude[(size_t)i] = std::fabs((double)y0[i]) + std::fabs((double)alpha * x[i]);
        }
        std::vector<float> y = y0;
        ASSERT_EQ(lk_cpu_axpy(n, alpha, x.data(), y.data()), LK_OK);
        EXPECT_TRUE(all_near(y.data(), n, 1, n, ref, magnitude, 1e-30, 2.0 * kUnitRoundoff));
    }
}

// ---- MSE: the sum is in double, so the loss is the double result rounded once:
//      |loss - ref| <= 1e-30 + 2 * 2^-24 * ref;  dpred: |got - ref| <= 1e-30 + 2^-24 * |ref| ----

TEST(MseLoss, MatchesReference) {
    for (int64_t n : kLengths) {
        if (n == 0) continue;  // the mean of nothing: EmptyInputGivesNaNAsTorchDoes
        SCOPED_TRACE("n=" + std::to_string(n));
        Rng rng(30 + n);
        const std::vector<float> pred = rng.vector(n), target = rng.vector(n);
        double sum = 0.0;
        std::vector<double> grad_ref((size_t)n), grad_mag((size_t)n);
        for (int64_t i = 0; i < n; ++i) {
            const double d = (double)pred[i] - target[i];
            sum += d * d;
            grad_ref[(size_t)i] = 2.0 * d / (double)n;
            grad_mag[(size_t)i] = std::fabs(grad_ref[(size_t)i]);
        }
        const std::vector<double> loss_ref = {sum / (double)n};
        float loss = kNaN;
        std::vector<float> dpred((size_t)n, kNaN);
        ASSERT_EQ(lk_cpu_mse_loss(n, pred.data(), target.data(), &loss, dpred.data()), LK_OK);
        EXPECT_TRUE(all_near(&loss, 1, 1, 1, loss_ref, loss_ref, 1e-30, 2.0 * kUnitRoundoff));
        EXPECT_TRUE(all_near(dpred.data(), n, 1, n, grad_ref, grad_mag, 1e-30, kUnitRoundoff));

        float loss_only = kNaN;  // dpred is optional
        ASSERT_EQ(lk_cpu_mse_loss(n, pred.data(), target.data(), &loss_only, nullptr), LK_OK);
        EXPECT_EQ(loss_only, loss);
    }
}

TEST(MseLoss, IsBitIdenticalForEveryThreadCount) {
    const int64_t n = 200003;
    Rng rng(31);
    const std::vector<float> pred = rng.vector(n), target = rng.vector(n);
    const int threads = lk_cpu_get_num_threads();
    float one = kNaN, two = kNaN;
    ASSERT_EQ(lk_cpu_set_num_threads(1), LK_OK);
    ASSERT_EQ(lk_cpu_mse_loss(n, pred.data(), target.data(), &one, nullptr), LK_OK);
    ASSERT_EQ(lk_cpu_set_num_threads(2), LK_OK);
    ASSERT_EQ(lk_cpu_mse_loss(n, pred.data(), target.data(), &two, nullptr), LK_OK);
    ASSERT_EQ(lk_cpu_set_num_threads(threads), LK_OK);
    EXPECT_FALSE(std::isnan(one));
    EXPECT_EQ(std::memcmp(&one, &two, sizeof one), 0) << one << " vs " << two;
}

TEST(MseLoss, EmptyInputGivesNaNAsTorchDoes) {
    float loss = 0.0f;
    ASSERT_EQ(lk_cpu_mse_loss(0, nullptr, nullptr, &loss, nullptr), LK_OK);
    EXPECT_TRUE(std::isnan(loss));
}

// ---- The first non-finite element (exact: an index) ---------------------------------------------

TEST(FirstNonFinite, FindsTheSmallestIndexOfNaNOrInfAnywhere) {
    for (int64_t n : {int64_t{0}, int64_t{1}, int64_t{7}, int64_t{1031}, int64_t{200003}}) {
        SCOPED_TRACE("n=" + std::to_string(n));
        Rng rng(40 + n);
        std::vector<float> x = rng.vector(n);
        int64_t index = 123;
        ASSERT_EQ(lk_cpu_first_nonfinite(n, x.data(), &index), LK_OK);
        EXPECT_EQ(index, -1);
        // Positions at chunk edges, the last element, and (for the largest n) the second thread's share.
        for (int64_t at : {int64_t{0}, n / 2, n - 1, int64_t{1023}, int64_t{1024}, int64_t{150001}}) {
            if (at < 0 || at >= n) continue;
            for (float bad : {kNaN, kInf, -kInf}) {
                std::vector<float> y = x;
                y[(size_t)at] = bad;
                if (at + 5 < n) y[(size_t)(at + 5)] = kNaN;  // a later one must not win
                ASSERT_EQ(lk_cpu_first_nonfinite(n, y.data(), &index), LK_OK);
                EXPECT_EQ(index, at) << "bad value " << bad;
            }
        }
    }
}

TEST(FirstNonFinite, LargestFiniteValuesAndSubnormalsAreFinite) {
    const std::vector<float> x = {std::numeric_limits<float>::max(), -std::numeric_limits<float>::max(),
                                  std::numeric_limits<float>::denorm_min(), -0.0f};
    int64_t index = 0;
    ASSERT_EQ(lk_cpu_first_nonfinite((int64_t)x.size(), x.data(), &index), LK_OK);
    EXPECT_EQ(index, -1);
    EXPECT_EQ(lk_cpu_first_nonfinite(4, nullptr, &index), LK_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(lk_cpu_first_nonfinite(4, x.data(), nullptr), LK_ERR_INVALID_ARGUMENT);
}

// ---- bf16 <-> fp32 ---------------------------------------------------------------------------
// The reference rounds by comparing distances in double: of the two bf16 values around f, the
// nearer one, and on a tie the one with an even last bit. Overflow past the largest bf16 goes to
// infinity (as the IEEE rounding of fp32 to bf16 does).

uint32_t bits_of(float f) {
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}

float float_of(uint32_t u) {
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

uint16_t reference_bf16(float f) {
    const uint32_t u = bits_of(f);
    if (std::isnan(f)) return (uint16_t)((u >> 16) | 0x0040u);  // quiet NaN, sign kept
    const uint16_t below = (uint16_t)(u >> 16);                 // truncation: towards zero
    if ((u & 0xFFFFu) == 0) return below;
    const uint16_t above = (uint16_t)(below + 1);  // next bf16 away from zero
    const double lo = std::fabs((double)float_of((uint32_t)below << 16));
    const double hi = (above & 0x7F80u) == 0x7F80u
                          ? std::ldexp(1.0, 128)  // past the largest: inf
                          : std::fabs((double)float_of((uint32_t)above << 16));
    const double a = std::fabs((double)f);
    if (a - lo < hi - a) return below;
    if (a - lo > hi - a) return above;
    return (below & 1u) ? above : below;
}

TEST(Bf16, RoundsToNearestEvenWithTiesNaNInfAndSignedZero) {
    struct Case {
        uint32_t f32;
        uint16_t bf16;
        const char* what;
    };
    const Case cases[] = {
        {0x3F800000u, 0x3F80u, "1.0 exact"},
        {0x3F808000u, 0x3F80u, "tie, even below: down"},
        {0x3F818000u, 0x3F82u, "tie, odd below: up"},
        {0x3F808001u, 0x3F81u, "just above the tie: up"},
        {0x3F807FFFu, 0x3F80u, "just below the tie: down"},
        {0xBF818000u, 0xBF82u, "negative tie, odd: away from zero"},
        {0x7F7FFFFFu, 0x7F80u, "largest float: overflows to +inf"},
        {0x7F800000u, 0x7F80u, "+inf"},
        {0xFF800000u, 0xFF80u, "-inf"},
        {0x80000000u, 0x8000u, "-0"},
        {0x00000000u, 0x0000u, "+0"},
        {0x00008000u, 0x0000u, "subnormal tie: even (zero)"},
        {0x00018000u, 0x0002u, "subnormal tie: odd rounds up"},
        {0x7F800001u, 0x7FC0u, "signalling NaN: quieted"},
        {0xFFC00001u, 0xFFC0u, "negative quiet NaN: sign kept"},
    };
    for (const Case& c : cases) {
        const float f = float_of(c.f32);
        uint16_t got = 0;
        ASSERT_EQ(lk_cpu_f32_to_bf16(1, &f, &got), LK_OK);
        EXPECT_EQ(got, c.bf16) << c.what;
        EXPECT_EQ(reference_bf16(f), c.bf16) << "reference disagrees: " << c.what;
    }
}

TEST(Bf16, RandomBitPatternsMatchReferenceAndWidenExactly) {
    for (int64_t n : kLengths) {
        SCOPED_TRACE("n=" + std::to_string(n));
        Rng rng(50 + n);
        std::vector<float> src((size_t)n);
        for (float& f : src) f = float_of(rng.next_u32() ^ (rng.next_u32() << 16));
        std::vector<uint16_t> narrow((size_t)n, 0xFFFFu);
        ASSERT_EQ(lk_cpu_f32_to_bf16(n, src.data(), narrow.data()), LK_OK);
        for (int64_t i = 0; i < n; ++i)
            ASSERT_EQ(narrow[i], reference_bf16(src[i]))
                << "i=" << i << " bits=" << std::hex << bits_of(src[i]);
        std::vector<float> wide((size_t)n, kNaN);
        ASSERT_EQ(lk_cpu_bf16_to_f32(n, narrow.data(), wide.data()), LK_OK);
        for (int64_t i = 0; i < n; ++i)
            ASSERT_EQ(bits_of(wide[i]), (uint32_t)narrow[i] << 16) << "i=" << i;
    }
}

}  // namespace
}  // namespace cpu_test
