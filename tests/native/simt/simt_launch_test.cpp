// lk_simt_launch as a whole: the kernel registry, worker threads (results independent of their
// number, no new block after a failure, the lowest failing block reported), concurrent launches,
// the last-error buffer, and the fiber-switch throughput of a large barrier-heavy launch.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <cstdio>
#include <cstring>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "simt_test_util.h"

namespace simt_test {
namespace {

class SimtLaunchTest : public ::testing::Test {
protected:
    void TearDown() override { ASSERT_EQ(lk_simt_set_num_threads(0), LK_OK); }
};

TEST(SimtRegistryTest, ListsEveryKernelOnce) {
    const int count = lk_simt_kernel_count();
    std::set<std::string> names;
    for (int i = 0; i < count; ++i) {
        const char* name = lk_simt_kernel_name(i);
        ASSERT_NE(name, nullptr) << "index " << i;
        EXPECT_TRUE(names.insert(name).second) << "listed twice: " << name;
    }
    for (const char* expected : {"simt_test_coords", "simt_test_block_sum", "simt_test_shuffle_f64",
                                 "simt_test_matmul_tiled", "simt_test_atomics", "simt_test_registered_twice"})
        EXPECT_EQ(names.count(expected), 1u) << expected;
    EXPECT_EQ(lk_simt_kernel_name(-1), nullptr);
    EXPECT_EQ(lk_simt_kernel_name(count), nullptr);
}

TEST_F(SimtLaunchTest, NoBlockStartsAfterAFailure_OneWorker_100blocks) {
    ASSERT_EQ(lk_simt_set_num_threads(1), LK_OK);
    int started = 0;
    int* started_ptr = &started;
    int trap_a = 3, trap_b = 3, trap_thread = 0;
    expect_failure(launch("simt_test_trap", {100}, {32}, 0, started_ptr, trap_a, trap_b, trap_thread),
                   LK_ERR_KERNEL_FAULT, {"block (3,0,0)", "thread (0,0,0)"});
    EXPECT_EQ(started, 4);  // blocks 0..3, in order, then nothing
}

TEST_F(SimtLaunchTest, LowestFailingBlockIsReported_1_2_4workers) {
    for (int workers : {1, 2, 4}) {
        ASSERT_EQ(lk_simt_set_num_threads(workers), LK_OK);
        int started = 0;
        int* started_ptr = &started;
        int trap_a = 9, trap_b = 5, trap_thread = 17;
        expect_failure(launch("simt_test_trap", {40}, {64}, 0, started_ptr, trap_a, trap_b, trap_thread),
                       LK_ERR_KERNEL_FAULT, {"block (5,0,0)", "thread (17,0,0)"});
        EXPECT_GE(started, 6) << workers << " workers";
        EXPECT_LT(started, 40) << workers << " workers";
    }
}

TEST_F(SimtLaunchTest, ResultsIndependentOfWorkerCount_50blocks_96threads) {
    const std::uint32_t blocks = 50, threads = 96;
    std::vector<float> in(blocks * threads);
    for (std::size_t i = 0; i < in.size(); ++i) in[i] = (float)((i * 13) % 29) - 14.0f;
    for (int workers : {1, 2, 3, 8, 0}) {
        ASSERT_EQ(lk_simt_set_num_threads(workers), LK_OK);
        std::vector<float> out(blocks, -1000.0f);
        std::vector<int> phases(blocks, 0);
        const float* in_ptr = in.data();
        float* out_ptr = out.data();
        int* phases_ptr = phases.data();
        ASSERT_EQ(launch("simt_test_block_sum", {blocks}, {threads}, 0, in_ptr, out_ptr, phases_ptr), LK_OK)
            << last_error();
        for (std::uint32_t b = 0; b < blocks; ++b) {
            float expected = 0.0f;
            for (std::uint32_t t = 0; t < threads; ++t) expected += in[b * threads + t];  // integers: exact
            EXPECT_EQ(out[b], expected) << workers << " workers, block " << b;
        }
    }
}

TEST_F(SimtLaunchTest, SetNumThreadsRejectsAbsurdCounts) {
    EXPECT_EQ(lk_simt_set_num_threads(5000), LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("5000"), std::string::npos) << last_error();
    EXPECT_EQ(lk_simt_set_num_threads(-3), LK_OK);  // <= 0: the default
}

TEST_F(SimtLaunchTest, ConcurrentLaunchesFromTwoHostThreads) {
    auto worker = [](int seed, bool* ok) {
        const std::uint32_t blocks = 20, threads = 128;
        std::vector<float> in(blocks * threads);
        for (std::size_t i = 0; i < in.size(); ++i) in[i] = (float)((i * 5 + (std::size_t)seed) % 11);
        *ok = true;
        for (int repeat = 0; repeat < 10; ++repeat) {
            std::vector<float> out(blocks, -1.0f);
            std::vector<int> phases(blocks, 0);
            const float* in_ptr = in.data();
            float* out_ptr = out.data();
            int* phases_ptr = phases.data();
            if (launch("simt_test_block_sum", {blocks}, {threads}, 0, in_ptr, out_ptr, phases_ptr) != LK_OK) *ok = false;
            for (std::uint32_t b = 0; b < blocks; ++b) {
                float expected = 0.0f;
                for (std::uint32_t t = 0; t < threads; ++t) expected += in[b * threads + t];
                if (out[b] != expected) *ok = false;
            }
        }
    };
    bool ok_a = false, ok_b = false;
    std::thread a(worker, 1, &ok_a);
    std::thread b(worker, 2, &ok_b);
    a.join();
    b.join();
    EXPECT_TRUE(ok_a);
    EXPECT_TRUE(ok_b);
}

TEST_F(SimtLaunchTest, LastErrorCopiesTruncatesAndIsPerThread) {
    ASSERT_EQ(launch("lk_missing_kernel", {1}, {1}, 0), LK_ERR_NOT_FOUND);
    const std::string full = last_error();
    ASSERT_GT(full.size(), 10u);
    char small[8];
    std::memset(small, 'x', sizeof small);
    EXPECT_EQ(lk_simt_last_error(small, sizeof small), (int64_t)full.size());
    EXPECT_EQ(std::string(small), full.substr(0, 7));
    EXPECT_EQ(lk_simt_last_error(nullptr, 0), (int64_t)full.size());

    // A failure on another thread leaves this thread's message alone.
    std::thread other([] { EXPECT_EQ(launch("lk_other_missing_kernel", {1}, {1}, 0), LK_ERR_NOT_FOUND); });
    other.join();
    EXPECT_EQ(last_error(), full);
}

// 1024 blocks x 256 threads, each thread passing 4 __syncthreads: about 1.3 million fiber switches
// (every thread but the last suspends at each barrier, and each exit switches once). Checks the
// results and prints the time; speed itself is not asserted (that is for benchmarks).
TEST_F(SimtLaunchTest, Throughput_1024blocks_256threads_4barriers) {
    const std::uint32_t blocks = 1024, threads = 256;
    int rounds = 2;  // two barriers per round
    std::vector<int> out(blocks * threads, -1);
    int* out_ptr = out.data();
    for (int workers : {1, 0}) {
        ASSERT_EQ(lk_simt_set_num_threads(workers), LK_OK);
        std::fill(out.begin(), out.end(), -1);
        const auto start = std::chrono::steady_clock::now();
        const std::clock_t cpu_start = std::clock();
        ASSERT_EQ(launch("simt_test_barrier_rounds", {blocks}, {threads}, 0, rounds, out_ptr), LK_OK) << last_error();
        const double cpu_seconds = (double)(std::clock() - cpu_start) / CLOCKS_PER_SEC;
        const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        for (std::size_t i = 0; i < out.size(); ++i) ASSERT_EQ(out[i], rounds) << "thread " << i;
        // CPU time is printed beside wall time because a shared machine stretches the latter.
        const double switches = (double)blocks * threads * (2 * rounds + 1);
        std::printf("[ simt ] %u blocks x %u threads, %d barriers each, %s workers: %.1f ms wall, %.1f ms CPU, "
                    "%.1f M fiber switches per CPU second\n",
                    blocks, threads, 2 * rounds, workers == 0 ? "default" : "1", seconds * 1e3, cpu_seconds * 1e3,
                    switches / cpu_seconds / 1e6);
    }
}

}  // namespace
}  // namespace simt_test
