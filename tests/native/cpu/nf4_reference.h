// nf4_reference.h: what the 4-bit tests compare against, written independently of the
// library: the tables copied again from REFERENCE.md (§8.1, §8.2, Appendix B) as float32 bit
// patterns, a naive code search, a naive decoder and Gaussian test weights.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "reference.h"

namespace cpu_test {

inline float from_bits(uint32_t bits) {
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}
inline uint32_t to_bits(float f) {
    uint32_t bits;
    std::memcpy(&bits, &f, sizeof bits);
    return bits;
}

// REFERENCE.md §8.1, index = code.
constexpr uint32_t kRefNf4[16] = {
    0xbf800000u, 0xbf3239b1u, 0xbf066b30u, 0xbeca32a0u, 0xbe91a24du, 0xbe3d353fu, 0xbdba7871u, 0x00000000u,
    0x3da2faffu, 0x3e24cae3u, 0x3e7c04ddu, 0x3ead033au, 0x3ee1a4b8u, 0x3f1007abu, 0x3f3913b3u, 0x3f800000u,
};
// REFERENCE.md §8.1: bnb's thresholds as float32.
constexpr uint32_t kRefNf4Midpoints[15] = {
    0xbf591cd8u, 0xbf1c5270u, 0xbeeb8480u, 0xbeadea76u, 0xbe703cecu, 0xbe0d38bcu, 0xbd3a7871u, 0x3d22faffu,
    0x3df64862u, 0x3e5067e0u, 0x3e9582d4u, 0x3ec753f9u, 0x3f006d04u, 0x3f248dafu, 0x3f5c89dau,
};
// REFERENCE.md §8.2: magnitudes {0, 0.0625, 8, 12, 4, 6, 2, 3} / 12 by 3-bit code, bit 3 the sign.
constexpr double kRefFp4Magnitude[8] = {0.0, 0.0625 / 12, 8.0 / 12, 1.0, 4.0 / 12, 6.0 / 12, 2.0 / 12, 3.0 / 12};
// The FP4 tree's literals, sorted, with the 3-bit codes of the magnitudes between them (ascending).
constexpr uint32_t kRefFp4Splits[7] = {0x3b2aaab9u, 0x3db00000u, 0x3e555555u, 0x3e955555u,
                                       0x3ed55556u, 0x3f155550u, 0x3f555555u};
constexpr int kRefFp4Ascending[8] = {0b000, 0b001, 0b110, 0b111, 0b100, 0b101, 0b010, 0b011};

// REFERENCE.md Appendix B, dynamic_signed.
constexpr uint32_t kRefDynamicSigned[256] = {
    0xbf7e3333u, 0xbf7a9999u, 0xbf770000u, 0xbf736666u, 0xbf6fccccu, 0xbf6c3333u, 0xbf68999au, 0xbf650000u,
    0xbf616666u, 0xbf5dccccu, 0xbf5a3333u, 0xbf569999u, 0xbf530000u, 0xbf4f6666u, 0xbf4bccccu, 0xbf483333u,
    0xbf44999au, 0xbf410000u, 0xbf3d6667u, 0xbf39cccdu, 0xbf363334u, 0xbf32999au, 0xbf2f0000u, 0xbf2b6667u,
    0xbf27cccdu, 0xbf243333u, 0xbf20999au, 0xbf1d0000u, 0xbf196666u, 0xbf15cccdu, 0xbf123334u, 0xbf0e999au,
    0xbf0b0000u, 0xbf076666u, 0xbf03cccdu, 0xbf003333u, 0xbef93334u, 0xbef20000u, 0xbeeaccccu, 0xbee3999au,
    0xbedc6666u, 0xbed53332u, 0xbece0000u, 0xbec6ccccu, 0xbebf999au, 0xbeb86666u, 0xbeb13332u, 0xbeaa0000u,
    0xbea2ccccu, 0xbe9b999au, 0xbe946666u, 0xbe8d3334u, 0xbe860000u, 0xbe7d999au, 0xbe6f3334u, 0xbe60cccdu,
    0xbe526666u, 0xbe440000u, 0xbe359999u, 0xbe273333u, 0xbe18cccdu, 0xbe0a6666u, 0xbdf80000u, 0xbddb3334u,
    0xbdc9eb85u, 0xbdc428f5u, 0xbdbe6667u, 0xbdb8a3d7u, 0xbdb2e148u, 0xbdad1eb8u, 0xbda75c28u, 0xbda1999au,
    0xbd9bd70au, 0xbd96147bu, 0xbd9051ebu, 0xbd8a8f5du, 0xbd84cccdu, 0xbd7e147au, 0xbd728f5du, 0xbd670a3du,
    0xbd5b851fu, 0xbd500000u, 0xbd447ae1u, 0xbd38f5c3u, 0xbd2d70a3u, 0xbd21eb85u, 0xbd166667u, 0xbd0ae147u,
    0xbcfeb852u, 0xbce7ae13u, 0xbcd0a3d7u, 0xbcb9999au, 0xbca28f5cu, 0xbc8b851fu, 0xbc68f5c3u, 0xbc3ae148u,
    0xbc1f3b64u, 0xbc160418u, 0xbc0ccccdu, 0xbc039581u, 0xbbf4bc6au, 0xbbe24dd3u, 0xbbcfdf3bu, 0xbbbd70a4u,
    0xbbab020du, 0xbb989374u, 0xbb8624ddu, 0xbb676c8au, 0xbb428f5cu, 0xbb1db22du, 0xbaf1a9fcu, 0xbaa7ef9du,
    0xba7765ffu, 0xba59e83eu, 0xba3c6a80u, 0xba1eecc1u, 0xba016f01u, 0xb9c7e283u, 0xb98ce705u, 0xb923d70bu,
    0xb8ba1f4bu, 0xb88aefb3u, 0xb8378034u, 0xb7b24206u, 0xb70205ffu, 0xb65a1a94u, 0xb513a3b7u, 0x00000000u,
    0x3513a3b7u, 0x365a1a94u, 0x370205ffu, 0x37b24206u, 0x38378034u, 0x388aefb3u, 0x38ba1f4bu, 0x3923d70bu,
    0x398ce705u, 0x39c7e283u, 0x3a016f01u, 0x3a1eecc1u, 0x3a3c6a80u, 0x3a59e83eu, 0x3a7765ffu, 0x3aa7ef9du,
    0x3af1a9fcu, 0x3b1db22du, 0x3b428f5cu, 0x3b676c8au, 0x3b8624ddu, 0x3b989374u, 0x3bab020du, 0x3bbd70a4u,
    0x3bcfdf3bu, 0x3be24dd3u, 0x3bf4bc6au, 0x3c039581u, 0x3c0ccccdu, 0x3c160418u, 0x3c1f3b64u, 0x3c3ae148u,
    0x3c68f5c3u, 0x3c8b851fu, 0x3ca28f5cu, 0x3cb9999au, 0x3cd0a3d7u, 0x3ce7ae13u, 0x3cfeb852u, 0x3d0ae147u,
    0x3d166667u, 0x3d21eb85u, 0x3d2d70a3u, 0x3d38f5c3u, 0x3d447ae1u, 0x3d500000u, 0x3d5b851fu, 0x3d670a3du,
    0x3d728f5du, 0x3d7e147au, 0x3d84cccdu, 0x3d8a8f5du, 0x3d9051ebu, 0x3d96147bu, 0x3d9bd70au, 0x3da1999au,
    0x3da75c28u, 0x3dad1eb8u, 0x3db2e148u, 0x3db8a3d7u, 0x3dbe6667u, 0x3dc428f5u, 0x3dc9eb85u, 0x3ddb3334u,
    0x3df80000u, 0x3e0a6666u, 0x3e18cccdu, 0x3e273333u, 0x3e359999u, 0x3e440000u, 0x3e526666u, 0x3e60cccdu,
    0x3e6f3334u, 0x3e7d999au, 0x3e860000u, 0x3e8d3334u, 0x3e946666u, 0x3e9b999au, 0x3ea2ccccu, 0x3eaa0000u,
    0x3eb13332u, 0x3eb86666u, 0x3ebf999au, 0x3ec6ccccu, 0x3ece0000u, 0x3ed53332u, 0x3edc6666u, 0x3ee3999au,
    0x3eeaccccu, 0x3ef20000u, 0x3ef93334u, 0x3f003333u, 0x3f03cccdu, 0x3f076666u, 0x3f0b0000u, 0x3f0e999au,
    0x3f123334u, 0x3f15cccdu, 0x3f196666u, 0x3f1d0000u, 0x3f20999au, 0x3f243333u, 0x3f27cccdu, 0x3f2b6667u,
    0x3f2f0000u, 0x3f32999au, 0x3f363334u, 0x3f39cccdu, 0x3f3d6667u, 0x3f410000u, 0x3f44999au, 0x3f483333u,
    0x3f4bccccu, 0x3f4f6666u, 0x3f530000u, 0x3f569999u, 0x3f5a3333u, 0x3f5dccccu, 0x3f616666u, 0x3f650000u,
    0x3f68999au, 0x3f6c3333u, 0x3f6fccccu, 0x3f736666u, 0x3f770000u, 0x3f7a9999u, 0x3f7e3333u, 0x3f800000u,
};

inline float nf4_value(int code) { return from_bits(kRefNf4[code]); }
inline float fp4_value(int code) {
    // (float) of the exact ratio: the same float as bnb's literal (checked by the table test).
    const float magnitude = (float)kRefFp4Magnitude[code & 7];
    return (code & 8) != 0 ? -magnitude : magnitude;
}
inline float code_value(int32_t quant_type, int code) {
    return quant_type == LK_QUANT_NF4 ? nf4_value(code) : fp4_value(code);
}

// Naive NF4 code of the normalised value x: walk the codes upwards while x lies strictly above
// the float32 midpoint of the next pair, the midpoint computed here from the code values (exact
// in double, then rounded to float) - so a value exactly on a midpoint keeps the lower code.
inline int naive_nf4_code(float x) {
    int code = 0;
    for (int i = 0; i < 15; ++i) {
        const float mid = (float)(((double)nf4_value(i) + (double)nf4_value(i + 1)) / 2.0);
        if (x > mid) code = i + 1;
    }
    return code;
}

// Naive FP4 code: the number of sorted tree literals |x| strictly exceeds picks the magnitude.
inline int naive_fp4_code(float x) {
    int rank = 0;
    for (uint32_t split : kRefFp4Splits) rank += std::fabs(x) > from_bits(split) ? 1 : 0;
    return kRefFp4Ascending[rank] | (x < 0.0f ? 8 : 0);
}

inline int naive_code(int32_t quant_type, float x) {
    return quant_type == LK_QUANT_NF4 ? naive_nf4_code(x) : naive_fp4_code(x);
}

// The 4-bit code of flattened element e (high nibble = even element).
inline int code_at(const std::vector<uint8_t>& codes, int64_t e) {
    const uint8_t byte = codes[(size_t)(e / 2)];
    return (e % 2 == 0) ? byte >> 4 : byte & 15;
}

// Naive decode of n elements: table value times the block's absmax, in double.
inline std::vector<double> naive_decode(int32_t quant_type, int64_t n, int64_t blocksize,
                                        const std::vector<uint8_t>& codes,
                                        const std::vector<float>& absmax) {
    std::vector<double> w((size_t)n);
    for (int64_t e = 0; e < n; ++e)
        w[(size_t)e] = (double)code_value(quant_type, code_at(codes, e)) * absmax[(size_t)(e / blocksize)];
    return w;
}

// Standard normal values (Box-Muller on the test Rng), times sigma.
inline std::vector<float> gaussian(Rng& rng, int64_t n, float sigma) {
    std::vector<float> v((size_t)n);
    for (int64_t i = 0; i < n; i += 2) {
        const double u1 = ((rng.next_u32() >> 8) + 1.0) / 16777217.0;
        const double u2 = (rng.next_u32() >> 8) / 16777216.0;
        const double radius = std::sqrt(-2.0 * std::log(u1));
        v[(size_t)i] = (float)(sigma * radius * std::cos(2.0 * M_PI * u2));
        if (i + 1 < n) v[(size_t)(i + 1)] = (float)(sigma * radius * std::sin(2.0 * M_PI * u2));
    }
    return v;
}

}  // namespace cpu_test
