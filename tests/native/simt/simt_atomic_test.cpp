// Atomics from many blocks running in parallel on several worker threads (they must be real
// atomics): exact integer results for add/sub/min/max/CAS/exchange, float and double sums within
// an accumulation bound, and a block-shared atomic counter.
#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <climits>
#include <cmath>
#include <string>

#include "simt_test_util.h"

namespace simt_test {
namespace {

// Mirrors the kernel's parameter struct (simt_test_kernels.cu): passed by value.
struct atomic_targets {
    int* add_i;
    unsigned* add_u;
    unsigned long long* add_u64;
    float* add_f;
    double* add_d;
    int* sub_i;
    unsigned* sub_u;
    int* max_i;
    unsigned* max_u;
    int* min_i;
    unsigned* min_u;
    int* cas_i;
    unsigned* cas_u;
    unsigned long long* cas_u64;
    int* exch_i_slot;
    long long* exch_i_returned;
    unsigned* exch_u_slot;
    float* exch_f_slot;
    double* exch_f_returned;
    int* shared_total;
};

class SimtAtomicTest : public ::testing::TestWithParam<int> {
protected:
    void TearDown() override { ASSERT_EQ(lk_simt_set_num_threads(0), LK_OK); }
};

TEST_P(SimtAtomicTest, ManyBlocksGiveExactCounts_64blocks_128threads) {
    ASSERT_EQ(lk_simt_set_num_threads(GetParam()), LK_OK);
    const std::uint32_t blocks = 64, threads = 128;
    const long long n = (long long)blocks * threads;

    int add_i = 5, sub_i = 1000000, max_i = INT_MIN, min_i = INT_MAX, cas_i = 0, exch_i = -7, shared_total = 0;
    unsigned add_u = 1, sub_u = 4000000000u, max_u = 0, min_u = UINT_MAX, cas_u = 0, exch_u = 0;
    unsigned long long add_u64 = 0, cas_u64 = 0;
    float add_f = 0.0f, exch_f = -1.0f;
    double add_d = 0.0, exch_f_returned = 0.0;
    long long exch_i_returned = 0;
    atomic_targets targets{&add_i, &add_u, &add_u64, &add_f, &add_d,  &sub_i,          &sub_u,
                           &max_i, &max_u, &min_i,   &min_u, &cas_i,  &cas_u,          &cas_u64,
                           &exch_i, &exch_i_returned, &exch_u, &exch_f, &exch_f_returned, &shared_total};
    ASSERT_EQ(launch("simt_test_atomics", {blocks}, {threads}, 0, targets), LK_OK) << last_error();

    unsigned long long expected_u64 = 0;
    double expected_sum = 0.0, sum_abs = 0.0;
    int expected_max = INT_MIN, expected_min = INT_MAX;
    long long sum_ids = 0;
    for (long long g = 0; g < n; ++g) {
        expected_u64 += (1ull << 33) + (unsigned long long)g;
        const double v = 1.0 / (double)(1 + g % 10);
        expected_sum += v;
        sum_abs += std::fabs(v);
        const int key = (int)((g * 7919) % 100003) - 50000;
        expected_max = std::max(expected_max, key);
        expected_min = std::min(expected_min, key);
        sum_ids += g;
    }
    EXPECT_EQ(add_i, 5 + n);
    EXPECT_EQ(add_u, 1u + 3u * (unsigned)n);
    EXPECT_EQ(add_u64, expected_u64);
    // fp32 accumulation of n terms in any order: |error| <= n * FLT_EPSILON / 2 * sum |v| (plus a floor).
    EXPECT_NEAR(add_f, expected_sum, 1e-6 + n * (double)FLT_EPSILON / 2 * sum_abs);
    EXPECT_NEAR(add_d, expected_sum, 1e-12 + n * DBL_EPSILON / 2 * sum_abs);
    EXPECT_EQ(sub_i, 1000000 - 2 * n);
    EXPECT_EQ(sub_u, 4000000000u - 5u * (unsigned)n);
    EXPECT_EQ(max_i, expected_max);
    EXPECT_EQ(max_u, (unsigned)(expected_max + 50000));
    EXPECT_EQ(min_i, expected_min);
    EXPECT_EQ(min_u, (unsigned)(expected_min + 50000));
    EXPECT_EQ(cas_i, n);
    EXPECT_EQ(cas_u, 2u * (unsigned)n);
    EXPECT_EQ(cas_u64, (unsigned long long)n << 32);
    // Every exchanged value comes back exactly once: what the exchanges returned plus what is
    // left in the slot is the initial value plus every thread's id.
    EXPECT_EQ(exch_i_returned + exch_i, -7 + sum_ids);
    EXPECT_LT(exch_u, (unsigned)n);
    EXPECT_EQ(exch_f_returned + (double)exch_f, -1.0 + (double)sum_ids);
    EXPECT_EQ(shared_total, n);
}

INSTANTIATE_TEST_SUITE_P(Workers, SimtAtomicTest, ::testing::Values(1, 4),
                         [](const ::testing::TestParamInfo<int>& info) {
                             return std::to_string(info.param) + "workers";
                         });

}  // namespace
}  // namespace simt_test
