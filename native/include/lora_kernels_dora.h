/* lora_kernels_dora.h: DoRA (weight-decomposed LoRA, REFERENCE.md §2), the CPU half of
 * kernels/dora.cu. Included by lora_kernels.h; same rules (flat prefixed C ABI, int64 sizes,
 * lk_status, no throw).
 *
 * Math (PEFT, dropout 0 or eval): magnitude m [out], weight norm n = ‖W0 + s·B·A‖_row [out]
 * (detached: no gradient flows through n), g = m / n,
 *   u = x Aᵀ [M, r],  z = x W0ᵀ + s·u Bᵀ [M, out],  y = g ⊙ z + bias   (g scales each column j).
 *
 * The weight norm, accurate relative to the true norm on every row (issue 14). B·A and
 * W0 + s·B·A are never formed as [out, in] matrices (REFERENCE.md §11):
 *   1. the expansion n_i² = q_i + 2s·P_i·B_i + s²·B_i G B_iᵀ with q_i = ‖w_i‖² (computed once per
 *      frozen W0, in double, stored fp32), P = W0 Aᵀ and G = A Aᵀ accumulated as fp32 partial sums
 *      of at most LK_DORA_PARTIAL_TERMS products each, added in double, and combined in double;
 *   2. a rigorous bound E_i >= |computed n_i² - n_i²| from the pieces' rounding:
 *        E_i = u·q_i + γ_L·(2|s|·√q_i·β_i + s²·β_i²) (+ double-precision terms),
 *        β_i = ‖ |B_i|·|A| ‖ (from H = |A| |A|ᵀ, r×r), u = 2⁻²⁴, γ_L = L·u / (1 - L·u),
 *        L = LK_DORA_PARTIAL_TERMS;
 *   3. a row is kept when n_i² >= E_i·(1 + 1/τ), τ = LK_DORA_NORM_TOLERANCE, which certifies
 *      |n_kept - n| <= τ·n; every other row (the rows where W0_i and s·B_i·A nearly cancel) is
 *      recomputed directly, one row at a time in double, v_k = w_ik + s·Σ_a B_ia·A_ak,
 *      n_i = sqrt(Σ_k v_k²), with an absolute error <= (r + 2)·2⁻⁵³·‖|w_i| + |s|·|B_i|·|A|‖.
 * The result is rounded to fp32 once. A row whose norm is exactly 0 (W0_i = -s·B_i·A exactly, e.g.
 * an all-zero W0 row with B_i = 0) is written as 0 and counted in the report: m/n is undefined
 * there (PEFT's division gives Inf or NaN); the C# layer refuses it with an error.
 * Dropout > 0 in training (PEFT's second base matmul on dropout(x)) is composed by the C# side
 * (Ops.Dora.ForwardWithDropout) from these exports, the LoRA ones and lk_cpu_dora_dropout. */
#ifndef LORA_KERNELS_DORA_H
#define LORA_KERNELS_DORA_H

#include <stdint.h>

/* The norm's target relative error τ: rows whose expansion cannot certify it are recomputed. */
#define LK_DORA_NORM_TOLERANCE 1e-4
/* The most products one fp32 partial sum of P = W0 Aᵀ or G = A Aᵀ accumulates before it is added
 * in double (CPU and GPU kernels alike); the bound's γ_L uses it. */
#define LK_DORA_PARTIAL_TERMS 64

/* What a weight-norm call did, for the caller's checks and for tests. */
typedef struct lk_dora_norm_report {
    int64_t recomputed_rows; /* rows the expansion could not certify, recomputed directly */
    int64_t zero_rows;       /* rows with n = 0 exactly (written as 0; m/n is undefined there) */
} lk_dora_norm_report;

/* sqnorm[i] = Σ_k W0[i,k]² (summed in double, rounded to fp32 once). W0 [out, in], sqnorm [out]. */
LK_API lk_status lk_cpu_dora_row_sqnorm(int64_t out, int64_t in, const float* W0, float* sqnorm);

/* norm[i] = ‖W0_i + s·B_i·A‖ (the method above). W0 [out, in], w0_sqnorm [out] (from
 * lk_cpu_dora_row_sqnorm: the bound assumes it is that correctly rounded value), A [r, in],
 * B [out, r], norm [out]. r >= 1. report may be NULL. Extra memory: P and G in double
 * (8·(out·r + r²) bytes) and the list of recomputed rows. */
LK_API lk_status lk_cpu_dora_weight_norm(int64_t out, int64_t in, int64_t r, const float* W0,
                                         const float* w0_sqnorm, const float* A, const float* B,
                                         float scale, float* norm, lk_dora_norm_report* report);

/* DoRA forward: u = x Aᵀ [M, r], z = x W0ᵀ + s·u Bᵀ [M, out] (kept for the backward; may be
 * NULL for inference), y = (magnitude / norm) ⊙ z + bias [M, out]. x [M, in], W0 [out, in],
 * bias [out] or NULL, A [r, in], B [out, r], magnitude [out], norm [out] (lk_cpu_dora_weight_norm,
 * which never returns a zero norm unnoticed: its report counts them). r >= 1. */
LK_API lk_status lk_cpu_dora_forward(int64_t M, int64_t in, int64_t out, int64_t r,
                                     const float* x, const float* W0, const float* bias,
                                     const float* A, const float* B, float scale,
                                     const float* magnitude, const float* norm, float* y, float* u,
                                     float* z);

/* DoRA backward (norm detached), given dy [M, out] and the forward's u [M, r] and z [M, out]:
 *   dmagnitude[j] = Σ_t dy[t,j]·z[t,j] / norm[j]
 *   dz = dy ⊙ (magnitude / norm), then the LoRA backward on dz:
 *   dx = dz W0 + s·(dz B) A,  dA = s·(dz B)ᵀ x,  dB = s·dzᵀ u.
 * Each output may be NULL and is then not computed; outputs are overwritten. r >= 1. */
LK_API lk_status lk_cpu_dora_backward(int64_t M, int64_t in, int64_t out, int64_t r,
                                      const float* x, const float* W0, const float* A,
                                      const float* B, const float* u, const float* z,
                                      const float* dy, float scale, const float* magnitude,
                                      const float* norm, float* dx, float* dA, float* dB,
                                      float* dmagnitude);

/* DoRA's merge (invert = 0): W_i <- (m_i / n_i)·(W_i + s·B_i·A), and unmerge (invert = 1):
 * W_i <- (n_i / m_i)·W_i - s·B_i·A, each element computed in double (B_i·A one element at a time,
 * never an [out, in] temporary) and rounded to fp32 once, so a row where W0_i and s·B_i·A nearly
 * cancel is merged as accurately as any other. norm is the pre-merge norm (keep it for unmerge).
 * Every m_i and n_i must be finite and non-zero (else LK_ERR_INVALID_ARGUMENT naming the row, W
 * untouched): a zero factor could not be undone. W [out, in], A [r, in], B [out, r]. r >= 1. */
LK_API lk_status lk_cpu_dora_merge(int64_t out, int64_t in, int64_t r, float* W, const float* A,
                                   const float* B, const float* magnitude, const float* norm,
                                   float scale, int32_t invert);

/* QDoRA's norm: lk_cpu_dora_weight_norm over a 4-bit base, n_i = ‖deq(W)_i + s·B_i·A‖. Rows of
 * deq(W) are decoded a few at a time into per-thread scratch (never the whole matrix); codes and
 * stats as lk_cpu_nf4_matmul (W [out, in] flattened), w0_sqnorm = ‖deq(W)‖²_row [out]. */
LK_API lk_status lk_cpu_dora_weight_norm_4bit(int64_t out, int64_t in, int64_t r,
                                              const uint8_t* codes, const lk_quant_stats* stats,
                                              const float* w0_sqnorm, const float* A,
                                              const float* B, float scale, float* norm,
                                              lk_dora_norm_report* report);

/* The forward's column scale alone: y = (magnitude / norm) ⊙ z + bias (bias may be NULL; z may
 * be y). z, y [M, out]. Used where z comes from another base (QDoRA's 4-bit QLoRA forward). */
LK_API lk_status lk_cpu_dora_scale_columns(int64_t M, int64_t out, const float* z,
                                           const float* magnitude, const float* norm,
                                           const float* bias, float* y);

/* The backward's first pass alone: dmagnitude[j] = Σ_t dy·z / norm[j] and dz = dy ⊙ (magnitude /
 * norm); either output may be NULL. dy, z, dz [M, out]. */
LK_API lk_status lk_cpu_dora_scale_grad(int64_t M, int64_t out, const float* dy, const float* z,
                                        const float* magnitude, const float* norm,
                                        float* dmagnitude, float* dz);

/* y = x ⊙ lk_dropout_factor(seed, i, p) per flat element i (kernels/common.cuh: the mask the LoRA
 * kernels apply to x [M, in]), p in [0, 1); x may be y. DoRA's training path with dropout uses it
 * for dropout(x) and to mask dx. x, y [n]. */
LK_API lk_status lk_cpu_dora_dropout(int64_t n, const float* x, float p, uint64_t seed, float* y);

#endif /* LORA_KERNELS_DORA_H */
