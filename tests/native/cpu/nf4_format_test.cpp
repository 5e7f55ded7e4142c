// The 4-bit formats: tables, quantize, dequantize, double quantization, argument errors.
//
// References are in nf4_reference.h (tables copied again from REFERENCE.md, a naive code
// search); the statistical bands are derived next to the tests that use them.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "nf4_reference.h"

namespace cpu_test {
namespace {

const char* type_name(int32_t quant_type) { return quant_type == LK_QUANT_NF4 ? "nf4" : "fp4"; }

// ---- tables -----------------------------------------------------------------------------------

TEST(QuantTables, Nf4MatchesReferenceBits) {
    float table[16];
    ASSERT_EQ(lk_cpu_quant_table(LK_QUANT_NF4, table), LK_OK) << last_error();
    for (int i = 0; i < 16; ++i) EXPECT_EQ(to_bits(table[i]), kRefNf4[i]) << "code " << i;
}

TEST(QuantTables, Nf4MidpointsAreTheFloatMidpointsOfTheTable) {
    // The naive search below derives its midpoints from the code values; REFERENCE.md lists
    // bnb's threshold literals: they must be the same floats, or the tie tests check nothing.
    for (int i = 0; i < 15; ++i) {
        const float mid = (float)(((double)nf4_value(i) + (double)nf4_value(i + 1)) / 2.0);
        EXPECT_EQ(to_bits(mid), kRefNf4Midpoints[i]) << "midpoint " << i;
    }
}

TEST(QuantTables, Fp4MatchesReference) {
    float table[16];
    ASSERT_EQ(lk_cpu_quant_table(LK_QUANT_FP4, table), LK_OK) << last_error();
    // bnb's kernel literals (REFERENCE.md §8.2) as float32: 0.005208333333 -> 0x3baaaaab, ...
    const uint32_t literal_bits[8] = {0x00000000u, 0x3baaaaabu, 0x3f2aaaabu, 0x3f800000u,
                                      0x3eaaaaabu, 0x3f000000u, 0x3e2aaaabu, 0x3e800000u};
    for (int i = 0; i < 16; ++i) {
        EXPECT_EQ(to_bits(table[i]), to_bits(fp4_value(i))) << "code " << i;
        EXPECT_EQ(to_bits(table[i]) & 0x7fffffffu, literal_bits[i & 7]) << "code " << i;
        EXPECT_EQ(std::signbit(table[i]), i >= 8) << "code " << i;
    }
}

TEST(QuantTables, DynamicSignedMatchesAppendixB) {
    float table[256];
    ASSERT_EQ(lk_cpu_dynamic_map_signed(table), LK_OK) << last_error();
    for (int i = 0; i < 256; ++i)
        EXPECT_EQ(to_bits(table[i]), kRefDynamicSigned[i]) << "index " << i;
    for (int i = 1; i < 256; ++i) EXPECT_LT(table[i - 1], table[i]) << "sorted at " << i;
    EXPECT_EQ(table[127], 0.0f);
    EXPECT_EQ(table[255], 1.0f);
}

// ---- quantize ---------------------------------------------------------------------------------

struct QuantCase {
    int32_t quant_type;
    int64_t n, blocksize;
};

std::string case_name(const QuantCase& c) {
    return std::string(type_name(c.quant_type)) + "_n" + std::to_string(c.n) + "_bs" +
           std::to_string(c.blocksize);
}

struct Quantized {
    std::vector<uint8_t> codes;
    std::vector<float> absmax;
};

Quantized quantize(int32_t quant_type, int64_t n, int64_t blocksize, const std::vector<float>& w) {
    Quantized q{std::vector<uint8_t>((size_t)((n + 1) / 2), 0xAB),
                std::vector<float>((size_t)((n + blocksize - 1) / blocksize), -1.0f)};
    EXPECT_EQ(
        lk_cpu_quantize_4bit(quant_type, n, blocksize, w.data(), q.codes.data(), q.absmax.data()),
        LK_OK)
        << last_error();
    return q;
}

void PrintTo(const QuantCase& c, std::ostream* os) { *os << case_name(c); }

class Quantize : public ::testing::TestWithParam<QuantCase> {};

TEST_P(Quantize, MatchesNaiveReference) {
    const QuantCase c = GetParam();
    Rng rng(77 + (uint64_t)c.n);
    // Values of several magnitudes per block so the normalised x spans [-1, 1] unevenly.
    std::vector<float> w = gaussian(rng, c.n, 0.05f);
    const Quantized q = quantize(c.quant_type, c.n, c.blocksize, w);
    const int64_t nblocks = (c.n + c.blocksize - 1) / c.blocksize;
    for (int64_t b = 0; b < nblocks; ++b) {
        const int64_t lo = b * c.blocksize, hi = std::min(c.n, lo + c.blocksize);
        float amax = 0.0f;
        for (int64_t e = lo; e < hi; ++e) amax = std::max(amax, std::fabs(w[(size_t)e]));
        ASSERT_EQ(q.absmax[(size_t)b], amax) << "block " << b;
        const float recip = 1.0f / amax;
        for (int64_t e = lo; e < hi; ++e) {
            const float x = w[(size_t)e] * recip;
            ASSERT_EQ(code_at(q.codes, e), naive_code(c.quant_type, x))
                << "element " << e << " x = " << x;
            // The code is also the nearest table value (argmin in double) unless x is within
            // rounding of a midpoint (or, for FP4, of bnb's 0.583333 literal, not quite 7/12).
            if (c.quant_type == LK_QUANT_NF4) {
                int best = 0;
                for (int i = 1; i < 16; ++i)
                    if (std::fabs(x - (double)nf4_value(i)) <
                        std::fabs(x - (double)nf4_value(best)))
                        best = i;
                const int got = code_at(q.codes, e);
                if (got != best) {
                    const double mid = ((double)nf4_value(got) + nf4_value(best)) / 2.0;
                    EXPECT_LT(std::fabs(x - mid), 1e-7) << "element " << e;
                }
            }
        }
    }
    if (c.n % 2 == 1) {  // the padding nibble holds the code of 0.0
        EXPECT_EQ(q.codes.back() & 15, c.quant_type == LK_QUANT_NF4 ? 7 : 0);
    }
}

std::vector<QuantCase> quant_cases() {
    std::vector<QuantCase> cases;
    for (int32_t t : {LK_QUANT_NF4, LK_QUANT_FP4})
        for (int64_t bs : {32, 64, 128, 4096})
            for (int64_t n : {1, 7, 64, 65, 1000, 4097, 8192 + 33}) cases.push_back({t, n, bs});
    return cases;
}

INSTANTIATE_TEST_SUITE_P(Sizes, Quantize, ::testing::ValuesIn(quant_cases()),
                         [](const ::testing::TestParamInfo<QuantCase>& info) {
                             return case_name(info.param);
                         });

TEST(QuantizeNf4, ValuesExactlyOnMidpointsTakeTheLowerCode) {
    // Block of 32: element 0 = 1.0 fixes absmax = 1 (reciprocal exactly 1), then each midpoint
    // and the next float above it.
    std::vector<float> w(32, 0.0f);
    w[0] = 1.0f;
    for (int i = 0; i < 15; ++i) {
        w[(size_t)(1 + 2 * i)] = from_bits(kRefNf4Midpoints[i]);
        w[(size_t)(2 + 2 * i)] = std::nextafter(from_bits(kRefNf4Midpoints[i]), 2.0f);
    }
    const Quantized q = quantize(LK_QUANT_NF4, 32, 32, w);
    ASSERT_EQ(q.absmax[0], 1.0f);
    EXPECT_EQ(code_at(q.codes, 0), 15);
    for (int i = 0; i < 15; ++i) {
        EXPECT_EQ(code_at(q.codes, 1 + 2 * i), i) << "on midpoint " << i;
        EXPECT_EQ(code_at(q.codes, 2 + 2 * i), i + 1) << "just above midpoint " << i;
    }
    EXPECT_EQ(code_at(q.codes, 31), 7);  // the one 0.0
}

TEST(QuantizeFp4, ValuesOnTheTreeLiteralsTakeTheLowerMagnitude) {
    std::vector<float> w(32, 0.0f);
    w[0] = -1.0f;  // absmax 1, code 0b1011
    for (int i = 0; i < 7; ++i) {
        w[(size_t)(1 + 2 * i)] = from_bits(kRefFp4Splits[i]);
        w[(size_t)(2 + 2 * i)] = -std::nextafter(from_bits(kRefFp4Splits[i]), 2.0f);
    }
    const Quantized q = quantize(LK_QUANT_FP4, 32, 32, w);
    EXPECT_EQ(code_at(q.codes, 0), 0b1011);
    for (int i = 0; i < 7; ++i) {
        EXPECT_EQ(code_at(q.codes, 1 + 2 * i), kRefFp4Ascending[i]) << "on literal " << i;
        EXPECT_EQ(code_at(q.codes, 2 + 2 * i), kRefFp4Ascending[i + 1] | 8)
            << "above literal " << i;
    }
}

TEST(Quantize, AllZeroBlockEncodesZero) {
    // n = 96, blocksize 32: block 1 is all zero, blocks 0 and 2 are not.
    std::vector<float> w(96, 0.5f);
    std::fill(w.begin() + 32, w.begin() + 64, 0.0f);
    for (int32_t t : {LK_QUANT_NF4, LK_QUANT_FP4}) {
        SCOPED_TRACE(type_name(t));
        const Quantized q = quantize(t, 96, 32, w);
        EXPECT_EQ(q.absmax[1], 0.0f);
        for (int64_t e = 32; e < 64; ++e) EXPECT_EQ(code_at(q.codes, e), t == LK_QUANT_NF4 ? 7 : 0);
        std::vector<float> back(96, -7.0f);
        lk_quant_stats stats{t, 0, 32, q.absmax.data(), nullptr, nullptr, 0.0f, 0};
        ASSERT_EQ(lk_cpu_dequantize_4bit(96, q.codes.data(), &stats, back.data()), LK_OK)
            << last_error();
        for (int64_t e = 32; e < 64; ++e) EXPECT_EQ(back[(size_t)e], 0.0f);
        EXPECT_EQ(back[0], 0.5f);
    }
}

TEST(Quantize, PacksEvenElementIntoTheHighNibble) {
    // NF4, absmax 1: 1.0 -> 15, -1.0 -> 0, 0.0 -> 7, 0.0798 -> 8; n = 5 pads with 7.
    const std::vector<float> w = {1.0f, -1.0f, 0.0f, nf4_value(8), nf4_value(3)};
    const Quantized q = quantize(LK_QUANT_NF4, 5, 32, w);
    ASSERT_EQ(q.codes.size(), 3u);
    EXPECT_EQ(q.codes[0], 0xF0);
    EXPECT_EQ(q.codes[1], 0x78);
    EXPECT_EQ(q.codes[2], 0x37);
}

// ---- dequantize -------------------------------------------------------------------------------

TEST(Dequantize, IsTableTimesAbsmaxAndRequantizesToTheSameCodes) {
    for (int32_t t : {LK_QUANT_NF4, LK_QUANT_FP4})
        for (int64_t bs : {32, 64, 4096}) {
            const int64_t n = 5001;
            SCOPED_TRACE(std::string(type_name(t)) + "_n5001_bs" + std::to_string(bs));
            Rng rng(5 + (uint64_t)bs);
            const std::vector<float> w = gaussian(rng, n, 1.0f);
            const Quantized q = quantize(t, n, bs, w);
            lk_quant_stats stats{t, 0, bs, q.absmax.data(), nullptr, nullptr, 0.0f, 0};
            std::vector<float> back((size_t)n, std::numeric_limits<float>::quiet_NaN());
            ASSERT_EQ(lk_cpu_dequantize_4bit(n, q.codes.data(), &stats, back.data()), LK_OK)
                << last_error();
            for (int64_t e = 0; e < n; ++e)
                ASSERT_EQ(back[(size_t)e],
                          code_value(t, code_at(q.codes, e)) * q.absmax[(size_t)(e / bs)])
                    << "element " << e;
            // Requantizing gives the same codes, except that FP4's -0.0 (code 8, a tiny negative
            // weight) comes back as +0.0's code 0: x < 0 is false for -0.0.
            const Quantized again = quantize(t, n, bs, back);
            EXPECT_EQ(again.absmax, q.absmax);
            for (int64_t e = 0; e < n; ++e) {
                const int before = code_at(q.codes, e);
                ASSERT_EQ(code_at(again.codes, e), t == LK_QUANT_FP4 && before == 8 ? 0 : before)
                    << "element " << e;
            }
        }
}

// RMS quantization error of N(0, 1) weights relative to their RMS. Where the value comes from:
// a block's absmax is the largest of `blocksize` |N(0,1)| draws (~2.4 sigma for 64), so the
// normalised x = w / absmax has std ~0.42; NF4's levels are N(0,1) quantiles rescaled to
// [-1, 1], spaced ~0.08 near 0 to ~0.28 near +-1, and a level spacing d leaves an error of
// d / sqrt(12), which averaged over x's density gives ~0.04 in x, i.e. ~0.1 of the RMS (the QLoRA
// paper's premise). Measured with this generator over 2^18 weights: NF4 bs 64 0.0921, NF4 bs 32
// 0.0873 (smaller blocks, smaller absmax), FP4 bs 64 0.1222 (levels not fitted to a normal).
// The sampling error of such an RMS ratio over 2^18 draws is ~0.2%, so a +-5% band tests the
// quantizer (one code off on a fraction of the weights moves it by more), not the draw.
TEST(Dequantize, GaussianErrorWithinBand) {
    struct Band {
        int32_t quant_type;
        int64_t blocksize;
        double expected;
    };
    const int64_t n = int64_t{1} << 18;
    Rng rng(2024);
    const std::vector<float> w = gaussian(rng, n, 1.0f);
    for (const Band& band : {Band{LK_QUANT_NF4, 64, 0.0921}, Band{LK_QUANT_NF4, 32, 0.0873},
                             Band{LK_QUANT_FP4, 64, 0.1222}}) {
        SCOPED_TRACE(std::string(type_name(band.quant_type)) + "_bs" +
                     std::to_string(band.blocksize));
        const Quantized q = quantize(band.quant_type, n, band.blocksize, w);
        lk_quant_stats stats{band.quant_type, 0,       band.blocksize, q.absmax.data(),
                             nullptr,         nullptr, 0.0f,           0};
        std::vector<float> back((size_t)n);
        ASSERT_EQ(lk_cpu_dequantize_4bit(n, q.codes.data(), &stats, back.data()), LK_OK)
            << last_error();
        double err2 = 0.0, w2 = 0.0;
        for (int64_t e = 0; e < n; ++e) {
            const double d = (double)back[(size_t)e] - w[(size_t)e];
            err2 += d * d;
            w2 += (double)w[(size_t)e] * w[(size_t)e];
        }
        const double ratio = std::sqrt(err2 / w2);
        EXPECT_NEAR(ratio, band.expected, 0.05 * band.expected);
    }
}

// ---- double quantization ----------------------------------------------------------------------

struct Nested {
    std::vector<uint8_t> qabsmax;
    std::vector<float> absmax2;
    float offset = 0.0f;
};

Nested double_quantize(const std::vector<float>& absmax) {
    const int64_t nb = (int64_t)absmax.size();
    Nested d{std::vector<uint8_t>((size_t)nb),
             std::vector<float>((size_t)((nb + 255) / 256), -1.0f), 0.0f};
    EXPECT_EQ(
        lk_cpu_double_quantize(nb, absmax.data(), d.qabsmax.data(), d.absmax2.data(), &d.offset),
        LK_OK)
        << last_error();
    return d;
}

TEST(DoubleQuantize, MatchesFormulaAndBound) {
    for (int64_t nb : {1, 255, 256, 1000}) {
        SCOPED_TRACE("nblocks" + std::to_string(nb));
        Rng rng(31 + (uint64_t)nb);
        std::vector<float> absmax((size_t)nb);
        for (float& a : absmax) a = 0.02f + 0.03f * std::fabs(rng.nonzero());
        const Nested d = double_quantize(absmax);

        // offset = mean: an fp32 pairwise sum has error <= ceil(log2 n) * u * sum|a| (plus the
        // division's u * mean); the bound below doubles that.
        double sum = 0.0;
        for (float a : absmax) sum += a;
        const double mean = sum / (double)nb;
        const double log2n = std::ceil(std::log2((double)nb + 1.0));
        EXPECT_NEAR(d.offset, mean, 2.0 * (log2n + 1.0) * kUnitRoundoff * mean);

        // The largest half-gap of the dynamic map: its worst rounding of a value in [-1, 1].
        double half_gap = 0.0;
        for (int i = 1; i < 256; ++i)
            half_gap = std::max(half_gap, ((double)from_bits(kRefDynamicSigned[i]) -
                                           from_bits(kRefDynamicSigned[i - 1])) /
                                              2.0);
        for (int64_t c = 0; c < (nb + 255) / 256; ++c) {
            float amax2 = 0.0f;
            for (int64_t b = c * 256; b < std::min(nb, (c + 1) * 256); ++b)
                amax2 = std::max(amax2, std::fabs(absmax[(size_t)b] - d.offset));
            EXPECT_EQ(d.absmax2[(size_t)c], amax2) << "nested block " << c;
        }
        std::vector<float> decoded((size_t)nb, -1.0f);
        ASSERT_EQ(lk_cpu_double_dequantize(nb, d.qabsmax.data(), d.absmax2.data(), d.offset,
                                           decoded.data()),
                  LK_OK)
            << last_error();
        for (int64_t b = 0; b < nb; ++b) {
            const float amax2 = d.absmax2[(size_t)(b / 256)];
            if (amax2 > 0.0f) {
                // Nearest code (argmin in double) unless x is within rounding of a midpoint.
                const float x = (absmax[(size_t)b] - d.offset) * (1.0f / amax2);
                int best = 0;
                for (int i = 1; i < 256; ++i)
                    if (std::fabs(x - (double)from_bits(kRefDynamicSigned[i])) <
                        std::fabs(x - (double)from_bits(kRefDynamicSigned[best])))
                        best = i;
                const int got = d.qabsmax[(size_t)b];
                if (got != best) {
                    const double mid = ((double)from_bits(kRefDynamicSigned[got]) +
                                        from_bits(kRefDynamicSigned[best])) /
                                       2.0;
                    EXPECT_LT(std::fabs(x - mid), 1e-7) << "block " << b;
                }
            }
            // decode formula, product then sum in fp32 (this file is built without FMA).
            const float product = from_bits(kRefDynamicSigned[d.qabsmax[(size_t)b]]) * amax2;
            EXPECT_EQ(decoded[(size_t)b], product + d.offset) << "block " << b;
            // The nested code's rounding: half a gap of the map times absmax2, plus fp32 rounding.
            EXPECT_NEAR(decoded[(size_t)b], absmax[(size_t)b],
                        half_gap * amax2 + 4.0 * kUnitRoundoff * absmax[(size_t)b])
                << "block " << b;
        }
    }
}

TEST(DoubleQuantize, EqualAbsmaxEncodesTheOffsetExactly) {
    const std::vector<float> absmax(300, 0.125f);
    const Nested d = double_quantize(absmax);
    EXPECT_EQ(d.offset, 0.125f);
    for (uint8_t q : d.qabsmax) EXPECT_EQ(q, 127);
    std::vector<float> decoded(300);
    ASSERT_EQ(
        lk_cpu_double_dequantize(300, d.qabsmax.data(), d.absmax2.data(), d.offset, decoded.data()),
        LK_OK);
    for (float a : decoded) EXPECT_EQ(a, 0.125f);
}

TEST(DoubleQuantize, NestedStatsDequantizeAsTheDecodedAbsmax) {
    const int64_t n = 64 * 700 + 10, bs = 64;
    Rng rng(9);
    const std::vector<float> w = gaussian(rng, n, 0.1f);
    const Quantized q = quantize(LK_QUANT_NF4, n, bs, w);
    const Nested d = double_quantize(q.absmax);
    lk_quant_stats nested{LK_QUANT_NF4,     0,        bs, nullptr, d.qabsmax.data(),
                          d.absmax2.data(), d.offset, 0};
    std::vector<float> back((size_t)n);
    ASSERT_EQ(lk_cpu_dequantize_4bit(n, q.codes.data(), &nested, back.data()), LK_OK)
        << last_error();
    for (int64_t e = 0; e < n; ++e) {
        const int64_t b = e / bs;
        const float amax =
            from_bits(kRefDynamicSigned[d.qabsmax[(size_t)b]]) * d.absmax2[(size_t)(b / 256)] +
            d.offset;
        ASSERT_EQ(back[(size_t)e], nf4_value(code_at(q.codes, e)) * amax) << "element " << e;
    }
}

// ---- argument errors --------------------------------------------------------------------------

TEST(QuantizeErrors, BadBlocksizesAreNamed) {
    std::vector<float> w(64, 1.0f);
    std::vector<uint8_t> codes(32, 0xAB);
    std::vector<float> absmax(2, -1.0f);
    for (int64_t bs : {48, 0, 8192, 16, -64}) {
        EXPECT_EQ(lk_cpu_quantize_4bit(LK_QUANT_NF4, 64, bs, w.data(), codes.data(), absmax.data()),
                  LK_ERR_INVALID_ARGUMENT);
        EXPECT_NE(last_error().find("blocksize = " + std::to_string(bs)), std::string::npos)
            << last_error();
    }
    EXPECT_EQ(lk_cpu_quantize_4bit(2, 64, 64, w.data(), codes.data(), absmax.data()),
              LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("quant_type = 2"), std::string::npos) << last_error();
    for (uint8_t c : codes) EXPECT_EQ(c, 0xAB);
}

TEST(QuantizeErrors, NonFiniteInputIsNamedAndNothingIsWritten) {
    for (float bad :
         {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
        std::vector<float> w(100, 0.5f);
        w[77] = bad;
        w[90] = bad;
        std::vector<uint8_t> codes(50, 0xAB);
        std::vector<float> absmax(4, -1.0f);
        EXPECT_EQ(
            lk_cpu_quantize_4bit(LK_QUANT_NF4, 100, 32, w.data(), codes.data(), absmax.data()),
            LK_ERR_INVALID_ARGUMENT);
        EXPECT_NE(last_error().find("w[77]"), std::string::npos) << last_error();
        for (uint8_t c : codes) EXPECT_EQ(c, 0xAB);
        for (float a : absmax) EXPECT_EQ(a, -1.0f);
    }
}

TEST(QuantizeErrors, NullPointersAreNamed) {
    std::vector<float> w(64, 1.0f), absmax(1);
    std::vector<uint8_t> codes(32);
    EXPECT_EQ(lk_cpu_quantize_4bit(LK_QUANT_NF4, 64, 64, nullptr, codes.data(), absmax.data()),
              LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("w is NULL"), std::string::npos) << last_error();
    EXPECT_EQ(lk_cpu_quantize_4bit(LK_QUANT_NF4, 64, 64, w.data(), nullptr, absmax.data()),
              LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("codes is NULL"), std::string::npos) << last_error();
    EXPECT_EQ(lk_cpu_quantize_4bit(LK_QUANT_NF4, 64, 64, w.data(), codes.data(), nullptr),
              LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("absmax is NULL"), std::string::npos) << last_error();
    EXPECT_EQ(lk_cpu_quant_table(LK_QUANT_NF4, nullptr), LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("table16 is NULL"), std::string::npos) << last_error();
    EXPECT_EQ(lk_cpu_dequantize_4bit(64, codes.data(), nullptr, w.data()), LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("stats is NULL"), std::string::npos) << last_error();
    lk_quant_stats partial{LK_QUANT_NF4, 0, 64, nullptr, codes.data(), nullptr, 0.0f, 0};
    EXPECT_EQ(lk_cpu_dequantize_4bit(64, codes.data(), &partial, w.data()),
              LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("absmax2 is NULL"), std::string::npos) << last_error();
    lk_quant_stats odd_block{LK_QUANT_NF4, 0, 48, absmax.data(), nullptr, nullptr, 0.0f, 0};
    EXPECT_EQ(lk_cpu_dequantize_4bit(64, codes.data(), &odd_block, w.data()),
              LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("blocksize = 48"), std::string::npos) << last_error();
    std::vector<float> nan_absmax = {0.5f, std::numeric_limits<float>::quiet_NaN()};
    std::vector<uint8_t> q(2);
    std::vector<float> a2(1);
    float offset = 0.0f;
    EXPECT_EQ(lk_cpu_double_quantize(2, nan_absmax.data(), q.data(), a2.data(), &offset),
              LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("absmax[1]"), std::string::npos) << last_error();
    EXPECT_EQ(lk_cpu_double_quantize(2, nan_absmax.data(), q.data(), a2.data(), nullptr),
              LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("offset is NULL"), std::string::npos) << last_error();
}

}  // namespace
}  // namespace cpu_test
