// gemm.h: the packed SGEMM engine every matrix product of the CPU library goes through.
//
//   C[M, N] = dropout_C(alpha * L * R) + beta * C + bias
//
// where L [M, K] and R [K, N] are each up to two strided pieces concatenated along K. That one
// form covers the fused LoRA products: the forward's [x | s*u] * [W0^T ; B^T] writes y once, the
// backward's [dy | du] * [W0 ; A] writes dx once, and transposes, scales and the input dropout
// mask are applied while packing, so no operand is ever copied or transformed beforehand.
#pragma once

#include <cstdint>

namespace lk::cpu {

// One piece of an operand: logical element (row, col) is
//   scale * data[row * row_stride + col * col_stride] * dropout(offset),
// with dropout(offset) = lk_dropout_factor(dropout_seed, offset, dropout_p) where offset is that
// same element offset (the mask index of a dense [M, in] activation), or 1 when dropout_p == 0.
struct OperandPiece {
    const float* data = nullptr;
    int64_t row_stride = 0;
    int64_t col_stride = 0;
    int64_t k = 0;  // extent along the reduction dimension
    float scale = 1.0f;
    float dropout_p = 0.0f;
    uint64_t dropout_seed = 0;
};

// A row-major matrix with leading dimension ld, used as is (transposed = false) or transposed,
// contributing k elements along K (its columns in L, its rows in R).
OperandPiece matrix_piece(const float* data, int64_t ld, bool transposed, int64_t k,
                          float scale = 1.0f);

// L [M, K]: pieces side by side; R [K, N]: pieces stacked. Both must have the same total K.
struct Operand {
    OperandPiece pieces[2];
    int count = 0;

    Operand() = default;
    explicit Operand(const OperandPiece& piece) { append(piece); }
    Operand(const OperandPiece& first, const OperandPiece& second) {
        append(first);
        append(second);
    }
    // Pieces with k == 0 are dropped, so r == 0 leaves a plain product.
    void append(const OperandPiece& piece) {
        if (piece.k > 0) pieces[count++] = piece;
    }
    int64_t k() const {
        int64_t total = 0;
        for (int i = 0; i < count; ++i) total += pieces[i].k;
        return total;
    }
};

struct GemmOutput {
    float* c = nullptr;
    int64_t ldc = 0;
    float alpha = 1.0f;
    float beta = 0.0f;            // 0: C is written without being read
    const float* bias = nullptr;  // [N] or NULL, added to every row
    float dropout_p = 0.0f;       // > 0: the product's element (i, j) is multiplied by
    uint64_t dropout_seed = 0;    //   lk_dropout_factor(seed, i * ldc + j, p)
};

// Runs on the library's OpenMP threads (fewer for small products). May throw std::bad_alloc
// (the packing workspace); the caller's export turns that into LK_ERR_OUT_OF_MEMORY.
void gemm(int64_t M, int64_t N, const Operand& L, const Operand& R, const GemmOutput& out);

}  // namespace lk::cpu
