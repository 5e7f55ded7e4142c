// warp_matrix.cpp: mma.sync.aligned.m16n8k16 (bf16 and f16 inputs, f32 accumulators, row.col) and
// ldmatrix.sync.aligned.m8n8{.x1,.x2,.x4}{.trans}.b16 for the emulator, from the fragment layouts of
// the PTX ISA (section 9.7.14.5.8, "Matrix Fragments for mma.m16n8k16 with floating point type", and
// 9.7.14.5.15, "ldmatrix"). Both are warp collectives: the last lane to arrive runs the instruction
// for the whole warp from every lane's registers and writes every lane's results.
//
// Fragments hold 16-bit elements two to a 32-bit register, the lower-numbered element in the low
// half. With groupID = lane >> 2 and threadID_in_group = lane % 4 (the ISA's names):
//   A (16 x 16, row), elements a0..a7 (register i/2):
//       row = groupID + 8 for a2, a3, a6, a7, else groupID;  col = 2·threadID_in_group + (i & 1) + 8 for i >= 4
//   B (16 x 8, col), elements b0..b3 (register i/2):
//       row = 2·threadID_in_group + (i & 1) + 8 for i >= 2;  col = groupID
//   C, D (16 x 8, f32), elements c0..c3:
//       row = groupID + 8 for c2, c3, else groupID;  col = 2·threadID_in_group + (i & 1)
//   ldmatrix: lanes 8j .. 8j+7 give the addresses of rows 0..7 of matrix j (16 bytes each); lane l's
//       register j holds row l/4, columns 2(l%4) and 2(l%4)+1 of matrix j, or with .trans the
//       transposed matrix's: rows 2(l%4) and 2(l%4)+1 of column l/4.
//
// Accumulation: the ISA fixes neither the order nor the intermediate precision of D = A·B + C. Every
// product of two bf16 (8-bit significands) or two f16 (11-bit) values is exact in fp32, so the
// emulator adds the exact products to C one at a time in k order, rounding each sum to nearest in
// fp32: one of the results an fp32 accumulation may give, within the K·2^-24 bound the parity tests
// allow for any order. Integer-valued inputs give the exact product under every order (the layout
// tests use them).
#include <cmath>
#include <cstdint>
#include <cstring>

#include "block.h"

namespace lk_simt {
namespace {

float bf16_value(std::uint16_t bits) {
    const std::uint32_t word = (std::uint32_t)bits << 16;
    float value;
    std::memcpy(&value, &word, sizeof value);
    return value;
}

// IEEE binary16 to float, exactly (subnormals, infinities and NaNs included).
float f16_value(std::uint16_t bits) {
    const int sign = bits >> 15, exponent = (bits >> 10) & 31, fraction = bits & 1023;
    float magnitude;
    if (exponent == 0) magnitude = std::ldexp((float)fraction, -24);
    else if (exponent == 31) magnitude = fraction == 0 ? INFINITY : NAN;
    else magnitude = std::ldexp((float)(fraction | 1024), exponent - 25);
    return sign ? -magnitude : magnitude;
}

std::uint16_t half_of(std::uint32_t word, int element) { return (std::uint16_t)(element & 1 ? word >> 16 : word & 0xffffu); }

const char* op_name(matrix_op op) {
    switch (op) {
        case matrix_op::mma_m16n8k16_bf16: return "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32";
        case matrix_op::mma_m16n8k16_f16: return "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32";
        case matrix_op::ldmatrix_m8n8_b16: return "ldmatrix.sync.aligned.m8n8.b16";
    }
    return "an unknown matrix instruction";
}

}  // namespace

void block_runner::complete_warp_matrix(warp_state& w, std::uint32_t warp_index, fiber& self) {
    warp_matrix_lane* lanes[32];
    for (int l = 0; l < 32; ++l) lanes[l] = reinterpret_cast<warp_matrix_lane*>(w.value[l]);
    const warp_matrix_lane& first = *lanes[0];
    for (int l = 1; l < 32; ++l) {
        const warp_matrix_lane& other = *lanes[l];
        if (other.op != first.op || other.matrices != first.matrices || other.transpose != first.transpose)
            fail_blockf(self, &fibers_[warp_index * 32 + l], LK_ERR_KERNEL_FAULT,
                        "executes %s (x%d%s) while lane 0 executes %s (x%d%s): every lane of the warp must execute the "
                        "same .aligned matrix instruction",
                        op_name(other.op), other.matrices, other.transpose ? ", .trans" : "", op_name(first.op),
                        first.matrices, first.transpose ? ", .trans" : "");
    }

    if (first.op == matrix_op::ldmatrix_m8n8_b16) {
        const int count = first.matrices;
        if (count != 1 && count != 2 && count != 4)
            fail_blockf(self, nullptr, LK_ERR_KERNEL_FAULT, "ldmatrix with .x%d: only .x1, .x2 and .x4 exist", count);
        // Rows of matrix j come from lanes 8j .. 8j+7; the other lanes' addresses are not read.
        std::uint16_t m[4][8][8];
        for (int j = 0; j < count; ++j)
            for (int r = 0; r < 8; ++r) {
                const int lane = 8 * j + r;
                const void* row = lanes[lane]->row_address;
                if ((reinterpret_cast<std::uintptr_t>(row) & 15u) != 0)
                    fail_blockf(self, &fibers_[warp_index * 32 + lane], LK_ERR_KERNEL_FAULT,
                                "ldmatrix row address %p is not 16-byte aligned", row);
                if (!in_shared(row, 16))
                    fail_blockf(self, &fibers_[warp_index * 32 + lane], LK_ERR_KERNEL_FAULT,
                                "ldmatrix row address %p is not in the block's shared memory", row);
                std::memcpy(m[j][r], row, 16);
            }
        for (int l = 0; l < 32; ++l)
            for (int j = 0; j < count; ++j) {
                const int r = l / 4, c = 2 * (l % 4);
                const std::uint16_t lo = first.transpose ? m[j][c][r] : m[j][r][c];
                const std::uint16_t hi = first.transpose ? m[j][c + 1][r] : m[j][r][c + 1];
                lanes[l]->words[j] = (std::uint32_t)lo | ((std::uint32_t)hi << 16);
            }
        return;
    }

    const bool bf16 = first.op == matrix_op::mma_m16n8k16_bf16;
    float a[16][16], b[16][8], c[16][8];
    for (int l = 0; l < 32; ++l) {
        const int group = l >> 2, in_group = l % 4;
        const warp_matrix_lane& lane = *lanes[l];
        for (int i = 0; i < 8; ++i) {
            const std::uint16_t h = half_of(lane.a[i / 2], i);
            const int row = group + ((i >> 1) & 1) * 8, col = 2 * in_group + (i & 1) + (i >= 4 ? 8 : 0);
            a[row][col] = bf16 ? bf16_value(h) : f16_value(h);
        }
        for (int i = 0; i < 4; ++i) {
            const std::uint16_t h = half_of(lane.b[i / 2], i);
            const int row = 2 * in_group + (i & 1) + (i >= 2 ? 8 : 0);
            b[row][group] = bf16 ? bf16_value(h) : f16_value(h);
        }
        for (int i = 0; i < 4; ++i) c[group + (i >= 2 ? 8 : 0)][2 * in_group + (i & 1)] = lane.c[i];
    }
    // Every lane's C was read above, so a lane whose D aliases its C is safe.
    for (int l = 0; l < 32; ++l) {
        const int group = l >> 2, in_group = l % 4;
        for (int i = 0; i < 4; ++i) {
            const int row = group + (i >= 2 ? 8 : 0), col = 2 * in_group + (i & 1);
            float sum = c[row][col];
            for (int k = 0; k < 16; ++k) sum += a[row][k] * b[k][col];
            lanes[l]->d[i] = sum;
        }
    }
}

}  // namespace lk_simt
