// gated_training.cpp: the training-time steps of the gated family on the CPU (kernels/gated.cu
// holds their GPU twins): SoRA's proximal soft-threshold (REFERENCE.md 7.3) and AdaLoRA's
// importance EMAs, triplet scores and orthogonality regulariser (REFERENCE.md 6.3-6.4). They run
// after an optimizer's step (SoRA) or around it (AdaLoRA), over a layer's parameters: element-wise
// loops, two row/column means per triplet, and the regulariser's two GEMMs on the packed engine.
#include <algorithm>
#include <cmath>
#include <vector>

#include "check.h"
#include "gemm.h"

using lk::cpu::ArgCheck;

LK_API lk_status lk_cpu_gated_soft_threshold(int64_t n, float* gate, float lambda) {
    static const char* const fn = "lk_cpu_gated_soft_threshold";
    ArgCheck check(fn);
    check.nonnegative("n", n).not_null("gate", gate, n > 0).at_least("lambda", (double)lambda, 0.0).finite("lambda", lambda);
    if (!check.ok()) return check.status();
    return lk::cpu::guarded(fn, [&] {
        for (int64_t i = 0; i < n; ++i) {
            float g = gate[i];
            if (g > lambda) g -= lambda;
            if (g < -lambda) g += lambda;
            if (std::fabs(g) < lambda) g = 0.0f;
            gate[i] = g;
        }
        return LK_OK;
    });
}

LK_API lk_status lk_cpu_gated_sensitivity(int64_t n, const float* p, const float* grad, float* ipt,
                                          float* unc, float beta1, float beta2) {
    static const char* const fn = "lk_cpu_gated_sensitivity";
    ArgCheck check(fn);
    check.nonnegative("n", n)
        .not_null("p", p, n > 0)
        .not_null("grad", grad, n > 0)
        .not_null("ipt", ipt, n > 0)
        .not_null("unc", unc, n > 0)
        .in_half_open_range("beta1", beta1, 0.0f, 1.0f)
        .in_half_open_range("beta2", beta2, 0.0f, 1.0f);
    if (!check.ok()) return check.status();
    return lk::cpu::guarded(fn, [&] {
        for (int64_t i = 0; i < n; ++i) {
            const float sensitivity = std::fabs(p[i] * grad[i]);
            ipt[i] = beta1 * ipt[i] + (1.0f - beta1) * sensitivity;
            unc[i] = beta2 * unc[i] + (1.0f - beta2) * std::fabs(sensitivity - ipt[i]);
        }
        return LK_OK;
    });
}

LK_API lk_status lk_cpu_gated_triplet_score(int64_t r, int64_t in, int64_t out, const float* ipt_A,
                                            const float* unc_A, const float* ipt_E,
                                            const float* unc_E, const float* ipt_B,
                                            const float* unc_B, float* score) {
    static const char* const fn = "lk_cpu_gated_triplet_score";
    ArgCheck check(fn);
    check.at_least("r", (double)r, 1.0)
        .at_least("in", (double)in, 1.0)
        .at_least("out", (double)out, 1.0)
        .not_null("ipt_A", ipt_A)
        .not_null("unc_A", unc_A)
        .not_null("ipt_E", ipt_E)
        .not_null("unc_E", unc_E)
        .not_null("ipt_B", ipt_B)
        .not_null("unc_B", unc_B)
        .not_null("score", score);
    if (!check.ok()) return check.status();
    return lk::cpu::guarded(fn, [&] {
        for (int64_t i = 0; i < r; ++i) {
            double a = 0.0, b = 0.0;
            for (int64_t c = 0; c < in; ++c) a += (double)(ipt_A[i * in + c] * unc_A[i * in + c]);
            for (int64_t n = 0; n < out; ++n) b += (double)(ipt_B[n * r + i] * unc_B[n * r + i]);
            score[i] = (float)((double)(ipt_E[i] * unc_E[i]) + a / (double)in + b / (double)out);
        }
        return LK_OK;
    });
}

LK_API lk_status lk_cpu_gated_gram(int64_t rows, int64_t cols, const float* X, int32_t transpose,
                                   float* C) {
    static const char* const fn = "lk_cpu_gated_gram";
    ArgCheck check(fn);
    check.at_least("rows", (double)rows, 1.0).at_least("cols", (double)cols, 1.0).not_null("X", X).not_null("C", C);
    if (!check.ok()) return check.status();
    return lk::cpu::guarded(fn, [&] {
        using lk::cpu::matrix_piece;
        lk::cpu::GemmOutput c_out;
        c_out.c = C;
        if (transpose == 0) {
            c_out.ldc = rows;
            lk::cpu::gemm(rows, rows, lk::cpu::Operand(matrix_piece(X, cols, false, cols)),
                          lk::cpu::Operand(matrix_piece(X, cols, true, cols)), c_out);
        } else {
            c_out.ldc = cols;
            lk::cpu::gemm(cols, cols, lk::cpu::Operand(matrix_piece(X, cols, true, rows)),
                          lk::cpu::Operand(matrix_piece(X, cols, false, rows)), c_out);
        }
        return LK_OK;
    });
}

LK_API lk_status lk_cpu_gated_orth_grad(int64_t rows, int64_t cols, const float* X, const float* C,
                                        int32_t transpose, float coefficient, float* G) {
    static const char* const fn = "lk_cpu_gated_orth_grad";
    ArgCheck check(fn);
    check.at_least("rows", (double)rows, 1.0)
        .at_least("cols", (double)cols, 1.0)
        .not_null("X", X)
        .not_null("C", C)
        .not_null("G", G)
        .finite("coefficient", coefficient);
    if (!check.ok()) return check.status();
    return lk::cpu::guarded(fn, [&] {
        using lk::cpu::matrix_piece;
        const int64_t side = transpose == 0 ? rows : cols;
        std::vector<float> shifted(C, C + side * side);  // C - I
        for (int64_t i = 0; i < side; ++i) shifted[(size_t)(i * side + i)] -= 1.0f;
        lk::cpu::GemmOutput g_out;
        g_out.c = G;
        g_out.ldc = cols;
        g_out.alpha = coefficient;
        if (transpose == 0)
            lk::cpu::gemm(rows, cols, lk::cpu::Operand(matrix_piece(shifted.data(), rows, false, rows)),
                          lk::cpu::Operand(matrix_piece(X, cols, false, rows)), g_out);
        else
            lk::cpu::gemm(rows, cols, lk::cpu::Operand(matrix_piece(X, cols, false, cols)),
                          lk::cpu::Operand(matrix_piece(shifted.data(), cols, false, cols)), g_out);
        return LK_OK;
    });
}
