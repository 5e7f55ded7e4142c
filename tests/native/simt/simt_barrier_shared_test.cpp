// Barriers, thread/block coordinates and shared memory under the emulator: multi-phase
// shared-memory reductions over 1-D, 2-D and 3-D blocks of 1..1024 threads, fresh and poisoned
// shared memory per block, and a tiled shared-memory matmul against a double-precision reference.
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "simt_test_util.h"

namespace simt_test {
namespace {

class SimtTest : public ::testing::Test {
protected:
    void TearDown() override { ASSERT_EQ(lk_simt_set_num_threads(0), LK_OK); }
};

struct geometry {
    dims grid;
    dims block;
};

std::string geometry_name(const geometry& g) {
    auto d = [](dims v) { return std::to_string(v.x) + "x" + std::to_string(v.y) + "x" + std::to_string(v.z); };
    return "grid_" + d(g.grid) + "_block_" + d(g.block);
}

class SimtGeometryTest : public ::testing::TestWithParam<geometry> {};

TEST_P(SimtGeometryTest, EveryThreadSeesItsCoordinates) {
    const geometry g = GetParam();
    const std::size_t threads = (std::size_t)g.block.x * g.block.y * g.block.z;
    const std::size_t blocks = (std::size_t)g.grid.x * g.grid.y * g.grid.z;
    std::vector<unsigned> out(blocks * threads * 12, 0xFFFFFFFFu);
    unsigned* out_ptr = out.data();
    ASSERT_EQ(launch("simt_test_coords", g.grid, g.block, 0, out_ptr), LK_OK) << last_error();
    for (std::size_t b = 0; b < blocks; ++b) {
        const unsigned bx = (unsigned)(b % g.grid.x), by = (unsigned)(b / g.grid.x % g.grid.y),
                       bz = (unsigned)(b / ((std::size_t)g.grid.x * g.grid.y));
        for (std::size_t t = 0; t < threads; ++t) {
            const unsigned tx = (unsigned)(t % g.block.x), ty = (unsigned)(t / g.block.x % g.block.y),
                           tz = (unsigned)(t / ((std::size_t)g.block.x * g.block.y));
            const unsigned expected[12] = {tx,        ty,        tz,        bx,        by,        bz,
                                           g.block.x, g.block.y, g.block.z, g.grid.x, g.grid.y, g.grid.z};
            for (int i = 0; i < 12; ++i)
                ASSERT_EQ(out[(b * threads + t) * 12 + i], expected[i]) << "block " << b << " thread " << t << " field " << i;
        }
    }
}

TEST_P(SimtGeometryTest, SharedMemoryTreeSumAcrossBarriers) {
    const geometry g = GetParam();
    const std::size_t threads = (std::size_t)g.block.x * g.block.y * g.block.z;
    const std::size_t blocks = (std::size_t)g.grid.x * g.grid.y * g.grid.z;
    // Integer-valued inputs: every partial sum is exact in fp32, so the result must be exact.
    std::vector<float> in(blocks * threads);
    for (std::size_t i = 0; i < in.size(); ++i) in[i] = (float)((i * 7) % 19) + 1.0f;
    std::vector<float> out(blocks, -1.0f);
    std::vector<int> phases(blocks, -1);
    const float* in_ptr = in.data();
    float* out_ptr = out.data();
    int* phases_ptr = phases.data();
    ASSERT_EQ(launch("simt_test_block_sum", g.grid, g.block, 0, in_ptr, out_ptr, phases_ptr), LK_OK) << last_error();
    int expected_phases = 2;
    for (std::size_t p = 2; p <= threads; p *= 2) ++expected_phases;
    for (std::size_t b = 0; b < blocks; ++b) {
        double expected = 0.0;
        for (std::size_t t = 0; t < threads; ++t) expected += in[b * threads + t];
        EXPECT_EQ((double)out[b], expected) << "block " << b;
        EXPECT_EQ(phases[b], expected_phases) << "block " << b;
    }
}

TEST_P(SimtGeometryTest, NeighbourWritesVisibleAfterEachBarrier) {
    const geometry g = GetParam();
    const std::size_t threads = (std::size_t)g.block.x * g.block.y * g.block.z;
    const std::size_t blocks = (std::size_t)g.grid.x * g.grid.y * g.grid.z;
    int rounds = 5;
    std::vector<int> out(blocks * threads, -1);
    int* out_ptr = out.data();
    ASSERT_EQ(launch("simt_test_barrier_rounds", g.grid, g.block, 0, rounds, out_ptr), LK_OK) << last_error();
    for (std::size_t i = 0; i < out.size(); ++i) ASSERT_EQ(out[i], rounds) << "thread " << i;
}

INSTANTIATE_TEST_SUITE_P(Shapes, SimtGeometryTest,
                         ::testing::Values(geometry{{1, 1, 1}, {1, 1, 1}}, geometry{{2, 1, 1}, {31, 1, 1}},
                                           geometry{{3, 1, 1}, {32, 1, 1}}, geometry{{2, 2, 1}, {33, 1, 1}},
                                           geometry{{5, 1, 1}, {256, 1, 1}}, geometry{{2, 1, 1}, {1024, 1, 1}},
                                           geometry{{2, 3, 1}, {16, 8, 1}}, geometry{{1, 1, 3}, {8, 4, 4}},
                                           geometry{{2, 3, 2}, {7, 5, 3}}, geometry{{1, 1, 1}, {1, 1, 64}},
                                           geometry{{1, 1, 1}, {1, 1024, 1}}),
                         [](const ::testing::TestParamInfo<geometry>& info) { return geometry_name(info.param); });

// Shared memory is fresh for every block: read before any write, each array (in the kernel, in a
// helper function, dynamic) holds the 0xFF poison, never a previous block's data, even when one
// worker runs all blocks in turn; and every thread of a block sees the same storage.
void check_fresh_shared(int workers) {
    ASSERT_EQ(lk_simt_set_num_threads(workers), LK_OK);
    const std::uint32_t blocks = 9, threads = 256;
    int dynamic_floats = 37;
    std::vector<unsigned> observed(blocks * 4, 0);
    unsigned* observed_ptr = observed.data();
    ASSERT_EQ(launch("simt_test_shared_fresh", {blocks}, {threads}, (std::uint32_t)dynamic_floats * 4, observed_ptr,
                     dynamic_floats),
              LK_OK)
        << last_error();
    for (std::uint32_t b = 0; b < blocks; ++b) {
        EXPECT_EQ(observed[b * 4 + 0], 0xFFFFFFFFu) << "static array, block " << b;
        EXPECT_EQ(observed[b * 4 + 1], 0xFFFFFFFFu) << "helper's static array, block " << b;
        EXPECT_EQ(observed[b * 4 + 2], 0xFFFFFFFFu) << "dynamic shared memory, block " << b;
        EXPECT_EQ(observed[b * 4 + 3], threads) << "threads that saw their block's writes, block " << b;
    }
}

TEST_F(SimtTest, SharedMemoryFreshPerBlock_9blocks_256threads_OneWorker) { check_fresh_shared(1); }
TEST_F(SimtTest, SharedMemoryFreshPerBlock_9blocks_256threads_ThreeWorkers) { check_fresh_shared(3); }

TEST_F(SimtTest, UnwrittenDynamicSharedReadsAsNaN_1000floats) {
    int floats = 1000;
    std::vector<int> nan_count(4, -1);
    int* nan_ptr = nan_count.data();
    ASSERT_EQ(launch("simt_test_dynamic_unwritten", {4}, {32}, (std::uint32_t)floats * 4, floats, nan_ptr), LK_OK)
        << last_error();
    for (int b = 0; b < 4; ++b) EXPECT_EQ(nan_count[b], floats) << "block " << b;
}

TEST_F(SimtTest, StaticSharedExactlyAtLimitIsAllowed) {
    std::vector<float> out(2, 0.0f);
    float* out_ptr = out.data();
    ASSERT_EQ(launch("simt_test_static_shared_at_limit", {2}, {64}, 0, out_ptr), LK_OK) << last_error();
    EXPECT_EQ(out[0], 1.0f);
    EXPECT_EQ(out[1], 1.0f);
}

struct matmul_shape {
    int M, N, K;
};

class SimtMatmulTest : public ::testing::TestWithParam<matmul_shape> {};

// C = A B with 16x16 shared-memory tiles vs a double-precision reference. Tolerance per element:
// 1e-6 + K * FLT_EPSILON * sum_k |a_ik b_kj| (fp32 accumulation error bound for a length-K dot).
TEST_P(SimtMatmulTest, MatchesDoubleReference) {
    const matmul_shape s = GetParam();
    std::mt19937 rng(1234u + (unsigned)(s.M * 131 + s.N * 17 + s.K));
    std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
    std::vector<float> A((std::size_t)s.M * s.K), B((std::size_t)s.K * s.N), C((std::size_t)s.M * s.N, NAN);
    for (float& v : A) v = dist(rng);
    for (float& v : B) v = dist(rng);
    const float* a = A.data();
    const float* b = B.data();
    float* c = C.data();
    int M = s.M, N = s.N, K = s.K;
    const dims grid{(std::uint32_t)(N + 15) / 16, (std::uint32_t)(M + 15) / 16, 1};
    ASSERT_EQ(launch("simt_test_matmul_tiled", grid, {16, 16, 1}, 0, a, b, c, M, N, K), LK_OK) << last_error();
    int nonzero = 0;
    for (int i = 0; i < M; ++i) {
        for (int j = 0; j < N; ++j) {
            double ref = 0.0, magnitude = 0.0;
            for (int k = 0; k < K; ++k) {
                ref += (double)A[(std::size_t)i * K + k] * B[(std::size_t)k * N + j];
                magnitude += std::fabs((double)A[(std::size_t)i * K + k] * B[(std::size_t)k * N + j]);
            }
            const double tolerance = 1e-6 + K * (double)FLT_EPSILON * magnitude;
            const float got = C[(std::size_t)i * N + j];
            ASSERT_NEAR(got, ref, tolerance) << "C[" << i << "," << j << "]";
            nonzero += got != 0.0f;
        }
    }
    EXPECT_GT(nonzero, M * N / 2);
}

INSTANTIATE_TEST_SUITE_P(Shapes, SimtMatmulTest,
                         ::testing::Values(matmul_shape{37, 53, 29}, matmul_shape{1, 1, 1}, matmul_shape{16, 16, 16},
                                           matmul_shape{17, 33, 65}, matmul_shape{64, 1, 40}),
                         [](const ::testing::TestParamInfo<matmul_shape>& info) {
                             return "M" + std::to_string(info.param.M) + "_N" + std::to_string(info.param.N) + "_K" +
                                    std::to_string(info.param.K);
                         });

}  // namespace
}  // namespace simt_test
