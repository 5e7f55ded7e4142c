// lk_cpu_segmented_forward / _backward against naive double-precision references, and the segment
// table checks.
//
// Tables (segment_tables.h): random partitions of the rows into segments of 0..5 rows (empty segments
// included), some rows left out (no adapter), adapters drawn from [-1, n_adapters), the table shuffled
// (any order is allowed); every row its own adapter; one segment longer than the dot-product cutoff of
// 16 rows (the packed-GEMM path). Adapters recur across segments, so their gradients sum over several.
// Both bases: one dense W0 for the batch, and a W0 table (grouped experts: every row covered).
// Shapes: M in {1, 7, 16, 17, 40}, in/out multiples of no micro-tile, r in {0, 1, 8, 17}.
//
// Tolerances, per element, as lora_test.cpp (u = 2^-24, L the longest fp32 chain that feeds the
// element, magnitude the sum of |terms| of the exact expression, intermediates u and du entering with
// their own sums of |terms|):  |got - ref| <= 1e-6 + 4 * (L + 2) * u * magnitude.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "reference.h"
#include "segment_tables.h"

namespace cpu_test {
namespace {

constexpr double kAtol = 1e-6;
double rtol(int64_t longest_reduction) {
    return 4.0 * (double)(longest_reduction + 2) * kUnitRoundoff;
}
const float kNaN = std::numeric_limits<float>::quiet_NaN();

using segment_tables::Layout;

struct SegmentedShape {
    int64_t M, in, out, r, n_adapters;
    bool table_base;
    Layout layout;
};

std::string segmented_name(const SegmentedShape& s) {
    const char* layout = segment_tables::LayoutName(s.layout);
    return "M" + std::to_string(s.M) + "_in" + std::to_string(s.in) + "_out" + std::to_string(s.out) + "_r" +
           std::to_string(s.r) + "_n" + std::to_string(s.n_adapters) + (s.table_base ? "_grouped_" : "_dense_") +
           layout;
}

void PrintTo(const SegmentedShape& s, std::ostream* os) { *os << segmented_name(s); }

struct Case {
    SegmentedShape s;
    std::vector<float> x, W0, bias, A, B, scales, dy;
    std::vector<int32_t> segments;
    std::vector<int64_t> adapter_of;

    explicit Case(const SegmentedShape& shape, uint64_t seed) : s(shape) {
        Rng rng(seed);
        const int64_t bases = s.table_base ? s.n_adapters : 1;
        x = rng.vector(s.M * s.in);
        W0 = rng.vector(bases * s.out * s.in);
        bias = rng.vector(s.out);
        A = rng.vector(s.n_adapters * s.r * s.in);
        B = rng.vector(s.n_adapters * s.out * s.r);
        scales = rng.vector(s.n_adapters);
        dy = rng.vector(s.M * s.out);
        segments = segment_tables::Make([&] { return rng.next_u32(); }, s.M, s.n_adapters, s.table_base, s.layout);
        adapter_of = segment_tables::RowAdapters(s.M, segments);
    }
    int64_t n_segments() const { return (int64_t)segments.size() / 3; }
    const float* W(int64_t m) const {  // row m's base
        return W0.data() + (s.table_base ? adapter_of[(size_t)m] * s.out * s.in : 0);
    }
    const float* dense_W0() const { return s.table_base ? nullptr : W0.data(); }
    const float* W0_table() const { return s.table_base ? W0.data() : nullptr; }
};

struct Ref {
    std::vector<double> value, magnitude;
    explicit Ref(size_t n) : value(n, 0.0), magnitude(n, 0.0) {}
    void add(size_t i, double term) {
        value[i] += term;
        magnitude[i] += std::fabs(term);
    }
};

class SegmentedForward : public ::testing::TestWithParam<SegmentedShape> {};

TEST_P(SegmentedForward, MatchesReference) {
    const Case c(GetParam(), 3000);
    const SegmentedShape& s = c.s;
    Ref u_ref((size_t)(s.M * s.r)), y_ref((size_t)(s.M * s.out));
    for (int64_t m = 0; m < s.M; ++m) {
        const int64_t a = c.adapter_of[(size_t)m];
        for (int64_t t = 0; t < s.r && a >= 0; ++t)
            for (int64_t k = 0; k < s.in; ++k)
                u_ref.add((size_t)(m * s.r + t), (double)c.x[m * s.in + k] * c.A[(a * s.r + t) * s.in + k]);
        for (int64_t j = 0; j < s.out; ++j) {
            const size_t i = (size_t)(m * s.out + j);
            y_ref.add(i, c.bias[j]);
            for (int64_t k = 0; k < s.in; ++k) y_ref.add(i, (double)c.x[m * s.in + k] * c.W(m)[j * s.in + k]);
            for (int64_t t = 0; t < s.r && a >= 0; ++t) {
                const double coefficient = (double)c.scales[a] * c.B[(a * s.out + j) * s.r + t];
                y_ref.value[i] += coefficient * u_ref.value[(size_t)(m * s.r + t)];
                y_ref.magnitude[i] += std::fabs(coefficient) * u_ref.magnitude[(size_t)(m * s.r + t)];
            }
        }
    }
    std::vector<float> y((size_t)(s.M * s.out), kNaN), u((size_t)(s.M * s.r), kNaN);
    ASSERT_EQ(lk_cpu_segmented_forward(s.M, s.in, s.out, s.r, s.n_adapters, c.x.data(), c.dense_W0(), c.W0_table(),
                                       c.bias.data(), c.A.data(), c.B.data(), c.scales.data(), c.segments.data(),
                                       c.n_segments(), y.data(), s.r ? u.data() : nullptr),
              LK_OK)
        << last_error();
    if (s.r > 0) {
        EXPECT_TRUE(all_near(u.data(), s.r, s.M, s.r, u_ref.value, u_ref.magnitude, kAtol, rtol(s.in)));
    }
    EXPECT_TRUE(all_near(y.data(), s.out, s.M, s.out, y_ref.value, y_ref.magnitude, kAtol, rtol(s.in + s.r)));
}

class SegmentedBackward : public ::testing::TestWithParam<SegmentedShape> {};

TEST_P(SegmentedBackward, MatchesReference) {
    const Case c(GetParam(), 4000);
    const SegmentedShape& s = c.s;
    Rng rng(4001);
    const std::vector<float> u = rng.vector(s.M * s.r);
    Ref du((size_t)(s.M * s.r)), dx((size_t)(s.M * s.in)), dA((size_t)(s.n_adapters * s.r * s.in)),
        dB((size_t)(s.n_adapters * s.out * s.r));
    for (int64_t m = 0; m < s.M; ++m) {
        const int64_t a = c.adapter_of[(size_t)m];
        for (int64_t t = 0; t < s.r && a >= 0; ++t)
            for (int64_t j = 0; j < s.out; ++j)
                du.add((size_t)(m * s.r + t), (double)c.scales[a] * c.dy[m * s.out + j] * c.B[(a * s.out + j) * s.r + t]);
        for (int64_t k = 0; k < s.in; ++k) {
            const size_t i = (size_t)(m * s.in + k);
            for (int64_t j = 0; j < s.out; ++j) dx.add(i, (double)c.dy[m * s.out + j] * c.W(m)[j * s.in + k]);
            for (int64_t t = 0; t < s.r && a >= 0; ++t) {
                const double coefficient = c.A[(a * s.r + t) * s.in + k];
                dx.value[i] += coefficient * du.value[(size_t)(m * s.r + t)];
                dx.magnitude[i] += std::fabs(coefficient) * du.magnitude[(size_t)(m * s.r + t)];
            }
        }
        for (int64_t t = 0; t < s.r && a >= 0; ++t) {
            for (int64_t j = 0; j < s.out; ++j)
                dB.add((size_t)((a * s.out + j) * s.r + t), (double)c.scales[a] * c.dy[m * s.out + j] * u[m * s.r + t]);
            for (int64_t k = 0; k < s.in; ++k) {
                const size_t i = (size_t)((a * s.r + t) * s.in + k);
                dA.value[i] += du.value[(size_t)(m * s.r + t)] * c.x[m * s.in + k];
                dA.magnitude[i] += du.magnitude[(size_t)(m * s.r + t)] * std::fabs((double)c.x[m * s.in + k]);
            }
        }
    }
    std::vector<float> got_dx((size_t)(s.M * s.in), kNaN), got_dA(dA.value.size(), kNaN), got_dB(dB.value.size(), kNaN);
    ASSERT_EQ(lk_cpu_segmented_backward(s.M, s.in, s.out, s.r, s.n_adapters, c.x.data(), c.dense_W0(), c.W0_table(),
                                        c.A.data(), c.B.data(), c.scales.data(), u.data(), c.dy.data(),
                                        c.segments.data(), c.n_segments(), got_dx.data(), s.r ? got_dA.data() : nullptr,
                                        s.r ? got_dB.data() : nullptr),
              LK_OK)
        << last_error();
    EXPECT_TRUE(all_near(got_dx.data(), s.in, s.M, s.in, dx.value, dx.magnitude, kAtol, rtol(s.out + s.r)));
    if (s.r == 0) return;
    // An adapter no row uses gets exact zeros (the reference's 0 with magnitude 0 demands it); the
    // all-zero guard of all_near needs at least one used adapter, which every table here has.
    EXPECT_TRUE(all_near(got_dB.data(), s.r, s.n_adapters * s.out, s.r, dB.value, dB.magnitude, kAtol, rtol(s.M)));
    EXPECT_TRUE(all_near(got_dA.data(), s.in, s.n_adapters * s.r, s.in, dA.value, dA.magnitude, kAtol,
                         rtol(s.out + s.M)));
}

std::vector<SegmentedShape> segmented_shapes() {
    std::vector<SegmentedShape> shapes;
    for (bool table : {false, true})
        for (int64_t M : {1, 7, 16, 17, 40})
            for (auto io : {std::pair<int64_t, int64_t>{37, 53}, {130, 71}})
                for (int64_t r : {0, 1, 8, 17})
                    for (Layout layout : {Layout::Random, Layout::RowPerAdapter, Layout::LongSegment}) {
                        if (layout == Layout::LongSegment && M <= 16) continue;  // nothing past the cutoff
                        shapes.push_back({M, io.first, io.second, r, 5, table, layout});
                    }
    return shapes;
}

INSTANTIATE_TEST_SUITE_P(Shapes, SegmentedForward, ::testing::ValuesIn(segmented_shapes()),
                         [](const ::testing::TestParamInfo<SegmentedShape>& info) { return segmented_name(info.param); });
INSTANTIATE_TEST_SUITE_P(Shapes, SegmentedBackward, ::testing::ValuesIn(segmented_shapes()),
                         [](const ::testing::TestParamInfo<SegmentedShape>& info) { return segmented_name(info.param); });

// ---- the segment table checks: each malformed table is refused before anything is written --------

struct BadTable {
    const char* name;
    std::vector<int32_t> segments;
    bool table_base;
    const char* message;  // a part of the error message
};

class SegmentedBadTable : public ::testing::TestWithParam<BadTable> {};

TEST_P(SegmentedBadTable, IsRejected) {
    const BadTable bad = GetParam();
    const int64_t M = 6, in = 3, out = 2, r = 2, n = 3;
    Rng rng(5000);
    const std::vector<float> x = rng.vector(M * in), W0 = rng.vector(n * out * in), A = rng.vector(n * r * in),
                             B = rng.vector(n * out * r), scales = rng.vector(n), dy = rng.vector(M * out);
    std::vector<float> y((size_t)(M * out), kNaN), u((size_t)(M * r), kNaN), dx((size_t)(M * in), kNaN);
    const float* dense = bad.table_base ? nullptr : W0.data();
    const float* table = bad.table_base ? W0.data() : nullptr;
    const int64_t count = (int64_t)bad.segments.size() / 3;
    EXPECT_EQ(lk_cpu_segmented_forward(M, in, out, r, n, x.data(), dense, table, nullptr, A.data(), B.data(),
                                       scales.data(), bad.segments.data(), count, y.data(), u.data()),
              LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find(bad.message), std::string::npos) << last_error();
    EXPECT_TRUE(std::all_of(y.begin(), y.end(), [](float v) { return std::isnan(v); })) << "y written";
    EXPECT_EQ(lk_cpu_segmented_backward(M, in, out, r, n, x.data(), dense, table, A.data(), B.data(), scales.data(),
                                        u.data(), dy.data(), bad.segments.data(), count, dx.data(), nullptr, nullptr),
              LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find(bad.message), std::string::npos) << last_error();
}

INSTANTIATE_TEST_SUITE_P(
    Tables, SegmentedBadTable,
    ::testing::Values(BadTable{"overlap", {0, 3, 0, 2, 2, 1}, false, "overlap at row 2"},
                      BadTable{"past_M", {0, 2, 0, 4, 3, 1}, false, "not inside the 6 rows"},
                      BadTable{"negative_start", {-1, 2, 0}, false, "not inside"},
                      BadTable{"negative_length", {2, -1, 0}, false, "not inside"},
                      BadTable{"adapter_too_large", {0, 2, 3}, false, "adapter 3"},
                      BadTable{"adapter_below_minus_one", {0, 2, -2}, false, "adapter -2"},
                      BadTable{"table_base_uncovered_row", {0, 5, 1}, true, "row 5 is in no segment"},
                      BadTable{"table_base_no_adapter", {0, 3, 1, 3, 3, -1}, true, "row 3 is in no segment"}),
    [](const ::testing::TestParamInfo<BadTable>& info) { return std::string(info.param.name); });

TEST(SegmentedArguments, OneBaseOnly) {
    const float v[4] = {1, 2, 3, 4};
    const int32_t segments[3] = {0, 1, 0};
    float y[2], u[1];
    EXPECT_EQ(lk_cpu_segmented_forward(1, 2, 1, 1, 1, v, v, v, nullptr, v, v, v, segments, 1, y, u),
              LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("both given"), std::string::npos) << last_error();
    EXPECT_EQ(lk_cpu_segmented_forward(1, 2, 1, 1, 1, v, nullptr, nullptr, nullptr, v, v, v, segments, 1, y, u),
              LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("W0 or W0_table is NULL"), std::string::npos) << last_error();
    EXPECT_EQ(lk_cpu_segmented_forward(1, 2, 1, 1, 1, v, v, nullptr, nullptr, v, v, v, nullptr, 1, y, u),
              LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("segments is NULL"), std::string::npos) << last_error();
}

}  // namespace
}  // namespace cpu_test
