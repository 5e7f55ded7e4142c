// Warp collectives under the emulator against values computed on the host from the CUDA
// programming guide's definitions: shuffles (idx/up/down/xor) of every supported type, every width
// and several operands, with full and partial masks; ballot/any/all over full, partial and
// single-lane masks and partial warps; and legal divergence (disjoint masks meeting at different
// collectives, then reconverging).
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "simt_test_util.h"

namespace simt_test {
namespace {

enum shuffle_kind { kIdx = 0, kUp = 1, kDown = 2, kXor = 3 };

// The lane whose value `lane` reads, by the programming guide's wording: idx reads lane
// srcLane mod width of its own width-segment; up reads lane - delta unless that leaves the
// segment; down reads lane + delta unless that leaves the segment; xor reads lane ^ laneMask
// unless that is in a later segment. -1: the lane keeps its own value.
int guide_source(shuffle_kind kind, int lane, int operand, int width) {
    const int offset = lane % width;
    switch (kind) {
        case kIdx: return lane - offset + ((operand % width) + width) % width;
        case kUp: return offset >= operand ? lane - operand : -1;
        case kDown: return offset + operand < width ? lane + operand : -1;
        case kXor: {
            const int source = lane ^ operand;
            return source / width > lane / width ? -1 : source;
        }
    }
    return -1;
}

template <class T>
struct shuffle_type;
template <>
struct shuffle_type<int> {
    static constexpr const char* kernel = "simt_test_shuffle_i32";
};
template <>
struct shuffle_type<unsigned> {
    static constexpr const char* kernel = "simt_test_shuffle_u32";
};
template <>
struct shuffle_type<long long> {
    static constexpr const char* kernel = "simt_test_shuffle_i64";
};
template <>
struct shuffle_type<unsigned long long> {
    static constexpr const char* kernel = "simt_test_shuffle_u64";
};
template <>
struct shuffle_type<float> {
    static constexpr const char* kernel = "simt_test_shuffle_f32";
};
template <>
struct shuffle_type<double> {
    static constexpr const char* kernel = "simt_test_shuffle_f64";
};

// Distinct per thread and, for 8-byte types, with high bits set, so a value that lost its upper
// half or came from the wrong lane shows.
template <class T>
T lane_value(int t) {
    if (sizeof(T) == 8) return (T)((double)(t + 1) * 4294967296.0 * 3.0 + (double)(t * 7 + 1));
    return (T)(t * 7 + 1);
}

template <class T>
bool same_bits(T a, T b) {
    return std::memcmp(&a, &b, sizeof a) == 0;
}

template <class T>
T all_ones() {
    T v;
    std::memset(&v, 0xFF, sizeof v);
    return v;
}

template <class T>
class SimtShuffleTest : public ::testing::Test {};
using shuffle_types = ::testing::Types<int, unsigned, long long, unsigned long long, float, double>;
TYPED_TEST_SUITE(SimtShuffleTest, shuffle_types);

// 64 threads (two warps); every width 1..32, operands 0..31, masks full / lower half / scattered /
// single lane. A lane outside the mask writes `absent`; a participating lane whose source lane
// is outside the mask reads all ones (the emulator's poison; CUDA leaves it undefined).
TYPED_TEST(SimtShuffleTest, MatchesProgrammingGuide_64threads_AllWidthsOperandsMasks) {
    using T = TypeParam;
    const int n = 64;
    std::mt19937 rng(77);
    std::uniform_int_distribution<int> src_dist(-40, 40);
    std::vector<T> values(n);
    std::vector<int> src_lanes(n);
    for (int t = 0; t < n; ++t) {
        values[t] = lane_value<T>(t);
        src_lanes[t] = src_dist(rng);
    }
    const T absent = (T)12345;
    const unsigned masks[] = {0xffffffffu, 0x0000ffffu, 0xf0f0f0f0u, 0x00000100u};
    const int operands[] = {0, 1, 2, 3, 5, 8, 16, 31};
    for (unsigned mask : masks) {
        for (int width = 1; width <= 32; width *= 2) {
            for (int operand : operands) {
                SCOPED_TRACE("mask " + std::to_string(mask) + " width " + std::to_string(width) + " operand " +
                             std::to_string(operand));
                std::vector<T> out(4 * n, (T)0);
                const T* values_ptr = values.data();
                const int* src_ptr = src_lanes.data();
                T* out_ptr = out.data();
                unsigned mask_arg = mask;
                int operand_arg = operand, width_arg = width;
                T absent_arg = absent;
                ASSERT_EQ(launch(shuffle_type<T>::kernel, {1}, {(std::uint32_t)n}, 0, values_ptr, src_ptr, out_ptr,
                                 mask_arg, operand_arg, width_arg, absent_arg),
                          LK_OK)
                    << last_error();
                for (int t = 0; t < n; ++t) {
                    const int lane = t % 32, warp_base = t - lane;
                    for (int k = 0; k < 4; ++k) {
                        T expected;
                        if (((mask >> lane) & 1u) == 0) {
                            expected = absent;
                        } else {
                            const int op = k == kIdx ? src_lanes[t] : operand;
                            int source = guide_source((shuffle_kind)k, lane, op, width);
                            if (source < 0) source = lane;
                            expected = ((mask >> source) & 1u) ? values[warp_base + source] : all_ones<T>();
                        }
                        ASSERT_TRUE(same_bits(out[k * n + t], expected))
                            << "kind " << k << " thread " << t << ": got " << out[k * n + t] << ", expected " << expected;
                    }
                }
            }
        }
    }
}

// Votes over 32, 64 and 40 threads (the last warp has 8 lanes; the kernel clips the mask to
// them) for several masks and predicate patterns.
TEST(SimtVoteTest, BallotAnyAllMatchHost_32_64_40threads) {
    const unsigned masks[] = {0xffffffffu, 0x0f0f0f0fu, 0x00000001u, 0x80000001u, 0xaaaaaaaau};
    for (std::uint32_t n : {32u, 64u, 40u}) {
        for (int pattern = 0; pattern < 4; ++pattern) {
            std::vector<int> predicates(n);
            for (std::uint32_t t = 0; t < n; ++t) {
                const int lane = (int)(t % 32);
                predicates[t] = pattern == 0 ? 1 : pattern == 1 ? 0 : pattern == 2 ? (lane % 3 == 0) * (lane + 1) : lane == 31;
            }
            for (unsigned mask : masks) {
                SCOPED_TRACE("threads " + std::to_string(n) + " pattern " + std::to_string(pattern) + " mask " +
                             std::to_string(mask));
                std::vector<unsigned> out(3 * n, 0);
                const int* pred_ptr = predicates.data();
                unsigned* out_ptr = out.data();
                unsigned mask_arg = mask;
                ASSERT_EQ(launch("simt_test_votes", {1}, {n}, 0, pred_ptr, mask_arg, out_ptr), LK_OK) << last_error();
                for (std::uint32_t t = 0; t < n; ++t) {
                    const std::uint32_t lane = t % 32, base = t - lane;
                    const std::uint32_t lanes = n - base < 32 ? n - base : 32;
                    const unsigned m = mask & (lanes == 32 ? 0xffffffffu : (1u << lanes) - 1);
                    if (((m >> lane) & 1u) == 0) {
                        for (int k = 0; k < 3; ++k) EXPECT_EQ(out[k * n + t], 0xDEADu) << "thread " << t;
                        continue;
                    }
                    unsigned ballot = 0;
                    for (std::uint32_t l = 0; l < lanes; ++l)
                        if (((m >> l) & 1u) && predicates[base + l] != 0) ballot |= 1u << l;
                    EXPECT_EQ(out[0 * n + t], ballot) << "ballot, thread " << t;
                    EXPECT_EQ(out[1 * n + t], ballot != 0 ? 1u : 0u) << "any, thread " << t;
                    EXPECT_EQ(out[2 * n + t], ballot == m ? 1u : 0u) << "all, thread " << t;
                }
            }
        }
    }
}

TEST(SimtDivergenceTest, DisjointMasksThenReconvergence_64threads) {
    const std::uint32_t n = 64;
    std::vector<int> out(3 * n, 0);
    int* out_ptr = out.data();
    ASSERT_EQ(launch("simt_test_divergent_collectives", {2}, {n}, 0, out_ptr), LK_OK) << last_error();
    unsigned upper_ballot = 0;
    for (int lane = 16; lane < 32; ++lane)
        if (lane % 3 == 0) upper_ballot |= 1u << lane;
    for (std::uint32_t t = 0; t < n; ++t) {
        const int lane = (int)(t % 32);
        const int source = 31 - lane;
        const int before = source < 16 ? (source ^ 1) * 10 : source * 10;
        EXPECT_EQ(out[0 * n + t], before) << "reversed value, thread " << t;
        EXPECT_EQ(out[1 * n + t], lane < 16 ? -1 : (int)upper_ballot) << "ballot, thread " << t;
        EXPECT_EQ(out[2 * n + t], 496) << "warp sum of lane ids, thread " << t;
    }
}

struct block_shape {
    std::uint32_t x, y, z;
};

class SimtWarpShapeTest : public ::testing::TestWithParam<block_shape> {};

TEST_P(SimtWarpShapeTest, WarpsFollowLinearThreadIds) {
    const block_shape b = GetParam();
    const std::uint32_t n = b.x * b.y * b.z;
    std::vector<unsigned> out(n, 0xFFFFFFFFu);
    unsigned* out_ptr = out.data();
    ASSERT_EQ(launch("simt_test_warp_of_thread", {1}, {b.x, b.y, b.z}, 0, out_ptr), LK_OK) << last_error();
    for (std::uint32_t t = 0; t < n; ++t) EXPECT_EQ(out[t], t - t % 32) << "thread " << t;
}

INSTANTIATE_TEST_SUITE_P(Shapes, SimtWarpShapeTest,
                         ::testing::Values(block_shape{8, 8, 1}, block_shape{4, 4, 4}, block_shape{16, 2, 3},
                                           block_shape{1, 32, 2}),
                         [](const ::testing::TestParamInfo<block_shape>& info) {
                             return std::to_string(info.param.x) + "x" + std::to_string(info.param.y) + "x" +
                                    std::to_string(info.param.z);
                         });

}  // namespace
}  // namespace simt_test
