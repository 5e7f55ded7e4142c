// vera.cpp: VeRA forward, backward and merge on the CPU (same argument order as kernels/vera.cu).
//
// VeRA is LoRA with a fixed B' = diag(lambda_b) * B * diag(lambda_d) [out, r]:
//   y_j = sum_k x_k W0_jk + lambda_b_j * sum_i lambda_d_i u_i B_ji = x W0^T + u B'^T,
// so every product is the LoRA engine's, on the slices read in place through their strides (A's
// row stride is lda = max_in, no copy), after one O(out * r) fold of the two vectors into B':
//   forward:  u = dropout(x) * A^T (packed GEMM), y = [x | u] * [W0^T ; B'^T] + bias (one GEMM,
//             y written once). FLOP 2*M*r*in + 2*M*out*(in + r); bytes ~ 4*(out*in + M*in +
//             r*in + out*r + M*out + M*r) plus B' (4*out*r written and read).
//   backward: du = dy * B' (= (dy .* lambda_b) * B .* lambda_d, i.e. dv .* lambda_d);
//             G = dy^T * u [out, r]; then, since dlambda_b_j = sum_i G_ji B_ji lambda_d_i and
//             dlambda_d_i = sum_j G_ji B_ji lambda_b_j, both vectors come from one pass over G
//             (no division by lambda_d, so lambda_d = 0 is fine; no [M, out] intermediate);
//             dx = [dy | du] * [W0 ; A] as LoRA's (mask on the adapter term only when dropout).
//             FLOP 2*M*out*r (du) + 2*M*out*r (G) + 2*M*in*(out + r) (dx) + 4*out*r.
//   merge:    W += scale * B' * A, one GEMM with beta = 1 (bound by reading and writing W).
#include <vector>

#include "check.h"
#include "common.cuh"
#include "gemm.h"

namespace lk::cpu {
namespace {

// B'[j, i] = lambda_b[j] * B[j, i] * lambda_d[i], [out, r] dense.
std::vector<float> fold_b(int64_t out, int64_t r, const float* B, const float* lambda_d,
                          const float* lambda_b) {
    std::vector<float> folded((size_t)(out * r));
    for (int64_t j = 0; j < out; ++j)
        for (int64_t i = 0; i < r; ++i)
            folded[(size_t)(j * r + i)] = lambda_b[j] * B[j * r + i] * lambda_d[i];
    return folded;
}

void forward(int64_t M, int64_t in, int64_t out, int64_t r, const float* x, const float* W0,
             const float* bias, const float* A, int64_t lda, const float* B,
             const float* lambda_d, const float* lambda_b, float dropout_p, uint64_t seed,
             float* y, float* u) {
    OperandPiece x_dropped = matrix_piece(x, in, false, in);
    x_dropped.dropout_p = dropout_p;
    x_dropped.dropout_seed = seed;
    GemmOutput u_out;
    u_out.c = u;
    u_out.ldc = r;
    gemm(M, r, Operand(x_dropped), Operand(matrix_piece(A, lda, true, in)), u_out);

    const std::vector<float> folded = fold_b(out, r, B, lambda_d, lambda_b);
    GemmOutput y_out;
    y_out.c = y;
    y_out.ldc = out;
    y_out.bias = bias;
    gemm(M, out, Operand(matrix_piece(x, in, false, in), matrix_piece(u, r, false, r)),
         Operand(matrix_piece(W0, in, true, in), matrix_piece(folded.data(), r, true, r)), y_out);
}

void backward(int64_t M, int64_t in, int64_t out, int64_t r, const float* W0, const float* A,
              int64_t lda, const float* B, const float* lambda_d, const float* lambda_b,
              const float* u, const float* dy, float dropout_p, uint64_t seed, float* dx,
              float* dlambda_d, float* dlambda_b) {
    const std::vector<float> folded = fold_b(out, r, B, lambda_d, lambda_b);
    if (dlambda_d != nullptr || dlambda_b != nullptr) {
        std::vector<float> g((size_t)(out * r));
        GemmOutput g_out;
        g_out.c = g.data();
        g_out.ldc = r;
        gemm(out, r, Operand(matrix_piece(dy, out, true, M)), Operand(matrix_piece(u, r, false, M)),
             g_out);
        std::vector<double> d_sum((size_t)r, 0.0);
        for (int64_t j = 0; j < out; ++j) {
            double b_sum = 0.0;
            for (int64_t i = 0; i < r; ++i) {
                const double gb = (double)g[(size_t)(j * r + i)] * (double)B[j * r + i];
                b_sum += gb * (double)lambda_d[i];
                d_sum[(size_t)i] += gb * (double)lambda_b[j];
            }
            if (dlambda_b != nullptr) dlambda_b[j] = (float)b_sum;
        }
        if (dlambda_d != nullptr)
            for (int64_t i = 0; i < r; ++i) dlambda_d[i] = (float)d_sum[(size_t)i];
    }
    if (dx == nullptr) return;
    std::vector<float> du((size_t)(M * r));
    GemmOutput du_out;
    du_out.c = du.data();
    du_out.ldc = r;
    gemm(M, r, Operand(matrix_piece(dy, out, false, out)),
         Operand(matrix_piece(folded.data(), r, false, out)), du_out);
    const OperandPiece dy_piece = matrix_piece(dy, out, false, out);
    const OperandPiece W0_piece = matrix_piece(W0, in, false, out);
    GemmOutput dx_out;
    dx_out.c = dx;
    dx_out.ldc = in;
    if (dropout_p <= 0.0f) {
        gemm(M, in, Operand(dy_piece, matrix_piece(du.data(), r, false, r)),
             Operand(W0_piece, matrix_piece(A, lda, false, r)), dx_out);
        return;
    }
    GemmOutput masked = dx_out;
    masked.dropout_p = dropout_p;
    masked.dropout_seed = seed;
    gemm(M, in, Operand(matrix_piece(du.data(), r, false, r)),
         Operand(matrix_piece(A, lda, false, r)), masked);
    dx_out.beta = 1.0f;
    gemm(M, in, Operand(dy_piece), Operand(W0_piece), dx_out);
}

}  // namespace
}  // namespace lk::cpu

using lk::cpu::ArgCheck;

LK_API lk_status lk_cpu_vera_forward(int64_t M, int64_t in, int64_t out, int64_t r, const float* x,
                                     const float* W0, const float* bias, const float* A, int64_t lda,
                                     const float* B, const float* lambda_d, const float* lambda_b,
                                     float dropout_p, uint64_t seed, float* y, float* u) {
    static const char* const fn = "lk_cpu_vera_forward";
    ArgCheck check(fn);
    check.nonnegative("M", M)
        .nonnegative("in", in)
        .nonnegative("out", out)
        .at_least("r", (double)r, 1.0)
        .leading_dimension("lda", lda, in)
        .not_null("x", x, M > 0 && in > 0)
        .not_null("W0", W0, out > 0 && in > 0)
        .not_null("A", A, in > 0)
        .not_null("B", B, out > 0)
        .not_null("lambda_d", lambda_d)
        .not_null("lambda_b", lambda_b, out > 0)
        .not_null("y", y, M > 0 && out > 0)
        .not_null("u", u, M > 0)
        .in_half_open_range("dropout_p", dropout_p, 0.0f, 1.0f);
    if (!check.ok()) return check.status();
    return lk::cpu::guarded(fn, [&] {
        lk::cpu::forward(M, in, out, r, x, W0, bias, A, lda, B, lambda_d, lambda_b, dropout_p,
                         seed, y, u);
        return LK_OK;
    });
}

LK_API lk_status lk_cpu_vera_backward(int64_t M, int64_t in, int64_t out, int64_t r,
                                      const float* W0, const float* A, int64_t lda, const float* B,
                                      const float* lambda_d, const float* lambda_b, const float* u,
                                      const float* dy, float dropout_p, uint64_t seed, float* dx,
                                      float* dlambda_d, float* dlambda_b) {
    static const char* const fn = "lk_cpu_vera_backward";
    const bool want_dx = dx != nullptr;
    const bool want_lambda = dlambda_d != nullptr || dlambda_b != nullptr;
    ArgCheck check(fn);
    check.nonnegative("M", M)
        .nonnegative("in", in)
        .nonnegative("out", out)
        .at_least("r", (double)r, 1.0)
        .leading_dimension("lda", lda, in)
        .not_null("dy", dy, M > 0 && out > 0)
        .not_null("W0", W0, want_dx && out > 0 && in > 0)
        .not_null("A", A, want_dx && in > 0)
        .not_null("B", B, out > 0)
        .not_null("lambda_d", lambda_d)
        .not_null("lambda_b", lambda_b, out > 0)
        .not_null("u", u, want_lambda && M > 0)
        .in_half_open_range("dropout_p", dropout_p, 0.0f, 1.0f);
    if (!check.ok()) return check.status();
    return lk::cpu::guarded(fn, [&] {
        lk::cpu::backward(M, in, out, r, W0, A, lda, B, lambda_d, lambda_b, u, dy, dropout_p, seed,
                          dx, dlambda_d, dlambda_b);
        return LK_OK;
    });
}

LK_API lk_status lk_cpu_vera_merge(int64_t out, int64_t in, int64_t r, float* W, const float* A,
                                   int64_t lda, const float* B, const float* lambda_d,
                                   const float* lambda_b, float scale) {
    static const char* const fn = "lk_cpu_vera_merge";
    ArgCheck check(fn);
    check.nonnegative("out", out)
        .nonnegative("in", in)
        .at_least("r", (double)r, 1.0)
        .leading_dimension("lda", lda, in)
        .not_null("W", W, out > 0 && in > 0)
        .not_null("A", A, in > 0)
        .not_null("B", B, out > 0)
        .not_null("lambda_d", lambda_d)
        .not_null("lambda_b", lambda_b, out > 0)
        .finite("scale", scale);
    if (!check.ok()) return check.status();
    return lk::cpu::guarded(fn, [&] {
        const std::vector<float> folded = lk::cpu::fold_b(out, r, B, lambda_d, lambda_b);
        lk::cpu::GemmOutput w_out;
        w_out.c = W;
        w_out.ldc = in;
        w_out.alpha = scale;
        w_out.beta = 1.0f;
        lk::cpu::gemm(out, in, lk::cpu::Operand(lk::cpu::matrix_piece(folded.data(), r, false, r)),
                      lk::cpu::Operand(lk::cpu::matrix_piece(A, lda, false, r)), w_out);
        return LK_OK;
    });
}
