// The emulator's warp-matrix instructions against an independent table of the PTX ISA's fragment
// layouts (written here from the ISA, section 9.7.14.5.8 "Matrix Fragments for mma.m16n8k16 with
// floating point type" and 9.7.14.5.15 "ldmatrix", not from native/simt/warp_matrix.cpp): the host
// places each matrix element in the lane and register the ISA names, runs the instruction, and reads
// every lane's result back through the same table. Values are small integers, so every product and
// sum is exact in fp32 under any accumulation order and the comparisons are exact. Then the
// cp.async groups and zero fill, a whole cp.async -> ldmatrix -> mma tile, and each misuse the
// emulator must report.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "simt_test_util.h"

namespace simt_test {
namespace {

// ---- the PTX ISA's tables, as the ISA states them ------------------------------------------------
// groupID = %laneid >> 2, threadID_in_group = %laneid % 4.
struct Cell {
    int row, col;
};

// Multiplicand A (.bf16/.f16, 16 x 16): a0..a7, two per .b32 register (register i / 2, low half first).
//   row = groupID for ai where 0 <= i < 2 || 4 <= i < 6; groupID + 8 otherwise
//   col = threadID_in_group * 2 + (i & 1) for ai where i < 4; threadID_in_group * 2 + (i & 1) + 8 for i >= 4
Cell IsaA(int lane, int i) {
    const int groupID = lane >> 2, threadID_in_group = lane % 4;
    const int row = ((0 <= i && i < 2) || (4 <= i && i < 6)) ? groupID : groupID + 8;
    const int col = i < 4 ? threadID_in_group * 2 + (i & 0x1) : threadID_in_group * 2 + (i & 0x1) + 8;
    return {row, col};
}

// Multiplicand B (.bf16/.f16, 16 x 8): b0..b3.
//   row = threadID_in_group * 2 + (i & 1) for bi where i < 2; threadID_in_group * 2 + (i & 1) + 8 for i >= 2
//   col = groupID
Cell IsaB(int lane, int i) {
    const int groupID = lane >> 2, threadID_in_group = lane % 4;
    const int row = i < 2 ? threadID_in_group * 2 + (i & 0x1) : threadID_in_group * 2 + (i & 0x1) + 8;
    return {row, groupID};
}

// Accumulators C / D (.f32, 16 x 8): c0..c3.
//   row = groupID for c0 and c1; groupID + 8 for c2 and c3
//   col = threadID_in_group * 2 + (i & 0x1)
Cell IsaC(int lane, int i) {
    const int groupID = lane >> 2, threadID_in_group = lane % 4;
    return {i < 2 ? groupID : groupID + 8, threadID_in_group * 2 + (i & 0x1)};
}

// ldmatrix .m8n8 .b16: thread t of the warp receives, in the register of each matrix, row t / 4 and
// the two consecutive elements starting at column 2 * (t % 4); with .trans the matrix is read
// column-major, so the same position of the transposed matrix. Addresses: threads 0-7 give the rows of
// the first matrix, 8-15 of the second, 16-23 of the third, 24-31 of the fourth.
Cell IsaLdmatrix(int lane, int element, bool transpose) {
    const int row = lane / 4, col = 2 * (lane % 4) + element;
    return transpose ? Cell{col, row} : Cell{row, col};
}

// ---- bf16 and f16 bits of small integers (exact in both) -----------------------------------------
uint16_t Bf16(float v) {
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    return (uint16_t)(bits >> 16);  // exact for these values: the low 16 bits are zero
}

uint16_t F16(float v) {
    // v is an integer with |v| <= 2048: exactly representable.
    if (v == 0.0f) return std::signbit(v) ? 0x8000 : 0;
    const uint16_t sign = v < 0 ? 0x8000 : 0;
    int exponent;
    const float fraction = std::frexp(std::fabs(v), &exponent);  // |v| = fraction·2^exponent, fraction in [0.5, 1)
    const uint16_t mantissa = (uint16_t)std::lround((fraction * 2.0f - 1.0f) * 1024.0f);
    return (uint16_t)(sign | ((exponent - 1 + 15) << 10) | mantissa);
}

void SetHalf(std::vector<unsigned>& words, size_t word, int half, uint16_t bits) {
    words[word] = half == 0 ? (words[word] & 0xffff0000u) | bits : (words[word] & 0x0000ffffu) | ((unsigned)bits << 16);
}

uint16_t GetHalf(unsigned word, int element) { return (uint16_t)(element & 1 ? word >> 16 : word & 0xffffu); }

// ---- mma ---------------------------------------------------------------------------------------------
// Runs simt_test_mma on `warps` warps' registers (a: 4 words a lane, b: 2, c: 4 floats); returns each lane's D.
std::vector<float> RunMma(const std::vector<unsigned>& a, const std::vector<unsigned>& b, const std::vector<float>& c,
                          bool f16, uint32_t warps = 1) {
    std::vector<float> d(c.size(), NAN);
    const unsigned* a_ptr = a.data();
    const unsigned* b_ptr = b.data();
    const float* c_ptr = c.data();
    float* d_ptr = d.data();
    int f16_flag = f16 ? 1 : 0;
    EXPECT_EQ(launch("simt_test_mma", {1}, {32 * warps}, 0, a_ptr, b_ptr, c_ptr, d_ptr, f16_flag), LK_OK) << last_error();
    return d;
}

struct MmaCase {
    bool f16;
    uint32_t seed;
};

class WarpMma : public ::testing::TestWithParam<MmaCase> {};

TEST_P(WarpMma, EqualsTheMatrixProductThroughTheIsaLayouts) {
    const MmaCase p = GetParam();
    std::mt19937 rng(p.seed);
    std::uniform_int_distribution<int> small(-8, 8);
    float A[16][16], B[16][8], C[16][8];
    for (auto& row : A)
        for (float& v : row) v = (float)small(rng);
    for (auto& row : B)
        for (float& v : row) v = (float)small(rng);
    for (auto& row : C)
        for (float& v : row) v = (float)(small(rng) * 16);

    std::vector<unsigned> a(32 * 4, 0), b(32 * 2, 0);
    std::vector<float> c(32 * 4);
    for (int lane = 0; lane < 32; ++lane) {
        for (int i = 0; i < 8; ++i) {
            const Cell e = IsaA(lane, i);
            const float v = A[e.row][e.col];
            SetHalf(a, (size_t)lane * 4 + i / 2, i % 2, p.f16 ? F16(v) : Bf16(v));
        }
        for (int i = 0; i < 4; ++i) {
            const Cell e = IsaB(lane, i);
            const float v = B[e.row][e.col];
            SetHalf(b, (size_t)lane * 2 + i / 2, i % 2, p.f16 ? F16(v) : Bf16(v));
        }
        for (int i = 0; i < 4; ++i) c[(size_t)lane * 4 + i] = C[IsaC(lane, i).row][IsaC(lane, i).col];
    }
    const std::vector<float> d = RunMma(a, b, c, p.f16);

    int nonzero = 0;
    for (int lane = 0; lane < 32; ++lane)
        for (int i = 0; i < 4; ++i) {
            const Cell e = IsaC(lane, i);
            float want = C[e.row][e.col];
            for (int k = 0; k < 16; ++k) want += A[e.row][k] * B[k][e.col];
            EXPECT_EQ(d[(size_t)lane * 4 + i], want) << "lane " << lane << " d" << i << " = D[" << e.row << "][" << e.col << "]";
            nonzero += want != 0.0f;
        }
    EXPECT_GT(nonzero, 100) << "the product is mostly non-zero, so a misplaced element shows";
}

INSTANTIATE_TEST_SUITE_P(Simt, WarpMma,
                         ::testing::Values(MmaCase{false, 1}, MmaCase{false, 2}, MmaCase{true, 3}, MmaCase{true, 4}),
                         [](const ::testing::TestParamInfo<MmaCase>& info) {
                             return std::string(info.param.f16 ? "f16" : "bf16") + "_seed" + std::to_string(info.param.seed);
                         });

// A single element per matrix, everything else zero: D is one row of B (or one column of A), so a
// swapped row or column lands in a visibly wrong cell (checks every (row, k) of A and (k, col) of B).
TEST(WarpMma, EveryFragmentPositionReachesItsCell) {
    for (int probe = 0; probe < 16 * 16 + 16 * 8; ++probe) {
        float A[16][16] = {}, B[16][8] = {};
        // One A element is 1 against B[k][n] = (k+1)(n+1), so D's non-zero row is A's row and its values
        // name A's column; or one B element is 1 against A[m][k] = (m+1)(k+1), so D's non-zero column is
        // B's column and its values name B's row. (Products up to 256: exact in bf16.)
        if (probe < 256) {
            A[probe / 16][probe % 16] = 1.0f;
            for (int k = 0; k < 16; ++k)
                for (int n = 0; n < 8; ++n) B[k][n] = (float)((k + 1) * (n + 1));
        } else {
            const int q = probe - 256;
            B[q / 8][q % 8] = 1.0f;
            for (int m = 0; m < 16; ++m)
                for (int k = 0; k < 16; ++k) A[m][k] = (float)((m + 1) * (k + 1));
        }
        std::vector<unsigned> a(128, 0), b(64, 0);
        const std::vector<float> c(128, 0.0f);
        for (int lane = 0; lane < 32; ++lane) {
            for (int i = 0; i < 8; ++i) SetHalf(a, (size_t)lane * 4 + i / 2, i % 2, Bf16(A[IsaA(lane, i).row][IsaA(lane, i).col]));
            for (int i = 0; i < 4; ++i) SetHalf(b, (size_t)lane * 2 + i / 2, i % 2, Bf16(B[IsaB(lane, i).row][IsaB(lane, i).col]));
        }
        const std::vector<float> d = RunMma(a, b, c, false);
        for (int lane = 0; lane < 32; ++lane)
            for (int i = 0; i < 4; ++i) {
                const Cell e = IsaC(lane, i);
                float want = 0.0f;
                for (int k = 0; k < 16; ++k) want += A[e.row][k] * B[k][e.col];
                ASSERT_EQ(d[(size_t)lane * 4 + i], want) << "probe " << probe << ", lane " << lane << ", d" << i;
            }
    }
}

// Two warps of one block each run their own mma on their own registers.
TEST(WarpMma, EachWarpOfABlockMultipliesItsOwnFragments) {
    std::vector<unsigned> a(64 * 4), b(64 * 2);
    const std::vector<float> c(64 * 4, 0.0f);
    for (int warp = 0; warp < 2; ++warp)
        for (int lane = 0; lane < 32; ++lane) {
            const unsigned one = Bf16(1.0f), value = Bf16((float)(warp + 2));
            for (int r = 0; r < 4; ++r) a[(size_t)(warp * 32 + lane) * 4 + r] = one | (one << 16);
            for (int r = 0; r < 2; ++r) b[(size_t)(warp * 32 + lane) * 2 + r] = value | (value << 16);
        }
    const std::vector<float> d = RunMma(a, b, c, false, 2);
    for (int warp = 0; warp < 2; ++warp)
        for (int i = 0; i < 32 * 4; ++i) EXPECT_EQ(d[(size_t)warp * 128 + i], 16.0f * (warp + 2)) << "warp " << warp;
}

// ---- ldmatrix -----------------------------------------------------------------------------------------
struct LdmatrixCase {
    int count;
    bool transpose;
};

class WarpLdmatrix : public ::testing::TestWithParam<LdmatrixCase> {};

// The matrices' rows sit at scattered shared rows (a permutation with unused rows between), so a lane
// reading the wrong address, or the wrong lane's address, shows.
TEST_P(WarpLdmatrix, EachLaneGetsTheIsaElements) {
    const LdmatrixCase p = GetParam();
    int shared_rows = 64;
    std::vector<int> slots(shared_rows);
    std::iota(slots.begin(), slots.end(), 0);
    std::shuffle(slots.begin(), slots.end(), std::mt19937(7));
    // Matrix j row r lives at shared row slots[8j + r]; element (r, c) of matrix j is 1000·j + 10·r + c.
    std::vector<unsigned short> rows((size_t)shared_rows * 8, 0xbeef);
    for (int j = 0; j < p.count; ++j)
        for (int r = 0; r < 8; ++r)
            for (int c = 0; c < 8; ++c) rows[(size_t)slots[8 * j + r] * 8 + c] = (unsigned short)(1000 * j + 10 * r + c);
    // Lanes 8j .. 8j+7 address matrix j's rows; the other lanes (.x1, .x2) point at a row of junk,
    // which the instruction must not read.
    std::vector<int> row_of_lane(32);
    for (int lane = 0; lane < 32; ++lane) row_of_lane[lane] = lane < 8 * p.count ? slots[lane] : slots[63 - lane];
    std::vector<unsigned> words(32 * 4, 0xffffffffu);
    const unsigned short* rows_ptr = rows.data();
    const int* lanes_ptr = row_of_lane.data();
    unsigned* words_ptr = words.data();
    int count = p.count, transpose = p.transpose ? 1 : 0;
    ASSERT_EQ(launch("simt_test_ldmatrix", {1}, {32}, 0, rows_ptr, shared_rows, lanes_ptr, words_ptr, count, transpose), LK_OK)
        << last_error();
    for (int lane = 0; lane < 32; ++lane)
        for (int j = 0; j < p.count; ++j)
            for (int element = 0; element < 2; ++element) {
                const Cell e = IsaLdmatrix(lane, element, p.transpose);
                EXPECT_EQ(GetHalf(words[(size_t)lane * 4 + j], element), 1000 * j + 10 * e.row + e.col)
                    << "lane " << lane << ", matrix " << j << ", element " << element;
            }
}

INSTANTIATE_TEST_SUITE_P(Simt, WarpLdmatrix,
                         ::testing::Values(LdmatrixCase{1, false}, LdmatrixCase{1, true}, LdmatrixCase{2, false},
                                           LdmatrixCase{2, true}, LdmatrixCase{4, false}, LdmatrixCase{4, true}),
                         [](const ::testing::TestParamInfo<LdmatrixCase>& info) {
                             return "x" + std::to_string(info.param.count) + (info.param.transpose ? "_trans" : "");
                         });

// ---- a whole tile: cp.async into shared, ldmatrix, mma ------------------------------------------------
class WarpTile : public ::testing::TestWithParam<bool> {};

TEST_P(WarpTile, CpAsyncLdmatrixMmaComputesTheProduct) {
    const bool b_n_contiguous = GetParam();
    std::mt19937 rng(11);
    std::uniform_int_distribution<int> small(-6, 6);
    float A[16][16], B[16][8];
    for (auto& row : A)
        for (float& v : row) v = (float)small(rng);
    for (auto& row : B)
        for (float& v : row) v = (float)small(rng);
    // 16-byte aligned global copies: A row-major [16][16]; B as [n][k] or [k][n].
    alignas(16) uint16_t a[16 * 16];
    alignas(16) uint16_t b[16 * 8];
    for (int m = 0; m < 16; ++m)
        for (int k = 0; k < 16; ++k) a[m * 16 + k] = Bf16(A[m][k]);
    for (int k = 0; k < 16; ++k)
        for (int n = 0; n < 8; ++n) b[b_n_contiguous ? k * 8 + n : n * 16 + k] = Bf16(B[k][n]);
    std::vector<float> d(32 * 4, NAN);
    const uint16_t* a_ptr = a;
    const uint16_t* b_ptr = b;
    int layout = b_n_contiguous ? 1 : 0;
    float* d_ptr = d.data();
    ASSERT_EQ(launch("simt_test_cp_async_ldmatrix_mma", {1}, {32}, 0, a_ptr, b_ptr, layout, d_ptr), LK_OK) << last_error();
    for (int lane = 0; lane < 32; ++lane)
        for (int i = 0; i < 4; ++i) {
            const Cell e = IsaC(lane, i);
            float want = 0.0f;
            for (int k = 0; k < 16; ++k) want += A[e.row][k] * B[k][e.col];
            EXPECT_EQ(d[(size_t)lane * 4 + i], want) << "lane " << lane << " d" << i;
        }
}

INSTANTIATE_TEST_SUITE_P(Simt, WarpTile, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& info) { return info.param ? "B_n_contiguous_trans" : "B_k_contiguous"; });

// ---- cp.async ------------------------------------------------------------------------------------------
// A group completes at the wait that covers it, not before (the emulator performs it there, so a read
// before the wait sees the old bytes), groups complete oldest first, and src_bytes < 16 zero-fills.
TEST(CpAsync, GroupsCompleteAtTheirWaitInOrderAndZeroFill) {
    alignas(16) unsigned src[12] = {0x11111111u, 2, 3, 4, 0x22222222u, 6, 7, 8, 0x33333333u, 10, 11, 12};
    std::vector<unsigned> seen(13, 0);
    const unsigned* src_ptr = src;
    unsigned* seen_ptr = seen.data();
    ASSERT_EQ(launch("simt_test_cp_async_groups", {1}, {32}, 0, src_ptr, seen_ptr), LK_OK) << last_error();
    const unsigned old = 0xdeadbeefu;
    EXPECT_EQ(seen[0], src[0]) << "wait_group 2 of 3: the oldest group is done";
    EXPECT_EQ(seen[1], old) << "wait_group 2 of 3: the second is still in flight";
    EXPECT_EQ(seen[2], old);
    EXPECT_EQ(seen[3], src[0]);
    EXPECT_EQ(seen[4], src[4]) << "wait_group 1: the two oldest are done";
    EXPECT_EQ(seen[5], old);
    EXPECT_EQ(seen[6], src[0]);
    EXPECT_EQ(seen[7], src[4]);
    EXPECT_EQ(seen[8], src[8]) << "wait_group 0: all done";
    EXPECT_EQ(seen[9], src[0]) << "5 of 16 bytes copied, the rest zero";
    EXPECT_EQ(seen[10], src[1] & 0xffu);
    EXPECT_EQ(seen[11], 0u);
    EXPECT_EQ(seen[12], 0u);
}

// ---- misuse ----------------------------------------------------------------------------------------------
TEST(WarpMatrixMisuse, CopyNeverWaitedForFaults) {
    alignas(16) unsigned src[4] = {1, 2, 3, 4};
    const unsigned* src_ptr = src;
    expect_failure(launch("simt_test_cp_async_never_waited", {1}, {32}, 0, src_ptr), LK_ERR_KERNEL_FAULT,
                   {"exited with 1 cp.async copies never waited for", "thread (0,0,0)"});
    expect_normal_launch_works();
}

TEST(WarpMatrixMisuse, CopyToGlobalMemoryFaults) {
    alignas(16) unsigned src[4] = {1, 2, 3, 4};
    alignas(16) unsigned out[4] = {};
    const unsigned* src_ptr = src;
    unsigned* out_ptr = out;
    expect_failure(launch("simt_test_cp_async_to_global", {1}, {32}, 0, src_ptr, out_ptr), LK_ERR_KERNEL_FAULT,
                   {"cp.async to", "not in the block's shared memory"});
    expect_normal_launch_works();
}

TEST(WarpMatrixMisuse, MisalignedCopyFaults) {
    alignas(16) unsigned src[4] = {1, 2, 3, 4};
    const unsigned* src_ptr = src;
    expect_failure(launch("simt_test_cp_async_misaligned", {1}, {32}, 0, src_ptr), LK_ERR_KERNEL_FAULT,
                   {"16-byte aligned"});
    expect_normal_launch_works();
}

TEST(WarpMatrixMisuse, LdmatrixRowOutsideSharedMemoryFaultsNamingTheLane) {
    alignas(16) unsigned short rows[64] = {};
    const unsigned short* rows_ptr = rows;
    expect_failure(launch("simt_test_ldmatrix_global_row", {1}, {32}, 0, rows_ptr), LK_ERR_KERNEL_FAULT,
                   {"ldmatrix row address", "not in the block's shared memory", "lane 5"});
    expect_normal_launch_works();
}

TEST(WarpMatrixMisuse, LanesAtDifferentLdmatrixShapesFault) {
    expect_failure(launch("simt_test_ldmatrix_mixed_shapes", {1}, {32}, 0), LK_ERR_KERNEL_FAULT,
                   {"ldmatrix", "x4", "x2", "same .aligned matrix instruction"});
    expect_normal_launch_works();
}

TEST(WarpMatrixMisuse, MmaInAPartialWarpFaults) {
    expect_failure(launch("simt_test_mma_partial_warp", {1}, {16}, 0), LK_ERR_KERNEL_FAULT,
                   {"warp-wide matrix instruction", "names lanes that do not exist"});
    expect_normal_launch_works();
}

}  // namespace
}  // namespace simt_test
