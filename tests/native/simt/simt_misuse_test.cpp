// Misuse the emulator must report, each with the right status and a message naming the problem,
// never a hang or a crash; after each, a normal launch must still work.
#include <gtest/gtest.h>

#include <vector>

#include "simt_test_util.h"

namespace simt_test {
namespace {

class SimtMisuseTest : public ::testing::Test {
protected:
    void TearDown() override {
        expect_normal_launch_works();
        ASSERT_EQ(lk_simt_set_num_threads(0), LK_OK);
    }
    std::vector<int> ints_ = std::vector<int>(1024, 0);
    std::vector<float> floats_ = std::vector<float>(1024, 0.0f);
    std::vector<unsigned> uints_ = std::vector<unsigned>(1024, 0);
};

TEST_F(SimtMisuseTest, BarrierInDivergentBranch_32threads) {
    expect_failure(launch("simt_test_misuse_divergent_barrier", {1}, {32}, 0), LK_ERR_KERNEL_FAULT,
                   {"simt_test_misuse_divergent_barrier", "block (0,0,0)", "thread (16,0,0)", "exited while 16",
                    "__syncthreads"});
}

TEST_F(SimtMisuseTest, EarlyExitWhileOthersWaitAtBarrier_64threads) {
    int leaver = 40;
    expect_failure(launch("simt_test_misuse_early_exit", {2}, {64}, 0, leaver), LK_ERR_KERNEL_FAULT,
                   {"thread (40,0,0)", "exited while 40 other threads wait at __syncthreads"});
}

TEST_F(SimtMisuseTest, BarrierAfterAnotherThreadExited_64threads) {
    // Thread 0 runs first and leaves; every later thread reaches the barrier without it.
    int leaver = 0;
    expect_failure(launch("simt_test_misuse_early_exit", {1}, {64}, 0, leaver), LK_ERR_KERNEL_FAULT,
                   {"thread (1,0,0)", "reached __syncthreads after thread (0,0,0)", "exited"});
}

TEST_F(SimtMisuseTest, BarrierWhileWarpWaitsAtShuffle_32threads) {
    int* out = ints_.data();
    expect_failure(launch("simt_test_misuse_barrier_vs_shuffle", {1}, {32}, 0, out), LK_ERR_KERNEL_FAULT,
                   {"__shfl_sync(mask 0xffffffff) waits for lane 0, which waits at __syncthreads"});
}

TEST_F(SimtMisuseTest, CollectiveMissingALane_32threads) {
    int missing = 7;
    float* out = floats_.data();
    expect_failure(launch("simt_test_misuse_missing_lane", {1}, {32}, 0, missing, out), LK_ERR_KERNEL_FAULT,
                   {"thread (7,0,0)", "exited while lane 0 waits for it at __shfl_xor_sync(mask 0xffffffff)"});
}

TEST_F(SimtMisuseTest, OwnLaneNotInMask_32threads) {
    int* out = ints_.data();
    expect_failure(launch("simt_test_misuse_own_lane", {1}, {32}, 0, out), LK_ERR_KERNEL_FAULT,
                   {"thread (0,0,0)", "__shfl_sync with mask 0xfffffffe, which does not include the calling lane 0"});
}

TEST_F(SimtMisuseTest, LanesMeetAtDifferentCollectives_32threads) {
    unsigned* out = uints_.data();
    expect_failure(launch("simt_test_misuse_mismatched_kinds", {1}, {32}, 0, out), LK_ERR_KERNEL_FAULT,
                   {"thread (1,0,0)", "__any_sync(mask 0xffffffff) while lane 0 waits for it at __ballot_sync",
                    "same collective"});
}

TEST_F(SimtMisuseTest, LanesMeetWithDifferentMasks_32threads) {
    expect_failure(launch("simt_test_misuse_mismatched_masks", {1}, {32}, 0), LK_ERR_KERNEL_FAULT,
                   {"thread (1,0,0)", "__syncwarp(mask 0x00000007) while lane 0 waits for it at __syncwarp(mask 0x00000003)"});
}

TEST_F(SimtMisuseTest, FullMaskInPartialWarp_20threads) {
    float* out = floats_.data();
    expect_failure(launch("simt_test_misuse_partial_warp_sum", {1}, {20}, 0, out), LK_ERR_KERNEL_FAULT,
                   {"__shfl_xor_sync with mask 0xffffffff names lanes that do not exist", "20 lanes"});
}

TEST_F(SimtMisuseTest, MaskNamesExitedLane_32threads) {
    int* out = ints_.data();
    expect_failure(launch("simt_test_misuse_exited_lane", {1}, {32}, 0, out), LK_ERR_KERNEL_FAULT,
                   {"thread (1,0,0)", "names lane 0, which has exited"});
}

TEST_F(SimtMisuseTest, ShuffleWidthNotPowerOfTwo_32threads) {
    int* out = ints_.data();
    expect_failure(launch("simt_test_misuse_bad_width", {1}, {32}, 0, out), LK_ERR_KERNEL_FAULT,
                   {"width 12", "power of two"});
}

TEST_F(SimtMisuseTest, TrapNamesBlockAndThread_8blocks_64threads) {
    int started = 0;
    int trap_a = 2, trap_b = 2, trap_thread = 3;
    int* started_ptr = &started;
    expect_failure(launch("simt_test_trap", {8}, {64}, 0, started_ptr, trap_a, trap_b, trap_thread),
                   LK_ERR_KERNEL_FAULT, {"simt_test_trap", "block (2,0,0)", "thread (3,0,0)", "__trap()"});
}

TEST_F(SimtMisuseTest, KernelExceptionBecomesInternalError) {
    int throwing_thread = 5;
    expect_failure(launch("simt_test_throw", {1}, {32}, 0, throwing_thread), LK_ERR_INTERNAL,
                   {"thread (5,0,0)", "C++ exception", "thrown by simt_test_throw"});
}

TEST_F(SimtMisuseTest, StaticSharedOverLimit) {
    float* out = floats_.data();
    expect_failure(launch("simt_test_static_shared_over_limit", {1}, {32}, 0, out), LK_ERR_KERNEL_FAULT,
                   {"static shared memory", "49156 bytes exceeds the limit of 49152"});
}

TEST_F(SimtMisuseTest, StaticPlusDynamicSharedOverLimit) {
    float* out = floats_.data();
    const std::uint32_t dynamic = LK_SIMT_MAX_DYNAMIC_SHARED_BYTES - 1024;
    expect_failure(launch("simt_test_static_shared_at_limit", {1}, {32}, dynamic, out), LK_ERR_KERNEL_FAULT,
                   {"static (49152 bytes) plus dynamic", "exceeds the limit"});
}

TEST_F(SimtMisuseTest, ZeroThreads) {
    expect_failure(launch("simt_test_no_params", {1}, {0, 1, 1}, 0), LK_ERR_INVALID_ARGUMENT,
                   {"simt_test_no_params", "block (0,1,1)"});
    expect_failure(launch("simt_test_no_params", {1}, {4, 1, 0}, 0), LK_ERR_INVALID_ARGUMENT, {"block (4,1,0)"});
}

TEST_F(SimtMisuseTest, TooManyThreads_1025and32x32x2) {
    expect_failure(launch("simt_test_no_params", {1}, {1025}, 0), LK_ERR_INVALID_ARGUMENT,
                   {"block (1025,1,1) has 1025 threads", "at most 1024"});
    expect_failure(launch("simt_test_no_params", {1}, {32, 32, 2}, 0), LK_ERR_INVALID_ARGUMENT,
                   {"has 2048 threads"});
    expect_failure(launch("simt_test_no_params", {1}, {1, 1, 65}, 0), LK_ERR_INVALID_ARGUMENT, {"block (1,1,65)"});
}

TEST_F(SimtMisuseTest, BadGrid) {
    expect_failure(launch("simt_test_no_params", {0}, {32}, 0), LK_ERR_INVALID_ARGUMENT, {"grid (0,1,1)"});
    expect_failure(launch("simt_test_no_params", {1, 65536, 1}, {32}, 0), LK_ERR_INVALID_ARGUMENT,
                   {"grid (1,65536,1)"});
    expect_failure(launch("simt_test_no_params", {1, 1, 65536}, {32}, 0), LK_ERR_INVALID_ARGUMENT,
                   {"grid (1,1,65536)"});
}

TEST_F(SimtMisuseTest, TooMuchDynamicShared) {
    expect_failure(launch("simt_test_no_params", {1}, {32}, LK_SIMT_MAX_DYNAMIC_SHARED_BYTES + 1),
                   LK_ERR_INVALID_ARGUMENT, {"232449 bytes of dynamic shared memory", "LK_SIMT_MAX_DYNAMIC_SHARED_BYTES"});
}

TEST_F(SimtMisuseTest, UnknownKernelName) {
    expect_failure(launch("lk_no_such_kernel", {1}, {32}, 0), LK_ERR_NOT_FOUND,
                   {"no kernel named 'lk_no_such_kernel'"});
    expect_failure(lk_simt_launch(nullptr, 1, 1, 1, 32, 1, 1, 0, nullptr), LK_ERR_INVALID_ARGUMENT,
                   {"kernel name is NULL"});
}

TEST_F(SimtMisuseTest, MissingArguments) {
    expect_failure(lk_simt_launch("simt_test_block_sum", 1, 1, 1, 32, 1, 1, 0, nullptr), LK_ERR_INVALID_ARGUMENT,
                   {"args is NULL but the kernel takes 3 parameters"});
    float* in = floats_.data();
    void* args[] = {&in, nullptr, nullptr};
    expect_failure(lk_simt_launch("simt_test_block_sum", 1, 1, 1, 32, 1, 1, 0, args), LK_ERR_INVALID_ARGUMENT,
                   {"args[1] is NULL"});
}

TEST_F(SimtMisuseTest, KernelRegisteredTwice) {
    expect_failure(launch("simt_test_registered_twice", {1}, {1}, 0), LK_ERR_INTERNAL,
                   {"two modules register a kernel of this name"});
}

TEST_F(SimtMisuseTest, LaunchFromInsideAKernelIsRefused) {
    std::vector<int> status(3, -1);
    int* status_ptr = status.data();
    ASSERT_EQ(launch("simt_test_nested_launch", {3}, {32}, 0, status_ptr), LK_OK) << last_error();
    for (int s : status) EXPECT_EQ(s, LK_ERR_UNSUPPORTED);
}

// The largest valid geometry in each direction is accepted (the limits are not off by one).
TEST_F(SimtMisuseTest, LimitsThemselvesAreAccepted) {
    EXPECT_EQ(launch("simt_test_no_params", {1}, {1024}, 0), LK_OK) << last_error();
    EXPECT_EQ(launch("simt_test_no_params", {1}, {1, 1024, 1}, 0), LK_OK) << last_error();
    EXPECT_EQ(launch("simt_test_no_params", {1}, {1, 16, 64}, 0), LK_OK) << last_error();
    EXPECT_EQ(launch("simt_test_no_params", {1, 65535, 1}, {1}, 0), LK_OK) << last_error();
    EXPECT_EQ(launch("simt_test_no_params", {1}, {32}, LK_SIMT_MAX_DYNAMIC_SHARED_BYTES), LK_OK) << last_error();
    EXPECT_EQ(lk_simt_launch("simt_test_no_params", 1, 1, 1, 32, 1, 1, 0, nullptr), LK_OK) << last_error();
}

}  // namespace
}  // namespace simt_test
