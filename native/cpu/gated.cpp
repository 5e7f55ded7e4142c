// gated.cpp: the gated-rank family on the CPU (same argument order as kernels/gated.cu).
//
// y = x W0^T + bias + s * (u .* G) * B^T, u = dropout(x) A^T, with a gate per rank or per token
// and rank, and its sparse top-k form over a pool of rank-1 experts.
//   * Per-rank gate: B' = B * diag(g) turns the layer into LoRA on B' (the same u), so the forward
//     is lk_cpu_lora_forward on B' (its fused GEMM and its decode path) and the backward is
//     lk_cpu_lora_backward on B', which yields dx, dA and dB' = s dy^T u; then dB = dB' * diag(g)
//     and dg_j = sum_n B[n,j] dB'[n,j] (= sum_m z[m,j] u[m,j], z = s dy B) in one O(out*r) pass.
//     Extra cost over LoRA: the fold and that pass, O(out*r) against the O(M*out*(in + r)) GEMMs.
//   * Per-token gate: u and the base product from lk_cpu_lora_forward at scale 0, ug = u .* G, then
//     y += s * ug * B^T (one GEMM with beta = 1; y passes through memory once more, 4*M*out bytes
//     each way, about 1% of the base product's time at 4096^2). Backward: z = s dy B,
//     dG = z .* u, du = z .* G, dB = s dy^T ug, dA = du^T dropout(x), dx = dy W0 (LoRA's r = 0
//     path) + dropout'(du A) (a GEMM whose output mask multiplies the product before beta = 1).
//   * Top-k: the slots (m, t) are sorted by expert once per call (O(M*k log(M*k)), nothing of size
//     E), so each picked expert's row A[j,:] and column B[:,j] is read once for all its slots and
//     experts no token picked are never read: the work is O(M*k*(in + out)) beside the base
//     product. B's column is strided by E, so it is gathered into a contiguous buffer first. Every
//     output element sums its slots in a fixed order (by expert, then slot): deterministic for any
//     thread count. The backward writes every row of dA and column of dB (zero where unpicked:
//     they are dense gradients) but reads only picked experts.
// The router's graph ops are in gated_router.cpp, SoRA's and AdaLoRA's training steps in
// gated_training.cpp.
// FLOPs and bytes per call are in docs/KERNELS.md (gated.cu); the CPU's are the same products.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include <omp.h>

#include "check.h"
#include "common.cuh"
#include "gated_experts.h"
#include "gemm.h"
#include "isa.h"

namespace lk::cpu {
namespace {

// B'[n, j] = B[n, j] * gate[j], [out, r] dense.
std::vector<float> fold_gate(int64_t out, int64_t r, const float* B, const float* gate) {
    std::vector<float> folded((size_t)(out * r));
    for (int64_t n = 0; n < out; ++n)
        for (int64_t j = 0; j < r; ++j) folded[(size_t)(n * r + j)] = B[n * r + j] * gate[j];
    return folded;
}

// Threads for a loop of `work` multiply-adds (a fork/join costs about a million).
int threads_for(double work) {
    return (int)std::max<double>(1.0, std::min<double>(thread_count(), work / 1.0e6));
}

lk_status forward(int64_t M, int64_t in, int64_t out, int64_t r, const float* x, const float* W0,
                  const float* bias, const float* A, const float* B, const float* gate,
                  int64_t gate_stride, float scale, float dropout_p, uint64_t seed, float* y,
                  float* u) {
    if (gate_stride == 0) {
        const std::vector<float> folded = fold_gate(out, r, B, gate);
        return lk_cpu_lora_forward(M, in, out, r, x, W0, bias, A, folded.data(), scale, dropout_p,
                                   seed, y, u);
    }
    // u and the base product from LoRA's forward at scale 0 (its adapter term vanishes), then y += s (u .* G) B^T.
    const lk_status base = lk_cpu_lora_forward(M, in, out, r, x, W0, bias, A, B, 0.0f, dropout_p, seed, y, u);
    if (base != LK_OK) return base;
    std::vector<float> gated((size_t)(M * r));
    for (int64_t i = 0; i < M * r; ++i) gated[(size_t)i] = u[i] * gate[i];
    GemmOutput y_out;
    y_out.c = y;
    y_out.ldc = out;
    y_out.alpha = scale;
    y_out.beta = 1.0f;
    gemm(M, out, Operand(matrix_piece(gated.data(), r, false, r)), Operand(matrix_piece(B, r, true, r)),
         y_out);
    return LK_OK;
}

// Per-rank backward: LoRA's on B' = B * diag(g), then dB and dg from dB' in one pass.
lk_status backward_per_rank(int64_t M, int64_t in, int64_t out, int64_t r, const float* x,
                            const float* W0, const float* A, const float* B, const float* gate,
                            const float* u, const float* dy, float scale, float dropout_p,
                            uint64_t seed, float* dx, float* dA, float* dB, float* dgate) {
    const std::vector<float> folded = fold_gate(out, r, B, gate);
    std::vector<float> scratch;
    float* dB_folded = dB;
    if (dB_folded == nullptr && dgate != nullptr) {
        scratch.resize((size_t)(out * r));
        dB_folded = scratch.data();
    }
    const lk_status status = lk_cpu_lora_backward(M, in, out, r, x, W0, A, folded.data(), u, dy, scale,
                                                  dropout_p, seed, dx, dA, dB_folded);
    if (status != LK_OK || dB_folded == nullptr) return status;
    std::vector<double> sums((size_t)r, 0.0);
    for (int64_t n = 0; n < out; ++n)
        for (int64_t j = 0; j < r; ++j) {
            float& g = dB_folded[n * r + j];
            sums[(size_t)j] += (double)B[n * r + j] * (double)g;
            if (dB != nullptr) g *= gate[j];
        }
    if (dgate != nullptr)
        for (int64_t j = 0; j < r; ++j) dgate[j] = (float)sums[(size_t)j];
    return LK_OK;
}

// dx = dy W0 (LoRA's r = 0 path, with its few-rows GEMV) + dropout'(coefficients * rows): the
// adapter term is a GEMM whose output mask multiplies the product before beta = 1 adds it.
lk_status grad_x_dense(int64_t M, int64_t in, int64_t out, int64_t r, const float* W0,
                       const float* A, const float* du, const float* dy, float dropout_p,
                       uint64_t seed, float* dx) {
    const lk_status base = lk_cpu_lora_backward(M, in, out, 0, nullptr, W0, nullptr, nullptr, nullptr,
                                                dy, 0.0f, 0.0f, 0, dx, nullptr, nullptr);
    if (base != LK_OK) return base;
    GemmOutput dx_out;
    dx_out.c = dx;
    dx_out.ldc = in;
    dx_out.beta = 1.0f;
    dx_out.dropout_p = dropout_p;
    dx_out.dropout_seed = seed;
    gemm(M, in, Operand(matrix_piece(du, r, false, r)), Operand(matrix_piece(A, in, false, r)), dx_out);
    return LK_OK;
}

lk_status backward_per_token(int64_t M, int64_t in, int64_t out, int64_t r, const float* x,
                             const float* W0, const float* A, const float* B, const float* gate,
                             const float* u, const float* dy, float scale, float dropout_p,
                             uint64_t seed, float* dx, float* dA, float* dB, float* dgate) {
    const size_t n = (size_t)(M * r);
    std::vector<float> z(n), du(n);
    GemmOutput z_out;
    z_out.c = z.data();
    z_out.ldc = r;
    z_out.alpha = scale;
    gemm(M, r, Operand(matrix_piece(dy, out, false, out)), Operand(matrix_piece(B, r, false, out)), z_out);
    for (size_t i = 0; i < n; ++i) {
        du[i] = z[i] * gate[i];
        if (dgate != nullptr) dgate[i] = z[i] * u[i];
    }
    if (dB != nullptr) {
        std::vector<float> gated(n);
        for (size_t i = 0; i < n; ++i) gated[i] = u[i] * gate[i];
        GemmOutput dB_out;
        dB_out.c = dB;
        dB_out.ldc = r;
        dB_out.alpha = scale;
        gemm(out, r, Operand(matrix_piece(dy, out, true, M)), Operand(matrix_piece(gated.data(), r, false, M)),
             dB_out);
    }
    if (dA != nullptr) {
        OperandPiece x_dropped = matrix_piece(x, in, false, M);
        x_dropped.dropout_p = dropout_p;
        x_dropped.dropout_seed = seed;
        GemmOutput dA_out;
        dA_out.c = dA;
        dA_out.ldc = in;
        gemm(r, in, Operand(matrix_piece(du.data(), r, true, M)), Operand(x_dropped), dA_out);
    }
    if (dx == nullptr) return LK_OK;
    return grad_x_dense(M, in, out, r, W0, A, du.data(), dy, dropout_p, seed, dx);
}

// ---- top-k ----------------------------------------------------------------------------------

// The slots m*k + t sorted by their expert (stable: (m, t) order within an expert), and the runs
// of equal experts in that order. Nothing here is of size E.
struct ExpertRuns {
    std::vector<int32_t> slots;   // sorted slot ids
    std::vector<int64_t> starts;  // run i is slots[starts[i] .. starts[i+1])
    std::vector<int32_t> experts; // the expert of run i
};

ExpertRuns sort_slots(int64_t M, int64_t k, const float* expert) {
    ExpertRuns runs;
    runs.slots.resize((size_t)(M * k));
    std::iota(runs.slots.begin(), runs.slots.end(), 0);
    std::stable_sort(runs.slots.begin(), runs.slots.end(),
                     [expert](int32_t a, int32_t b) { return expert[a] < expert[b]; });
    for (size_t i = 0; i < runs.slots.size(); ++i)
        if (i == 0 || expert[runs.slots[i]] != expert[runs.slots[i - 1]]) {
            runs.starts.push_back((int64_t)i);
            runs.experts.push_back((int32_t)expert[runs.slots[i]]);
        }
    runs.starts.push_back((int64_t)runs.slots.size());
    return runs;
}

// x with its dropout mask applied (a copy only when dropout is on), so a row dotted with several
// experts hashes each element once.
const float* dropped_input(int64_t M, int64_t in, const float* x, float p, uint64_t seed,
                           std::vector<float>& storage) {
    if (p <= 0.0f) return x;
    storage.resize((size_t)(M * in));
    for (int64_t i = 0; i < M * in; ++i) storage[(size_t)i] = x[i] * lk_dropout_factor(seed, (lk_u64)i, p);
    return storage.data();
}

float dot(const float* a, const float* b, int64_t n) {
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < n; ++i) sum += a[i] * b[i];
    return sum;
}

// column[n] = B[n * E + j] for n in [n0, n1): expert j's output vector, made contiguous.
void gather_column(const float* B, int64_t E, int64_t j, int64_t n0, int64_t n1, float* column) {
    for (int64_t n = n0; n < n1; ++n) column[n - n0] = B[n * E + j];
}

lk_status topk_forward(int64_t M, int64_t in, int64_t out, int64_t E, int64_t k, const float* x,
                       const float* W0, const float* bias, const float* A, const float* B,
                       const float* expert, const float* weight, float scale, float dropout_p,
                       uint64_t seed, float* y, float* h) {
    const lk_status base =
        lk_cpu_lora_forward(M, in, out, 0, x, W0, bias, nullptr, nullptr, 0.0f, 0.0f, 0, y, nullptr);
    if (base != LK_OK) return base;
    std::vector<float> storage;
    const float* xd = dropped_input(M, in, x, dropout_p, seed, storage);
    const ExpertRuns runs = sort_slots(M, k, expert);
    const int64_t slot_count = M * k;
    std::vector<float> coefficient((size_t)slot_count);
    int threads = threads_for((double)slot_count * (double)in);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t i = 0; i < slot_count; ++i) {
        const int64_t slot = runs.slots[(size_t)i], m = slot / k;
        h[slot] = dot(xd + m * in, A + (int64_t)expert[slot] * in, in);
        coefficient[(size_t)slot] = scale * weight[slot] * h[slot];
    }
    // Threads own column ranges of y; each gathers its stretch of every picked expert's column.
    threads = threads_for((double)slot_count * (double)out);
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        const int team = omp_get_num_threads();
        const int64_t n0 = out * omp_get_thread_num() / team, n1 = out * (omp_get_thread_num() + 1) / team;
        std::vector<float> column((size_t)std::max<int64_t>(n1 - n0, 1));
        for (size_t run = 0; run + 1 < runs.starts.size(); ++run) {
            gather_column(B, E, runs.experts[run], n0, n1, column.data());
            for (int64_t i = runs.starts[run]; i < runs.starts[run + 1]; ++i) {
                const int64_t slot = runs.slots[(size_t)i];
                const float c = coefficient[(size_t)slot];
                float* row = y + (slot / k) * out;
#pragma omp simd
                for (int64_t n = n0; n < n1; ++n) row[n] += c * column[(size_t)(n - n0)];
            }
        }
    }
    return LK_OK;
}

lk_status topk_backward(int64_t M, int64_t in, int64_t out, int64_t E, int64_t k, const float* x,
                        const float* W0, const float* A, const float* B, const float* expert,
                        const float* weight, const float* h, const float* dy, float scale,
                        float dropout_p, uint64_t seed, float* dx, float* dA, float* dB,
                        float* dweight) {
    const ExpertRuns runs = sort_slots(M, k, expert);
    const int64_t slot_count = M * k, run_count = (int64_t)runs.experts.size();
    // z[slot] = s * dy_m . B[:, e]: one gathered column per picked expert, dotted with its slots' dy.
    std::vector<float> z((size_t)slot_count);
    int threads = threads_for((double)slot_count * (double)out);
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        std::vector<float> column((size_t)out);
#pragma omp for schedule(dynamic)
        for (int64_t run = 0; run < run_count; ++run) {
            gather_column(B, E, runs.experts[(size_t)run], 0, out, column.data());
            for (int64_t i = runs.starts[(size_t)run]; i < runs.starts[(size_t)run + 1]; ++i) {
                const int64_t slot = runs.slots[(size_t)i];
                z[(size_t)slot] = scale * dot(dy + (slot / k) * out, column.data(), out);
            }
        }
    }
    std::vector<float> dh((size_t)slot_count);
    for (int64_t slot = 0; slot < slot_count; ++slot) {
        dh[(size_t)slot] = z[(size_t)slot] * weight[slot];
        if (dweight != nullptr) dweight[slot] = z[(size_t)slot] * h[slot];
    }
    std::vector<float> storage;
    if (dA != nullptr) {
        const float* xd = dropped_input(M, in, x, dropout_p, seed, storage);
        std::fill(dA, dA + E * in, 0.0f);
        threads = threads_for((double)slot_count * (double)in);
#pragma omp parallel for schedule(dynamic) num_threads(threads) if (threads > 1)
        for (int64_t run = 0; run < run_count; ++run) {
            float* row = dA + (int64_t)runs.experts[(size_t)run] * in;
            for (int64_t i = runs.starts[(size_t)run]; i < runs.starts[(size_t)run + 1]; ++i) {
                const int64_t slot = runs.slots[(size_t)i];
                const float c = dh[(size_t)slot];
                const float* xm = xd + (slot / k) * in;
#pragma omp simd
                for (int64_t col = 0; col < in; ++col) row[col] += c * xm[col];
            }
        }
    }
    if (dB != nullptr) {
        std::fill(dB, dB + out * E, 0.0f);
        threads = threads_for((double)slot_count * (double)out);
#pragma omp parallel num_threads(threads) if (threads > 1)
        {
            std::vector<float> column((size_t)out);
#pragma omp for schedule(dynamic)
            for (int64_t run = 0; run < run_count; ++run) {
                std::fill(column.begin(), column.end(), 0.0f);
                for (int64_t i = runs.starts[(size_t)run]; i < runs.starts[(size_t)run + 1]; ++i) {
                    const int64_t slot = runs.slots[(size_t)i];
                    const float c = scale * weight[slot] * h[slot];
                    const float* dym = dy + (slot / k) * out;
#pragma omp simd
                    for (int64_t n = 0; n < out; ++n) column[(size_t)n] += c * dym[n];
                }
                const int64_t j = runs.experts[(size_t)run];
                for (int64_t n = 0; n < out; ++n) dB[n * E + j] = column[(size_t)n];
            }
        }
    }
    if (dx == nullptr) return LK_OK;
    const lk_status base = lk_cpu_lora_backward(M, in, out, 0, nullptr, W0, nullptr, nullptr, nullptr,
                                                dy, 0.0f, 0.0f, 0, dx, nullptr, nullptr);
    if (base != LK_OK) return base;
    // dx_m += dropout'(sum_t dh[m,t] * A[e(m,t), :]), token by token (its k rows of A from cache).
    threads = threads_for((double)slot_count * (double)in);
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        std::vector<float> term((size_t)in);
#pragma omp for schedule(static)
        for (int64_t m = 0; m < M; ++m) {
            std::fill(term.begin(), term.end(), 0.0f);
            for (int64_t t = 0; t < k; ++t) {
                const float c = dh[(size_t)(m * k + t)];
                const float* a = A + (int64_t)expert[m * k + t] * in;
#pragma omp simd
                for (int64_t col = 0; col < in; ++col) term[(size_t)col] += c * a[col];
            }
            float* row = dx + m * in;
            for (int64_t col = 0; col < in; ++col)
                row[col] += term[(size_t)col] * lk_dropout_factor(seed, (lk_u64)(m * in + col), dropout_p);
        }
    }
    return LK_OK;
}

}  // namespace
}  // namespace lk::cpu

using lk::cpu::ArgCheck;

LK_API lk_status lk_cpu_gated_forward(int64_t M, int64_t in, int64_t out, int64_t r, const float* x,
                                      const float* W0, const float* bias, const float* A,
                                      const float* B, const float* gate, int64_t gate_stride,
                                      float scale, float dropout_p, uint64_t seed, float* y,
                                      float* u) {
    static const char* const fn = "lk_cpu_gated_forward";
    ArgCheck check(fn);
    check.nonnegative("M", M)
        .nonnegative("in", in)
        .nonnegative("out", out)
        .at_least("r", (double)r, 1.0)
        .not_null("x", x, M > 0 && in > 0)
        .not_null("W0", W0, out > 0 && in > 0)
        .not_null("A", A, in > 0)
        .not_null("B", B, out > 0)
        .not_null("gate", gate)
        .not_null("y", y, M > 0 && out > 0)
        .not_null("u", u, M > 0)
        .in_half_open_range("dropout_p", dropout_p, 0.0f, 1.0f);
    if (check.ok() && gate_stride != 0 && gate_stride != r)
        return lk::fail(LK_ERR_INVALID_ARGUMENT, "%s: gate_stride = %lld must be 0 (gate [r]) or r = %lld (gate [M, r])",
                        fn, (long long)gate_stride, (long long)r);
    if (!check.ok()) return check.status();
    return lk::cpu::guarded(fn, [&] {
        return lk::cpu::forward(M, in, out, r, x, W0, bias, A, B, gate, gate_stride, scale, dropout_p,
                                seed, y, u);
    });
}

LK_API lk_status lk_cpu_gated_backward(int64_t M, int64_t in, int64_t out, int64_t r,
                                       const float* x, const float* W0, const float* A,
                                       const float* B, const float* gate, int64_t gate_stride,
                                       const float* u, const float* dy, float scale,
                                       float dropout_p, uint64_t seed, float* dx, float* dA,
                                       float* dB, float* dgate) {
    static const char* const fn = "lk_cpu_gated_backward";
    const bool want_dx = dx != nullptr, want_dA = dA != nullptr;
    const bool want_u = dB != nullptr || dgate != nullptr;
    ArgCheck check(fn);
    check.nonnegative("M", M)
        .nonnegative("in", in)
        .nonnegative("out", out)
        .at_least("r", (double)r, 1.0)
        .not_null("dy", dy, M > 0 && out > 0)
        .not_null("x", x, want_dA && M > 0 && in > 0)
        .not_null("W0", W0, want_dx && out > 0 && in > 0)
        .not_null("A", A, want_dx && in > 0)
        .not_null("B", B, out > 0)
        .not_null("gate", gate)
        .not_null("u", u, want_u && M > 0)
        .in_half_open_range("dropout_p", dropout_p, 0.0f, 1.0f);
    if (check.ok() && gate_stride != 0 && gate_stride != r)
        return lk::fail(LK_ERR_INVALID_ARGUMENT, "%s: gate_stride = %lld must be 0 (gate [r]) or r = %lld (gate [M, r])",
                        fn, (long long)gate_stride, (long long)r);
    if (!check.ok()) return check.status();
    return lk::cpu::guarded(fn, [&] {
        return gate_stride == 0
                   ? lk::cpu::backward_per_rank(M, in, out, r, x, W0, A, B, gate, u, dy, scale, dropout_p,
                                                seed, dx, dA, dB, dgate)
                   : lk::cpu::backward_per_token(M, in, out, r, x, W0, A, B, gate, u, dy, scale, dropout_p,
                                                 seed, dx, dA, dB, dgate);
    });
}

LK_API lk_status lk_cpu_gated_merge(int64_t out, int64_t in, int64_t r, float* W, const float* A,
                                    const float* B, const float* gate, float scale) {
    static const char* const fn = "lk_cpu_gated_merge";
    ArgCheck check(fn);
    check.nonnegative("out", out)
        .nonnegative("in", in)
        .at_least("r", (double)r, 1.0)
        .not_null("W", W, out > 0 && in > 0)
        .not_null("A", A, in > 0)
        .not_null("B", B, out > 0)
        .not_null("gate", gate)
        .finite("scale", scale);
    if (!check.ok()) return check.status();
    return lk::cpu::guarded(fn, [&] {
        const std::vector<float> folded = lk::cpu::fold_gate(out, r, B, gate);
        return lk_cpu_lora_merge(out, in, r, W, A, folded.data(), scale);
    });
}

LK_API lk_status lk_cpu_gated_topk_forward(int64_t M, int64_t in, int64_t out, int64_t E, int64_t k,
                                           const float* x, const float* W0, const float* bias,
                                           const float* A, const float* B, const float* expert,
                                           const float* weight, float scale, float dropout_p,
                                           uint64_t seed, float* y, float* h) {
    static const char* const fn = "lk_cpu_gated_topk_forward";
    ArgCheck check(fn);
    check.nonnegative("M", M)
        .nonnegative("in", in)
        .nonnegative("out", out)
        .at_least("E", (double)E, 1.0)
        .at_least("k", (double)k, 1.0)
        .at_least("E - k", (double)(E - k), 0.0)
        .not_null("x", x, M > 0 && in > 0)
        .not_null("W0", W0, out > 0 && in > 0)
        .not_null("A", A, in > 0)
        .not_null("B", B, out > 0)
        .not_null("expert", expert, M > 0)
        .not_null("weight", weight, M > 0)
        .not_null("y", y, M > 0 && out > 0)
        .not_null("h", h, M > 0)
        .in_half_open_range("dropout_p", dropout_p, 0.0f, 1.0f);
    if (!check.ok()) return check.status();
    const lk_status experts = lk::cpu::check_experts(fn, M, k, E, expert);
    if (experts != LK_OK) return experts;
    return lk::cpu::guarded(fn, [&] {
        return lk::cpu::topk_forward(M, in, out, E, k, x, W0, bias, A, B, expert, weight, scale,
                                     dropout_p, seed, y, h);
    });
}

LK_API lk_status lk_cpu_gated_topk_backward(int64_t M, int64_t in, int64_t out, int64_t E, int64_t k,
                                            const float* x, const float* W0, const float* A,
                                            const float* B, const float* expert,
                                            const float* weight, const float* h, const float* dy,
                                            float scale, float dropout_p, uint64_t seed, float* dx,
                                            float* dA, float* dB, float* dweight) {
    static const char* const fn = "lk_cpu_gated_topk_backward";
    ArgCheck check(fn);
    check.nonnegative("M", M)
        .nonnegative("in", in)
        .nonnegative("out", out)
        .at_least("E", (double)E, 1.0)
        .at_least("k", (double)k, 1.0)
        .at_least("E - k", (double)(E - k), 0.0)
        .not_null("x", x, dA != nullptr && M > 0 && in > 0)
        .not_null("W0", W0, dx != nullptr && out > 0 && in > 0)
        .not_null("A", A, dx != nullptr && in > 0)
        .not_null("B", B, out > 0)
        .not_null("expert", expert, M > 0)
        .not_null("weight", weight, M > 0)
        .not_null("h", h, (dB != nullptr || dweight != nullptr) && M > 0)
        .not_null("dy", dy, M > 0 && out > 0)
        .in_half_open_range("dropout_p", dropout_p, 0.0f, 1.0f);
    if (!check.ok()) return check.status();
    const lk_status experts = lk::cpu::check_experts(fn, M, k, E, expert);
    if (experts != LK_OK) return experts;
    return lk::cpu::guarded(fn, [&] {
        return lk::cpu::topk_backward(M, in, out, E, k, x, W0, A, B, expert, weight, h, dy, scale,
                                      dropout_p, seed, dx, dA, dB, dweight);
    });
}
