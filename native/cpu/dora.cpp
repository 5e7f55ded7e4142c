// dora.cpp: DoRA weight norm, forward, backward and merge on the CPU (same argument order as
// kernels/dora.cu; math in native/include/lora_kernels_dora.h, REFERENCE.md §2).
//
// Weight norm, accurate relative to the true norm on every row (issue 14), without forming B·A or
// W0 + s·B·A as [out, in] matrices (REFERENCE.md §11). The expansion
//   n_i² = q_i + 2s·P_i·B_i + s²·B_i G B_iᵀ,   q_i = ‖w_i‖² (once per frozen W0: row_sqnorm, a double
//   sum rounded once), P = W0 Aᵀ [out, r], G = A Aᵀ [r, r],
// subtracts terms of size ~q_i where W0_i and s·B_i·A nearly cancel, so its rounding error must be
// small against n_i², not against q_i. Two measures, chosen over alternatives that cost more:
//   1. P and G in (near) double: every product goes into an fp32 partial sum of at most
//      kDoraPartialTerms = 64 terms, the partial sums into double (dora_project: AVX-512 in
//      dora_avx512.cpp, else an 8-lane loop here). fp32 speed, but an error bound of γ_64 = 64u
//      relative to Σ|w||a| instead of the γ_in of an fp32 GEMM; the combination runs in double.
//      A full double P would cost 2x the fp32 FLOP rate (4x without AVX-512 in this file).
//   2. A certificate per row: E_i = u·q_i + γ_64·(2|s|·√q_i·β_i + s²·β_i²) + (in + 2r + 16)·2⁻⁵³·T_i
//      (β_i = ‖|B_i|·|A|‖ from H = |A||A|ᵀ, T_i = (√q_i + |s|·β_i)²) bounds |n_i²(computed) - n_i²|;
//      a row is kept when n_i² >= E_i·(1 + 1/τ), τ = 1e-4, which makes |n - n_true| <= τ·n_true.
//      The other rows are recomputed directly in double, one row at a time (v_k = w_k +
//      s·Σ_a B_a·A_ak, exact products; AVX-512: four rows per pass over A in dora_avx512.cpp,
//      else direct_norm's 256-element blocks; never an [out, in] temporary), error <=
//      (r + 2)·2⁻⁵³·‖|w| + |s|·|B_i|·|A|‖. A call where every row is recomputed costs ~4x one
//      where none is (AVX-512; all rows cancelling is the worst case). With ‖s·B_i·A‖ <= ‖w_i‖ (a trained adapter
//      is far below that) only rows with n_i below ~1/40 of ‖w_i‖ take it; where the adapter
//      dominates W0 (|s|·β_i >> ‖w_i‖) more rows do, as the fp32 partial sums' worst case demands.
// Cost at out = in = 4096, r = 16 on 2 threads (DoraBenchmarks' shape; a shared, noisy machine):
// the whole norm ~5-6 ms, bound by reading W0 once (64 MiB), where the packed-GEMM P it replaces
// took ~8-16 ms (N = 16 wastes two-thirds of the engine's 48-wide tile); G, H (r²·in) and the
// combination (out·r²) are small; a recomputed row costs in·r double FMAs: ~21 ms when all 4096
// rows cancel (the worst case). The DoRA/LoRA step ratios before and after are in docs/DECISIONS.md.
// A row whose norm is exactly 0 is written as 0 and counted (lk_dora_norm_report): m/n is
// undefined there and the C# layer refuses it.
// QDoRA's norm (weight_norm_4bit) is the same with deq(W)'s rows decoded a few at a time into
// per-thread scratch (decode_range), for the projection and for a recomputed row.
// Forward: the fused LoRA forward (lora.cpp: one GEMM y = [x | s·u]·[W0ᵀ ; Bᵀ]) without bias
//   writes z, then one pass y = g ⊙ z + bias (8 bytes read, 4 written per element; z and y may be
//   the same buffer). The column scale is not fused into the GEMM epilogue: the engine's
//   GemmOutput has no per-column factor, and the pass costs M·out·12 bytes against the GEMM's
//   2·M·out·(in + r) FLOP (about 1 % at in = 4096).
// Backward: one pass over dy and z per column block gives dm_j = Σ_t dy·z / n_j (summed in double,
//   rows in order) and dz = dy ⊙ g; then the LoRA backward (lora.cpp) on dz gives dx, dA, dB.
//   A failure inside the reused LoRA export keeps that export's status and message.
//   Extra over LoRA: M·out·12 bytes and an M·out fp32 temporary.
// Merge / unmerge: W_i <- (m_i/n_i)·(W_i + s·B_i·A) or (n_i/m_i)·W_i - s·B_i·A, each element in
//   double and rounded once (B_i·A a 256-element block at a time), so a cancelling row merges as
//   accurately as any other; in·r double FMAs per row (merging is not a per-step cost).
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "check.h"
#include "common.cuh"
#include "dora_kernels.h"
#include "gemm.h"
#include "isa.h"
#include "nf4_format.h"
#include "parallel.h"

namespace lk::cpu {
namespace {

// Columns of an [M, out] matrix one thread owns in the backward's reduction pass: a multiple of
// the widest vector, so each row's slice is a contiguous, vectorizable run.
constexpr int64_t kColumnBlock = 256;

void row_sqnorm(int64_t out, int64_t in, const float* W0, float* sqnorm) {
    const int threads = elementwise_threads(out * in);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t i = 0; i < out; ++i) {
        const float* w = W0 + i * in;
        double sum = 0.0;
#pragma omp simd reduction(+ : sum)
        for (int64_t k = 0; k < in; ++k) sum += (double)w[k] * (double)w[k];
        sqnorm[i] = (float)sum;
    }
}

static_assert(kDoraPartialTerms == LK_DORA_PARTIAL_TERMS, "lora_kernels_dora.h and dora_kernels.h agree");

constexpr double kF32Unit = 0x1p-24;
// γ_L of an fp32 partial sum of L = kDoraPartialTerms products (rounded products or FMAs).
constexpr double kGammaPartial =
    (double)kDoraPartialTerms * kF32Unit / (1.0 - (double)kDoraPartialTerms * kF32Unit);
// Elements of B_i·A a direct or merge loop forms at a time (2 KiB of doubles on the stack).
constexpr int64_t kDirectBlock = 256;
// Rows of deq(W) one thread decodes at a time for QDoRA's projection (16 x in floats of scratch).
constexpr int64_t kDecodeRows = 16;

bool project_avx512() {
#if defined(LK_CPU_X86)
    return (active_kernels().isa_bits & 2) != 0;
#else
    return false;
#endif
}

// dora_project_avx512's contract in portable code: P[i·ldp + a] = Σ_k X[i·ldx + k]·A[a·lda + k],
// 8 lanes (which the compiler vectorizes) of at most kDoraPartialTerms products each, added in double.
void project_portable(int64_t rows, int64_t r, int64_t K, const float* X, int64_t ldx, const float* A,
                      int64_t lda, double* P, int64_t ldp) {
    constexpr int kLanes = 8;
    constexpr int64_t kChunk = kDoraPartialTerms * kLanes;
    for (int64_t i = 0; i < rows; ++i)
        for (int64_t a = 0; a < r; ++a) {
            const float* x = X + i * ldx;
            const float* y = A + a * lda;
            double sum = 0.0;
            for (int64_t k0 = 0; k0 < K; k0 += kChunk) {
                const int64_t k1 = std::min(K, k0 + kChunk);
                float lanes[kLanes] = {};
                int64_t k = k0;
                for (; k + kLanes <= k1; k += kLanes)
                    for (int l = 0; l < kLanes; ++l) lanes[l] += x[k + l] * y[k + l];
                for (int l = 0; k < k1; ++k, ++l) lanes[l] += x[k] * y[k];
                for (int l = 0; l < kLanes; ++l) sum += (double)lanes[l];
            }
            P[i * ldp + a] = sum;
        }
}

// One thread's share of P = X Aᵀ; scratch holds kDoraProjectScratchPerRank·r doubles.
void project(int64_t rows, int64_t r, int64_t K, const float* X, int64_t ldx, const float* A, int64_t lda,
             double* P, int64_t ldp, double* scratch) {
#if defined(LK_CPU_X86)
    if (project_avx512()) {
        dora_project_avx512(rows, r, K, X, ldx, A, lda, P, ldp, scratch);
        return;
    }
#endif
    (void)scratch;
    project_portable(rows, r, K, X, ldx, A, lda, P, ldp);
}

// P[i, :] for rows [0, rows) on the library's threads; `rows_of(i0, i1, scratch_rows)` returns
// rows [i0, i1) of X (W0 itself, or deq(W) decoded into scratch_rows: kDecodeRows·K floats).
template <class RowsOf>
void project_rows(int64_t rows, int64_t r, int64_t K, const float* A, double* P, int64_t step,
                  const RowsOf& rows_of) {
    const int64_t blocks = (rows + step - 1) / step;
    const int threads = (int)std::max<int64_t>(
        1, std::min<int64_t>({(int64_t)thread_count(), blocks, rows * K * r / kElementsPerThread}));
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        std::vector<double> scratch((size_t)(kDoraProjectScratchPerRank * r));
        std::vector<float> decoded;
#pragma omp for schedule(static)
        for (int64_t b = 0; b < blocks; ++b) {
            const int64_t i0 = b * step, i1 = std::min(rows, i0 + step);
            const float* X = rows_of(i0, i1, decoded);
            project(i1 - i0, r, K, X, K, A, K, P + i0 * r, r, scratch.data());
        }
    }
}

// v[k] = Σ_a b_a·A[a·in + k0 + k] in double for k < len (each product exact in double).
void ba_block(int64_t len, int64_t in, int64_t r, const float* A, int64_t k0, const float* b, double* v) {
    for (int64_t k = 0; k < len; ++k) v[k] = 0.0;
    for (int64_t a = 0; a < r; ++a) {
        const double ba = b[a];
        const float* row = A + a * in + k0;
        for (int64_t k = 0; k < len; ++k) v[k] += ba * (double)row[k];
    }
}

// n = ‖w + s·b·A‖ in double, one 256-element block of b·A at a time: each product b_a·A_ak is exact
// in double, so |v_k(computed) - v_k| <= (r + 2)·2⁻⁵³·(|w_k| + |s|·Σ_a |b_a·A_ak|).
double direct_norm(int64_t in, int64_t r, const float* w, const float* A, const float* b, double s) {
    double v[kDirectBlock];
    double sum = 0.0;
    for (int64_t k0 = 0; k0 < in; k0 += kDirectBlock) {
        const int64_t len = std::min(kDirectBlock, in - k0);
        ba_block(len, in, r, A, k0, b, v);
        for (int64_t k = 0; k < len; ++k) {
            const double t = (double)w[k0 + k] + s * v[k];
            sum += t * t;
        }
    }
    return std::sqrt(sum);
}

// The expansion per row, in double, and its certificate (lora_kernels_dora.h): with
// β_i = ‖ |B_i|·|A| ‖ = sqrt(|B_i| H |B_i|ᵀ), H = |A| |A|ᵀ, the fp32 partial sums of P and G err by
// at most γ_L·Σ_k |w_k|·(|B_i||A|)_k <= γ_L·‖w_i‖·β_i (Cauchy–Schwarz) and γ_L·β_i² in the cross
// and quadratic terms, and the double arithmetic by (in + 2r + 16)·2⁻⁵³·(‖w_i‖ + |s|β_i)².
// Certified rows get their norm; the others are returned for the direct recomputation.
std::vector<int64_t> combine_norm(int64_t out, int64_t in, int64_t r, const float* w0_sqnorm, const double* P,
                                  const double* G, const double* H, const float* B, float scale, float* norm) {
    const double s = scale, abs_s = std::fabs(s);
    const double keep = 1.0 + 1.0 / LK_DORA_NORM_TOLERANCE;
    const double double_terms = (double)(in + 2 * r + 16) * 0x1p-53;
    std::vector<unsigned char> flagged((size_t)out);
    const int threads = elementwise_threads(out * r * r);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t i = 0; i < out; ++i) {
        const float* b = B + i * r;
        const double* p = P + i * r;
        double cross = 0.0, quadratic = 0.0, beta2 = 0.0;
        for (int64_t a = 0; a < r; ++a) {
            cross += p[a] * (double)b[a];
            double gb = 0.0, hb = 0.0;
            for (int64_t c = 0; c < r; ++c) {
                gb += G[a * r + c] * (double)b[c];
                hb += H[a * r + c] * std::fabs((double)b[c]);
            }
            quadratic += (double)b[a] * gb;
            beta2 += std::fabs((double)b[a]) * hb;
        }
        const double q = w0_sqnorm[i];
        const double squared = q + 2.0 * s * cross + s * s * quadratic;
        const double root_q = std::sqrt(std::max(0.0, q)), sb = abs_s * std::sqrt(beta2);
        const double terms = (root_q + sb) * (root_q + sb);
        // The 2⁻¹⁰ margin covers √q and H's fp32 partial sums standing in for ‖w‖ and |A||A|ᵀ.
        const double bound = (1.0 + 0x1p-10) * (kF32Unit * q + kGammaPartial * (2.0 * root_q * sb + sb * sb)) +
                             double_terms * terms;
        if (squared > 0.0 && squared >= bound * keep) {
            norm[i] = (float)std::sqrt(squared);
        } else {
            flagged[(size_t)i] = 1;
        }
    }
    std::vector<int64_t> rows;
    for (int64_t i = 0; i < out; ++i)
        if (flagged[(size_t)i]) rows.push_back(i);
    return rows;
}

// norm[i] = ‖w_i + s·B_i·A‖ of each listed row, in double: with AVX-512 four rows at a time
// (dora_direct_sqnorms_avx512, sharing each converted A vector), else direct_norm per row.
// `row_of(i, scratch)` returns W0's row i (or decodes it into scratch).
template <class RowOf>
void recompute_rows(const std::vector<int64_t>& rows, int64_t in, int64_t r, const float* A, const float* B,
                    float scale, float* norm, const RowOf& row_of) {
    const int64_t count = (int64_t)rows.size();
    const int64_t groups = (count + kDoraDirectRows - 1) / kDoraDirectRows;
    const int threads = (int)std::max<int64_t>(
        1, std::min<int64_t>({(int64_t)thread_count(), groups, count * in * r / kElementsPerThread}));
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        std::vector<float> decoded[kDoraDirectRows];
#pragma omp for schedule(dynamic, 1)
        for (int64_t group = 0; group < groups; ++group) {
            const int64_t e0 = group * kDoraDirectRows;
            const int n_rows = (int)std::min<int64_t>(kDoraDirectRows, count - e0);
            const float* w[kDoraDirectRows];
            const float* b[kDoraDirectRows];
            for (int j = 0; j < n_rows; ++j) {
                const int64_t i = rows[(size_t)(e0 + j)];
                w[j] = row_of(i, decoded[j]);
                b[j] = B + i * r;
            }
#if defined(LK_CPU_X86)
            if (project_avx512()) {
                double squares[kDoraDirectRows];
                dora_direct_sqnorms_avx512(n_rows, in, r, w, A, b, scale, squares);
                for (int j = 0; j < n_rows; ++j) norm[rows[(size_t)(e0 + j)]] = (float)std::sqrt(squares[j]);
                continue;
            }
#endif
            for (int j = 0; j < n_rows; ++j) norm[rows[(size_t)(e0 + j)]] = (float)direct_norm(in, r, w[j], A, b[j], scale);
        }
    }
}

void report_rows(int64_t out, const float* norm, int64_t recomputed, lk_dora_norm_report* report) {
    if (report == nullptr) return;
    report->recomputed_rows = recomputed;
    report->zero_rows = 0;
    for (int64_t i = 0; i < out; ++i) report->zero_rows += norm[i] == 0.0f;
}

// The whole norm: P (rows from rows_of), G = A Aᵀ, the certified expansion, then the direct rows.
template <class RowsOf, class RowOf>
void weight_norm(int64_t out, int64_t in, int64_t r, const float* w0_sqnorm, const float* A, const float* B,
                 float scale, float* norm, lk_dora_norm_report* report, int64_t step, const RowsOf& rows_of,
                 const RowOf& row_of) {
    std::vector<double> P((size_t)(out * r)), G((size_t)(r * r)), H((size_t)(r * r));
    project_rows(out, r, in, A, P.data(), step, rows_of);
    {
        std::vector<double> scratch((size_t)(kDoraProjectScratchPerRank * r));
        project(r, r, in, A, in, A, in, G.data(), r, scratch.data());
        std::vector<float> abs_a((size_t)(r * in));
        for (size_t e = 0; e < abs_a.size(); ++e) abs_a[e] = std::fabs(A[e]);
        project(r, r, in, abs_a.data(), in, abs_a.data(), in, H.data(), r, scratch.data());
    }
    const std::vector<int64_t> rows =
        combine_norm(out, in, r, w0_sqnorm, P.data(), G.data(), H.data(), B, scale, norm);
    recompute_rows(rows, in, r, A, B, scale, norm, row_of);
    report_rows(out, norm, (int64_t)rows.size(), report);
}

void dense_weight_norm(int64_t out, int64_t in, int64_t r, const float* W0, const float* w0_sqnorm, const float* A,
                       const float* B, float scale, float* norm, lk_dora_norm_report* report) {
    // 64 rows per task: 4 tiles of the AVX-512 kernel, enough tasks to balance 2..64 threads.
    weight_norm(out, in, r, w0_sqnorm, A, B, scale, norm, report, 64,
                [&](int64_t i0, int64_t, std::vector<float>&) { return W0 + i0 * in; },
                [&](int64_t i, std::vector<float>&) { return W0 + i * in; });
}

void quantized_weight_norm(int64_t out, int64_t in, int64_t r, const uint8_t* codes, const lk_quant_stats& stats,
                           const float* w0_sqnorm, const float* A, const float* B, float scale, float* norm,
                           lk_dora_norm_report* report) {
    weight_norm(
        out, in, r, w0_sqnorm, A, B, scale, norm, report, kDecodeRows,
        [&](int64_t i0, int64_t i1, std::vector<float>& scratch) {
            scratch.resize((size_t)((i1 - i0) * in));
            decode_range(codes, stats, i0 * in, (i1 - i0) * in, scratch.data());
            return (const float*)scratch.data();
        },
        [&](int64_t i, std::vector<float>& scratch) {
            scratch.resize((size_t)in);
            decode_range(codes, stats, i * in, in, scratch.data());
            return (const float*)scratch.data();
        });
}

// W_i <- g_i·(W_i + s·B_i·A) (merge) or g_i·W_i - s·B_i·A (unmerge), g_i = m_i/n_i or n_i/m_i, per
// element in double, one block of B_i·A at a time.
void merge(int64_t out, int64_t in, int64_t r, float* W, const float* A, const float* B, const float* magnitude,
           const float* norm, float scale, bool unmerge) {
    const double s = scale;
    const int threads = elementwise_threads(out * in * r);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t i = 0; i < out; ++i) {
        const double g = unmerge ? (double)norm[i] / (double)magnitude[i] : (double)magnitude[i] / (double)norm[i];
        const float* b = B + i * r;
        float* w = W + i * in;
        double v[kDirectBlock];
        for (int64_t k0 = 0; k0 < in; k0 += kDirectBlock) {
            const int64_t len = std::min(kDirectBlock, in - k0);
            ba_block(len, in, r, A, k0, b, v);
            for (int64_t k = 0; k < len; ++k) {
                const double old = w[k0 + k];
                w[k0 + k] = (float)(unmerge ? g * old - s * v[k] : g * (old + s * v[k]));
            }
        }
    }
}

// y = g ⊙ z + bias, g = magnitude / norm per column; z may be y.
void scale_columns(int64_t M, int64_t out, const float* z, const float* magnitude,
                   const float* norm, const float* bias, float* y) {
    std::vector<float> g((size_t)out);
    for (int64_t j = 0; j < out; ++j) g[(size_t)j] = magnitude[j] / norm[j];
    const float* gp = g.data();
    const int threads = elementwise_threads(M * out);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t t = 0; t < M; ++t) {
        const float* zt = z + t * out;
        float* yt = y + t * out;
        if (bias != nullptr) {
#pragma omp simd
            for (int64_t j = 0; j < out; ++j) yt[j] = gp[j] * zt[j] + bias[j];
        } else {
#pragma omp simd
            for (int64_t j = 0; j < out; ++j) yt[j] = gp[j] * zt[j];
        }
    }
}

lk_status forward(int64_t M, int64_t in, int64_t out, int64_t r, const float* x, const float* W0,
             const float* bias, const float* A, const float* B, float scale,
             const float* magnitude, const float* norm, float* y, float* u, float* z) {
    float* pre_scale = z != nullptr ? z : y;
    const lk_status status = lk_cpu_lora_forward(M, in, out, r, x, W0, nullptr, A, B, scale, 0.0f,
                                                 0, pre_scale, u);
    if (status != LK_OK) return status;
    scale_columns(M, out, pre_scale, magnitude, norm, bias, y);
    return LK_OK;
}

// dm_j = Σ_t dy[t,j]·z[t,j] / n_j (when dmagnitude) and dz = dy ⊙ g (when dz), one pass.
void magnitude_grad_and_scale(int64_t M, int64_t out, const float* dy, const float* z,
                              const float* magnitude, const float* norm, float* dmagnitude,
                              float* dz) {
    const int64_t blocks = (out + kColumnBlock - 1) / kColumnBlock;
    const int threads = (int)std::max<int64_t>(
        1, std::min<int64_t>({(int64_t)thread_count(), blocks, M * out / kElementsPerThread}));
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t block = 0; block < blocks; ++block) {
        const int64_t j0 = block * kColumnBlock;
        const int64_t width = std::min(kColumnBlock, out - j0);
        double sums[kColumnBlock] = {};
        float g[kColumnBlock];
        if (dz != nullptr)
            for (int64_t j = 0; j < width; ++j) g[j] = magnitude[j0 + j] / norm[j0 + j];
        for (int64_t t = 0; t < M; ++t) {
            const float* dyt = dy + t * out + j0;
            if (dmagnitude != nullptr) {
                const float* zt = z + t * out + j0;
#pragma omp simd
                for (int64_t j = 0; j < width; ++j) sums[j] += (double)dyt[j] * (double)zt[j];
            }
            if (dz != nullptr) {
                float* dzt = dz + t * out + j0;
#pragma omp simd
                for (int64_t j = 0; j < width; ++j) dzt[j] = dyt[j] * g[j];
            }
        }
        if (dmagnitude != nullptr)
            for (int64_t j = 0; j < width; ++j)
                dmagnitude[j0 + j] = (float)(sums[j] / (double)norm[j0 + j]);
    }
}

lk_status backward(int64_t M, int64_t in, int64_t out, int64_t r, const float* x, const float* W0,
              const float* A, const float* B, const float* u, const float* z, const float* dy,
              float scale, const float* magnitude, const float* norm, float* dx, float* dA,
              float* dB, float* dmagnitude) {
    const bool lora = dx != nullptr || dA != nullptr || dB != nullptr;
    // Every element of dz is written by the pass below, so it is not zero-filled first.
    std::unique_ptr<float[]> dz(lora ? new float[(size_t)(M * out)] : nullptr);
    magnitude_grad_and_scale(M, out, dy, z, magnitude, norm, dmagnitude, dz.get());
    if (!lora) return LK_OK;
    return lk_cpu_lora_backward(M, in, out, r, x, W0, A, B, u, dz.get(), scale, 0.0f, 0, dx, dA,
                                dB);
}

}  // namespace
}  // namespace lk::cpu

using lk::cpu::ArgCheck;

LK_API lk_status lk_cpu_dora_row_sqnorm(int64_t out, int64_t in, const float* W0, float* sqnorm) {
    static const char* const fn = "lk_cpu_dora_row_sqnorm";
    ArgCheck check(fn);
    check.nonnegative("out", out)
        .nonnegative("in", in)
        .not_null("W0", W0, out > 0 && in > 0)
        .not_null("sqnorm", sqnorm, out > 0);
    if (!check.ok()) return check.status();
    return lk::cpu::guarded(fn, [&] {
        lk::cpu::row_sqnorm(out, in, W0, sqnorm);
        return LK_OK;
    });
}

namespace {

// The arguments both weight-norm exports take; `base` is W0 (dense) or the codes (4-bit).
ArgCheck check_norm_arguments(const char* fn, int64_t out, int64_t in, int64_t r, const char* base_name,
                              const void* base, const float* w0_sqnorm, const float* A, const float* B,
                              const float* norm, float scale) {
    ArgCheck check(fn);
    check.nonnegative("out", out)
        .nonnegative("in", in)
        .at_least("r", (double)r, 1.0)
        .not_null(base_name, base, out > 0 && in > 0)
        .not_null("w0_sqnorm", w0_sqnorm, out > 0)
        .not_null("A", A, in > 0)
        .not_null("B", B, out > 0)
        .not_null("norm", norm, out > 0)
        .finite("scale", scale);
    return check;
}

}  // namespace

LK_API lk_status lk_cpu_dora_weight_norm(int64_t out, int64_t in, int64_t r, const float* W0,
                                         const float* w0_sqnorm, const float* A, const float* B,
                                         float scale, float* norm, lk_dora_norm_report* report) {
    static const char* const fn = "lk_cpu_dora_weight_norm";
    const ArgCheck check = check_norm_arguments(fn, out, in, r, "W0", W0, w0_sqnorm, A, B, norm, scale);
    if (!check.ok()) return check.status();
    return lk::cpu::guarded(fn, [&] {
        lk::cpu::dense_weight_norm(out, in, r, W0, w0_sqnorm, A, B, scale, norm, report);
        return LK_OK;
    });
}

LK_API lk_status lk_cpu_dora_weight_norm_4bit(int64_t out, int64_t in, int64_t r,
                                              const uint8_t* codes, const lk_quant_stats* stats,
                                              const float* w0_sqnorm, const float* A,
                                              const float* B, float scale, float* norm,
                                              lk_dora_norm_report* report) {
    static const char* const fn = "lk_cpu_dora_weight_norm_4bit";
    const ArgCheck check = check_norm_arguments(fn, out, in, r, "codes", codes, w0_sqnorm, A, B, norm, scale);
    if (!check.ok()) return check.status();
    lk_status status = LK_OK;
    if (!lk::cpu::valid_stats(fn, stats, out * in, &status)) return status;
    return lk::cpu::guarded(fn, [&] {
        lk::cpu::quantized_weight_norm(out, in, r, codes, *stats, w0_sqnorm, A, B, scale, norm, report);
        return LK_OK;
    });
}

LK_API lk_status lk_cpu_dora_forward(int64_t M, int64_t in, int64_t out, int64_t r,
                                     const float* x, const float* W0, const float* bias,
                                     const float* A, const float* B, float scale,
                                     const float* magnitude, const float* norm, float* y, float* u,
                                     float* z) {
    static const char* const fn = "lk_cpu_dora_forward";
    ArgCheck check(fn);
    check.nonnegative("M", M)
        .nonnegative("in", in)
        .nonnegative("out", out)
        .at_least("r", (double)r, 1.0)
        .not_null("x", x, M > 0 && in > 0)
        .not_null("W0", W0, out > 0 && in > 0)
        .not_null("A", A, in > 0)
        .not_null("B", B, out > 0)
        .not_null("magnitude", magnitude, out > 0)
        .not_null("norm", norm, out > 0)
        .not_null("y", y, M > 0 && out > 0)
        .not_null("u", u, M > 0);
    if (!check.ok()) return check.status();
    return lk::cpu::guarded(fn, [&] {
        return lk::cpu::forward(M, in, out, r, x, W0, bias, A, B, scale, magnitude, norm, y, u, z);
    });
}

LK_API lk_status lk_cpu_dora_backward(int64_t M, int64_t in, int64_t out, int64_t r,
                                      const float* x, const float* W0, const float* A,
                                      const float* B, const float* u, const float* z,
                                      const float* dy, float scale, const float* magnitude,
                                      const float* norm, float* dx, float* dA, float* dB,
                                      float* dmagnitude) {
    static const char* const fn = "lk_cpu_dora_backward";
    const bool want_lora = dx != nullptr || dA != nullptr || dB != nullptr;
    const bool any = want_lora || dmagnitude != nullptr;
    ArgCheck check(fn);
    check.nonnegative("M", M)
        .nonnegative("in", in)
        .nonnegative("out", out)
        .at_least("r", (double)r, 1.0)
        .not_null("dy", dy, any && M > 0 && out > 0)
        .not_null("magnitude", magnitude, want_lora && out > 0)
        .not_null("norm", norm, any && out > 0)
        .not_null("z", z, dmagnitude != nullptr && M > 0 && out > 0)
        .not_null("x", x, dA != nullptr && M > 0 && in > 0)
        .not_null("W0", W0, dx != nullptr && out > 0 && in > 0)
        .not_null("A", A, dx != nullptr && in > 0)
        .not_null("B", B, (dx != nullptr || dA != nullptr) && out > 0)
        .not_null("u", u, dB != nullptr && M > 0);
    if (!check.ok()) return check.status();
    return lk::cpu::guarded(fn, [&] {
        return lk::cpu::backward(M, in, out, r, x, W0, A, B, u, z, dy, scale, magnitude, norm, dx,
                                 dA, dB, dmagnitude);
    });
}

LK_API lk_status lk_cpu_dora_merge(int64_t out, int64_t in, int64_t r, float* W, const float* A,
                                   const float* B, const float* magnitude, const float* norm,
                                   float scale, int32_t invert) {
    static const char* const fn = "lk_cpu_dora_merge";
    ArgCheck check(fn);
    check.nonnegative("out", out)
        .nonnegative("in", in)
        .at_least("r", (double)r, 1.0)
        .not_null("W", W, out > 0 && in > 0)
        .not_null("A", A, in > 0)
        .not_null("B", B, out > 0)
        .not_null("magnitude", magnitude, out > 0)
        .not_null("norm", norm, out > 0)
        .finite("scale", scale);
    if (!check.ok()) return check.status();
    if (invert != 0 && invert != 1)
        return lk::fail(LK_ERR_INVALID_ARGUMENT, "%s: invert = %d is neither 0 nor 1", fn, invert);
    for (int64_t i = 0; i < out; ++i)
        if (!(std::isfinite(magnitude[i]) && magnitude[i] != 0.0f && std::isfinite(norm[i]) && norm[i] != 0.0f))
            return lk::fail(LK_ERR_INVALID_ARGUMENT,
                            "%s: row %lld has magnitude %g and norm %g; the factor m/n must be finite and non-zero "
                            "(a zero could not be unmerged)",
                            fn, (long long)i, (double)magnitude[i], (double)norm[i]);
    return lk::cpu::guarded(fn, [&] {
        lk::cpu::merge(out, in, r, W, A, B, magnitude, norm, scale, invert != 0);
        return LK_OK;
    });
}

LK_API lk_status lk_cpu_dora_scale_columns(int64_t M, int64_t out, const float* z,
                                           const float* magnitude, const float* norm,
                                           const float* bias, float* y) {
    static const char* const fn = "lk_cpu_dora_scale_columns";
    ArgCheck check(fn);
    check.nonnegative("M", M)
        .nonnegative("out", out)
        .not_null("z", z, M > 0 && out > 0)
        .not_null("magnitude", magnitude, out > 0)
        .not_null("norm", norm, out > 0)
        .not_null("y", y, M > 0 && out > 0);
    if (!check.ok()) return check.status();
    return lk::cpu::guarded(fn, [&] {
        lk::cpu::scale_columns(M, out, z, magnitude, norm, bias, y);
        return LK_OK;
    });
}

LK_API lk_status lk_cpu_dora_scale_grad(int64_t M, int64_t out, const float* dy, const float* z,
                                        const float* magnitude, const float* norm,
                                        float* dmagnitude, float* dz) {
    static const char* const fn = "lk_cpu_dora_scale_grad";
    ArgCheck check(fn);
    check.nonnegative("M", M)
        .nonnegative("out", out)
        .not_null("dy", dy, M > 0 && out > 0)
        .not_null("z", z, dmagnitude != nullptr && M > 0 && out > 0)
        .not_null("magnitude", magnitude, dz != nullptr && out > 0)
        .not_null("norm", norm, out > 0);
    if (!check.ok()) return check.status();
    return lk::cpu::guarded(fn, [&] {
        lk::cpu::magnitude_grad_and_scale(M, out, dy, z, magnitude, norm, dmagnitude, dz);
        return LK_OK;
    });
}

LK_API lk_status lk_cpu_dora_dropout(int64_t n, const float* x, float p, uint64_t seed, float* y) {
    static const char* const fn = "lk_cpu_dora_dropout";
    ArgCheck check(fn);
    check.nonnegative("n", n).not_null("x", x, n > 0).not_null("y", y, n > 0);
    if (!check.ok()) return check.status();
    if (!(p >= 0.0f && p < 1.0f))
        return lk::fail(LK_ERR_INVALID_ARGUMENT, "%s: p = %g is not in [0, 1)", fn, (double)p);
    const int threads = lk::cpu::elementwise_threads(n);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t i = 0; i < n; ++i) y[i] = x[i] * lk_dropout_factor(seed, (lk_u64)i, p);
    return LK_OK;
}
