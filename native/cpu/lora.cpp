// lora.cpp: LoRA forward, backward and merge on the CPU: the counterpart of kernels/lora.cu
// (the same math and outputs; the argument order is the C ABI in lora_kernels.h, not the kernels').
//
// Forward, M > kGemvMaxRows: two packed GEMMs.
//   u = dropout(x) * A^T        [M, r]; the mask is applied while x is packed (never stored).
//   y = [x | s*u] * [W0^T ; B^T] + bias, one GEMM with K = in + r: y is written once, the LoRA
//       term rides along as r extra reduction steps, the bias is added in the micro-kernel.
//   FLOP 2*M*(in*r + (in + r)*out); bytes read ~ 4*(out*in + M*in + r*(in + out)) + y written.
// Forward, M <= kGemvMaxRows (decode): the same math as dot products (gemv.h): u first (from a
//   masked copy of x when dropout is on), then W0 streamed once, the bias and s*u*B^T added per
//   output element. Bound by reading W0 (4*out*in bytes).
// Backward (du = s*dy*B first; every product through the GEMM engine, transposes in packing):
//   dB = s*dy^T*u; dA = du^T*dropout(x), the mask applied while x is packed;
//   dx = [dy | du] * [W0 ; A] as one GEMM with K = out + r when dropout is off; with dropout the
//   mask multiplies only du*A, so dx = mask .* (du*A) is written first (mask in the write-back)
//   and dy*W0 accumulated on top (beta = 1).
//   FLOP 2*M*r*out (du) + 2*out*r*M (dB) + 2*r*in*M (dA) + 2*M*in*(out + r) (dx); W0 is read
//   (packed) once.
// Backward dx, M <= kGemvMaxRows: bound by streaming W0 (4*out*in bytes), so dx goes through
//   gemv_tn.h instead, W0 read once row by row as axpys into dx (no packing): [du | dy] against
//   [A ; W0] when dropout is off; with dropout, du*A first, masked, then dy*W0 added on top.
//   Measured at in = out = 4096, r = 16, 2 threads, all three outputs: M = 1 1.59 ms (was
//   5.5 ms; OpenBLAS composition 2.9 ms), M = 16 2.8 ms (was 6.1; OpenBLAS 4.6); README here.
// Merge: W += s*B*A, one GEMM with K = r and beta = 1: 2*out*in*r FLOP, bound by reading and
//   writing W (8*out*in bytes).
#include <vector>

#include "check.h"
#include "common.cuh"
#include "gemm.h"
#include "gemv.h"
#include "gemv_tn.h"

namespace lk::cpu {
namespace {

OperandPiece with_dropout(OperandPiece piece, float p, uint64_t seed) {
    piece.dropout_p = p;
    piece.dropout_seed = seed;
    return piece;
}

void forward_small_m(int64_t M, int64_t in, int64_t out, int64_t r, const float* x, const float* W0,
                     const float* bias, const float* A, const float* B, float scale,
                     float dropout_p, uint64_t seed, float* y, float* u) {
    if (r > 0) {
        std::vector<float> dropped;
        const float* xd = x;
        if (dropout_p > 0.0f) {
            dropped.resize((size_t)(M * in));
            for (int64_t i = 0; i < M * in; ++i)
                dropped[i] = x[i] * lk_dropout_factor(seed, (lk_u64)i, dropout_p);
            xd = dropped.data();
        }
        gemv_nt(M, r, in, xd, in, A, in,
                [=](int64_t m, int64_t t, float dot) { u[m * r + t] = dot; });
    }
    gemv_nt(M, out, in, x, in, W0, in, [=](int64_t m, int64_t j, float dot) {
        float lora = 0.0f;
        for (int64_t t = 0; t < r; ++t) lora += u[m * r + t] * B[j * r + t];
        y[m * out + j] = dot + (bias != nullptr ? bias[j] : 0.0f) + scale * lora;
    });
}

void forward(int64_t M, int64_t in, int64_t out, int64_t r, const float* x, const float* W0,
             const float* bias, const float* A, const float* B, float scale, float dropout_p,
             uint64_t seed, float* y, float* u) {
    if (M <= kGemvMaxRows) {
        forward_small_m(M, in, out, r, x, W0, bias, A, B, scale, dropout_p, seed, y, u);
        return;
    }
    if (r > 0) {
        GemmOutput u_out;
        u_out.c = u;
        u_out.ldc = r;
        gemm(M, r, Operand(with_dropout(matrix_piece(x, in, false, in), dropout_p, seed)),
             Operand(matrix_piece(A, in, true, in)), u_out);
    }
    GemmOutput y_out;
    y_out.c = y;
    y_out.ldc = out;
    y_out.bias = bias;
    gemm(M, out, Operand(matrix_piece(x, in, false, in), matrix_piece(u, r, false, r, scale)),
         Operand(matrix_piece(W0, in, true, in), matrix_piece(B, r, true, r)), y_out);
}

void backward(int64_t M, int64_t in, int64_t out, int64_t r, const float* x, const float* W0,
              const float* A, const float* B, const float* u, const float* dy, float scale,
              float dropout_p, uint64_t seed, float* dx, float* dA, float* dB) {
    const bool lora = r > 0;
    std::vector<float> du;
    if (lora && (dx != nullptr || dA != nullptr)) {
        du.resize((size_t)(M * r));
        GemmOutput du_out;
        du_out.c = du.data();
        du_out.ldc = r;
        du_out.alpha = scale;
        gemm(M, r, Operand(matrix_piece(dy, out, false, out)),
             Operand(matrix_piece(B, r, false, out)), du_out);
    }
    if (lora && dB != nullptr) {
        GemmOutput dB_out;
        dB_out.c = dB;
        dB_out.ldc = r;
        dB_out.alpha = scale;
        gemm(out, r, Operand(matrix_piece(dy, out, true, M)), Operand(matrix_piece(u, r, false, M)),
             dB_out);
    }
    if (lora && dA != nullptr) {
        GemmOutput dA_out;
        dA_out.c = dA;
        dA_out.ldc = in;
        gemm(r, in, Operand(matrix_piece(du.data(), r, true, M)),
             Operand(with_dropout(matrix_piece(x, in, false, M), dropout_p, seed)), dA_out);
    }
    if (dx != nullptr && M <= kGemvMaxRows) {
        // Small M: dx = [dy | du] * [W0 ; A] with W0 streamed once (gemv_tn.h). With dropout the
        // mask .* (du*A) is written first and dy*W0 accumulated on top.
        const GemvTnTerm dy_W0{out, dy, out, W0, in};
        if (!lora) {
            const GemvTnTerm terms[] = {dy_W0};
            gemv_tn(M, in, terms, /*zero_c=*/true, dx, in);
        } else if (dropout_p <= 0.0f) {
            const GemvTnTerm terms[] = {{r, du.data(), r, A, in}, dy_W0};
            gemv_tn(M, in, terms, /*zero_c=*/true, dx, in);
        } else {
            GemvTnTerm terms[] = {{r, du.data(), r, A, in}};
            gemv_tn(M, in, terms, /*zero_c=*/true, dx, in);
            for (int64_t i = 0; i < M * in; ++i)
                dx[i] *= lk_dropout_factor(seed, (lk_u64)i, dropout_p);
            terms[0] = dy_W0;
            gemv_tn(M, in, terms, /*zero_c=*/false, dx, in);
        }
    } else if (dx != nullptr) {
        const OperandPiece dy_piece = matrix_piece(dy, out, false, out);
        const OperandPiece W0_piece = matrix_piece(W0, in, false, out);
        GemmOutput dx_out;
        dx_out.c = dx;
        dx_out.ldc = in;
        if (!lora) {
            gemm(M, in, Operand(dy_piece), Operand(W0_piece), dx_out);
        } else if (dropout_p <= 0.0f) {
            gemm(M, in, Operand(dy_piece, matrix_piece(du.data(), r, false, r)),
                 Operand(W0_piece, matrix_piece(A, in, false, r)), dx_out);
        } else {
            GemmOutput masked = dx_out;
            masked.dropout_p = dropout_p;
            masked.dropout_seed = seed;
            gemm(M, in, Operand(matrix_piece(du.data(), r, false, r)),
                 Operand(matrix_piece(A, in, false, r)), masked);
            dx_out.beta = 1.0f;
            gemm(M, in, Operand(dy_piece), Operand(W0_piece), dx_out);
        }
    }
}

}  // namespace
}  // namespace lk::cpu

using lk::cpu::ArgCheck;

LK_API lk_status lk_cpu_lora_forward(int64_t M, int64_t in, int64_t out, int64_t r, const float* x,
                                     const float* W0, const float* bias, const float* A,
                                     const float* B, float scale, float dropout_p, uint64_t seed,
                                     float* y, float* u) {
    static const char* const fn = "lk_cpu_lora_forward";
    ArgCheck check(fn);
    check.nonnegative("M", M)
        .nonnegative("in", in)
        .nonnegative("out", out)
        .nonnegative("r", r)
        .not_null("x", x, M > 0 && in > 0)
        .not_null("W0", W0, out > 0 && in > 0)
        .not_null("A", A, r > 0 && in > 0)
        .not_null("B", B, r > 0 && out > 0)
        .not_null("y", y, M > 0 && out > 0)
        .not_null("u", u, M > 0 && r > 0)
        .in_half_open_range("dropout_p", dropout_p, 0.0f, 1.0f);
    if (!check.ok()) return check.status();
    return lk::cpu::guarded(fn, [&] {
        lk::cpu::forward(M, in, out, r, x, W0, bias, A, B, scale, dropout_p, seed, y, u);
        return LK_OK;
    });
}

LK_API lk_status lk_cpu_lora_backward(int64_t M, int64_t in, int64_t out, int64_t r, const float* x,
                                      const float* W0, const float* A, const float* B,
                                      const float* u, const float* dy, float scale, float dropout_p,
                                      uint64_t seed, float* dx, float* dA, float* dB) {
    static const char* const fn = "lk_cpu_lora_backward";
    const bool want_dx = dx != nullptr;
    const bool want_dA = dA != nullptr && r > 0;
    const bool want_dB = dB != nullptr && r > 0;
    ArgCheck check(fn);
    check.nonnegative("M", M)
        .nonnegative("in", in)
        .nonnegative("out", out)
        .nonnegative("r", r)
        .not_null("dy", dy, M > 0 && out > 0 && (want_dx || want_dA || want_dB))
        .not_null("x", x, want_dA && M > 0 && in > 0)
        .not_null("W0", W0, want_dx && out > 0 && in > 0)
        .not_null("A", A, want_dx && r > 0 && in > 0)
        .not_null("B", B, (want_dx || want_dA) && r > 0 && out > 0)
        .not_null("u", u, want_dB && M > 0)
        .in_half_open_range("dropout_p", dropout_p, 0.0f, 1.0f);
    if (!check.ok()) return check.status();
    return lk::cpu::guarded(fn, [&] {
        lk::cpu::backward(M, in, out, r, x, W0, A, B, u, dy, scale, dropout_p, seed, dx, dA, dB);
        return LK_OK;
    });
}

LK_API lk_status lk_cpu_lora_merge(int64_t out, int64_t in, int64_t r, float* W, const float* A,
                                   const float* B, float scale) {
    static const char* const fn = "lk_cpu_lora_merge";
    ArgCheck check(fn);
    check.nonnegative("out", out)
        .nonnegative("in", in)
        .nonnegative("r", r)
        .not_null("W", W, out > 0 && in > 0)
        .not_null("A", A, r > 0 && in > 0 && out > 0)
        .not_null("B", B, r > 0 && in > 0 && out > 0);
    if (!check.ok()) return check.status();
    return lk::cpu::guarded(fn, [&] {
        if (r > 0) {
            lk::cpu::GemmOutput w_out;
            w_out.c = W;
            w_out.ldc = in;
            w_out.alpha = scale;
            w_out.beta = 1.0f;
            lk::cpu::gemm(out, in, lk::cpu::Operand(lk::cpu::matrix_piece(B, r, false, r)),
                          lk::cpu::Operand(lk::cpu::matrix_piece(A, in, false, r)), w_out);
        }
        return LK_OK;
    });
}
