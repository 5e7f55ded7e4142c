// reference.h: what the CPU kernel tests compare against: fixed-seed inputs, naive
// double-precision references written out here (they never call the library), and one
// element-wise comparison that takes its tolerance per element as atol + rtol * magnitude.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "lora_kernels.h"

namespace cpu_test {

constexpr double kUnitRoundoff = 1.0 / 16777216.0;  // 2^-24, fp32

// Fixed-seed uniform values in +-[0.25, 1] (never zero, either sign), so products cannot vanish.
class Rng {
public:
    explicit Rng(uint64_t seed) : state_(seed * 0x9E3779B97F4A7C15ull + 1) {}
    uint32_t next_u32() {
        state_ ^= state_ << 13;
        state_ ^= state_ >> 7;
        state_ ^= state_ << 17;
        return (uint32_t)(state_ >> 16);
    }
    float nonzero() {
        float magnitude = 0.25f + 0.75f * (float)(next_u32() >> 8) / 16777216.0f;
        return (next_u32() & 1u) ? magnitude : -magnitude;
    }
    std::vector<float> vector(int64_t n) {
        std::vector<float> v((size_t)n);
        for (float& x : v) x = nonzero();
        return v;
    }

private:
    uint64_t state_;
};

// The library's last error message for this thread.
inline std::string last_error() {
    char buffer[1024];
    lk_cpu_last_error(buffer, sizeof buffer);
    return buffer;
}

// Checks got[i * ld_got + j] against ref[i * cols + j] for every element with the tolerance
// atol + rtol * magnitude[i * cols + j]. Also requires the reference to be non-zero somewhere, so
// a kernel that writes nothing cannot pass against an all-zero reference.
inline ::testing::AssertionResult all_near(const float* got, int64_t ld_got, int64_t rows,
                                           int64_t cols, const std::vector<double>& ref,
                                           const std::vector<double>& magnitude, double atol,
                                           double rtol) {
    int failures = 0;
    double largest_ref = 0.0;
    std::string report;
    for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < cols; ++j) {
            const double expected = ref[(size_t)(i * cols + j)];
            const double value = got[i * ld_got + j];
            const double tolerance = atol + rtol * magnitude[(size_t)(i * cols + j)];
            largest_ref = std::fmax(largest_ref, std::fabs(expected));
            if (!(std::fabs(value - expected) <= tolerance)) {
                if (failures < 5)
                    report += "\n  [" + std::to_string(i) + ", " + std::to_string(j) + "] got " +
                              std::to_string(value) + ", expected " + std::to_string(expected) +
                              ", tolerance " + std::to_string(tolerance);
                ++failures;
            }
        }
    if (rows * cols > 0 && largest_ref == 0.0)
        return ::testing::AssertionFailure()
               << "the reference is all zero: the check would be vacuous";
    if (failures > 0)
        return ::testing::AssertionFailure()
               << failures << " of " << rows * cols << " elements out of tolerance:" << report;
    return ::testing::AssertionSuccess();
}

// The input-dropout factor of element `index` of a dense [M, in] activation, exactly as every
// LoraKernels backend computes it (kernels/common.cuh's lk_dropout_factor).
double dropout_factor(uint64_t seed, uint64_t index, float p);

}  // namespace cpu_test
