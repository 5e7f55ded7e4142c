// The emulated CUDA intrinsics (fast math, bit casts, bit counts, min/max overloads) against the
// same functions computed on the host. Fast-math intrinsics are emulated with the accurate libm
// functions, so the comparison is exact here; a GPU's __expf differs in the last bits.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "simt_test_util.h"

namespace simt_test {
namespace {

float bits_to_float(unsigned u) {
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}
unsigned float_to_bits(float f) {
    unsigned u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}

TEST(SimtIntrinsicsTest, MatchHostFunctions_9values) {
    std::vector<float> x = {-3.5f, -1.0f, -0.25f, 0.0f, 0.3f, 0.999f, 1.0f, 2.75f, NAN};
    std::vector<unsigned> bits = {0u, 1u, 2u, 0x80000000u, 0xFFFFFFFFu, 0x00F0F000u, 12345u, 77u, 0x40000000u};
    int n = (int)x.size();
    std::vector<float> out_f(8 * x.size(), -99.0f);
    std::vector<int> out_i(8 * x.size(), -99);
    const float* x_ptr = x.data();
    const unsigned* bits_ptr = bits.data();
    float* f_ptr = out_f.data();
    int* i_ptr = out_i.data();
    ASSERT_EQ(launch("simt_test_intrinsics", {1}, {1}, 0, x_ptr, bits_ptr, n, f_ptr, i_ptr), LK_OK) << last_error();
    for (int i = 0; i < n; ++i) {
        const float v = x[i];
        const float expected_f[8] = {1.0f / std::sqrt(std::fabs(v) + 1.0f),
                                     std::exp(v),
                                     std::log(std::fabs(v) + 0.5f),
                                     v / 3.0f,
                                     std::fma(v, 1.5f, -0.25f),
                                     v > 0.0f ? (v < 1.0f ? v : 1.0f) : 0.0f,  // NaN -> 0
                                     std::fmin(v, 0.5f) + std::fmax(v, -0.5f),
                                     bits_to_float(float_to_bits(v) ^ 0x80000000u) + v};
        for (int k = 0; k < 8; ++k) {
            const float got = out_f[i * 8 + k];
            if (std::isnan(expected_f[k]))
                EXPECT_TRUE(std::isnan(got)) << "x = " << v << ", float op " << k;
            else
                EXPECT_EQ(got, expected_f[k]) << "x = " << v << ", float op " << k;
        }
        const unsigned b = bits[i];
        const int as_int = (int)b;
        const int expected_i[8] = {
            __builtin_popcount(b),
            2 * __builtin_popcount(b),
            b == 0 ? 32 : __builtin_clz(b),
            b == 0 ? 0 : __builtin_ctz(b) + 1,
            std::min(as_int, 7) + std::max(as_int, -7),
            (int)(std::min(b, 100u) + std::max(b, 50u)),
            (int)(std::min(1ll << 40, (long long)b) + std::max(-(1ll << 40), (long long)b)),
            (int)(std::min((unsigned long long)b, 3ull) + std::max((unsigned long long)b, 2ull))};
        for (int k = 0; k < 8; ++k) EXPECT_EQ(out_i[i * 8 + k], expected_i[k]) << "bits = " << b << ", int op " << k;
    }
}

}  // namespace
}  // namespace simt_test
