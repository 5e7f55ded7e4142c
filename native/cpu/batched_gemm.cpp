// batched_gemm.cpp: strided batched products on the packed GEMM engine (batched_gemm.h says what
// and why). Every product goes through gemm(), so the micro-kernels, packing and blocking are the
// engine's; this file only decides which products run side by side and in what order partial
// sums are added. FLOP 2*batch*M*N*K.
#include "batched_gemm.h"

#include <vector>

#include "gemm.h"
#include "isa.h"
#include "parallel.h"

namespace lk::cpu {
namespace {

OperandPiece left_piece(const BatchedMatrix& A, int64_t b, int64_t M, int64_t K) {
    return matrix_piece(A.data + b * A.batch_stride, A.transposed ? M : K, A.transposed, K);
}

OperandPiece right_piece(const BatchedMatrix& B, int64_t b, int64_t N, int64_t K) {
    return matrix_piece(B.data + b * B.batch_stride, B.transposed ? K : N, B.transposed, K);
}

void product(int64_t b, int64_t M, int64_t N, int64_t K, const BatchedMatrix& A,
             const BatchedMatrix& B, float alpha, float beta, float* C) {
    GemmOutput out;
    out.c = C;
    out.ldc = N;
    out.alpha = alpha;
    out.beta = beta;
    gemm(M, N, Operand(left_piece(A, b, M, K)), Operand(right_piece(B, b, N, K)), out);
}

}  // namespace

void batched_gemm(int64_t batch, int64_t M, int64_t N, int64_t K, const BatchedMatrix& A,
                  const BatchedMatrix& B, float alpha, float beta, float* C, int64_t c_batch_stride,
                  bool reduce) {
    if (batch <= 0 || M <= 0 || N <= 0) return;
    const double product_flop = 2.0 * (double)M * (double)N * (double)K;
    if (!reduce) {
        run_tasks(batch, side_by_side(product_flop, batch), [&](int64_t b) {
            product(b, M, N, K, A, B, alpha, beta, C + b * c_batch_stride);
        });
        return;
    }
    if (batch <= kReduceChunk) {
        for (int64_t b = 0; b < batch; ++b) product(b, M, N, K, A, B, alpha, b == 0 ? beta : 1.0f, C);
        return;
    }
    // Partial sums of fixed chunks, computed side by side, then added in chunk order.
    const int64_t chunks = (batch + kReduceChunk - 1) / kReduceChunk;
    const int64_t mn = M * N;
    std::vector<float> partial((size_t)(chunks * mn));
    run_tasks(chunks, side_by_side(product_flop * (double)kReduceChunk, chunks), [&](int64_t c) {
        const int64_t end = std::min(batch, (c + 1) * kReduceChunk);
        for (int64_t b = c * kReduceChunk; b < end; ++b)
            product(b, M, N, K, A, B, 1.0f, b == c * kReduceChunk ? 0.0f : 1.0f,
                    partial.data() + c * mn);
    });
    const int threads = elementwise_threads(mn * chunks);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t i = 0; i < mn; ++i) {
        float sum = 0.0f;
        for (int64_t c = 0; c < chunks; ++c) sum += partial[(size_t)(c * mn + i)];
        C[i] = beta == 0.0f ? alpha * sum : alpha * sum + beta * C[i];
    }
}

}  // namespace lk::cpu
