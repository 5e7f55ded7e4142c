/* lora_kernels_dora.h: DoRA (weight-decomposed LoRA, REFERENCE.md §2), the CPU half of
 * kernels/dora.cu. Included by lora_kernels.h; same rules (flat prefixed C ABI, int64 sizes,
 * lk_status, no throw).
 *
 * Math (PEFT, dropout 0 or eval): magnitude m [out], weight norm n = ‖W0 + s·B·A‖_row [out]
 * (detached: no gradient flows through n), g = m / n,
 *   u = x Aᵀ [M, r],  z = x W0ᵀ + s·u Bᵀ [M, out],  y = g ⊙ z + bias   (g scales each column j).
 * The norm never forms B·A (REFERENCE.md §11):
 *   n_i² = ‖w_i‖² + 2s·(W0 Aᵀ)_i·B_i + s²·B_i (A Aᵀ) B_iᵀ, clamped at 0 before the sqrt,
 * with ‖w_i‖² computed once per frozen W0 (lk_cpu_dora_row_sqnorm). A row whose norm is 0 gives
 * g = m / 0 = ±inf (or NaN for m = 0), as PEFT's division does.
 * Dropout > 0 in training (PEFT's second base matmul on dropout(x)) is composed by the C# side
 * (Ops.Dora.ForwardWithDropout) from these exports, the LoRA ones and lk_cpu_dora_dropout. */
#ifndef LORA_KERNELS_DORA_H
#define LORA_KERNELS_DORA_H

#include <stdint.h>

/* sqnorm[i] = Σ_k W0[i,k]² (summed in double, stored fp32). W0 [out, in], sqnorm [out]. */
LK_API lk_status lk_cpu_dora_row_sqnorm(int64_t out, int64_t in, const float* W0, float* sqnorm);

/* norm[i] = sqrt(max(0, w0_sqnorm[i] + 2s·P_i·B_i + s²·B_i G B_iᵀ)) with P = W0 Aᵀ [out, r] and
 * G = A Aᵀ [r, r] (two GEMMs; the per-row combination in double). W0 [out, in], w0_sqnorm [out]
 * (from lk_cpu_dora_row_sqnorm), A [r, in], B [out, r], norm [out]. r >= 1. */
LK_API lk_status lk_cpu_dora_weight_norm(int64_t out, int64_t in, int64_t r, const float* W0,
                                         const float* w0_sqnorm, const float* A, const float* B,
                                         float scale, float* norm);

/* DoRA forward: u = x Aᵀ [M, r], z = x W0ᵀ + s·u Bᵀ [M, out] (kept for the backward; may be
 * NULL for inference), y = (magnitude / norm) ⊙ z + bias [M, out]. x [M, in], W0 [out, in],
 * bias [out] or NULL, A [r, in], B [out, r], magnitude [out], norm [out] (lk_cpu_dora_weight_norm).
 * r >= 1. */
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

/* W[i, :] *= magnitude[i] / norm[i] (invert = 0), or *= norm[i] / magnitude[i] (invert = 1):
 * the row scaling of DoRA's merge (W0 + s·B·A, then scaled) and unmerge (unscaled, then - s·B·A).
 * W [out, in]. */
LK_API lk_status lk_cpu_dora_scale_rows(int64_t out, int64_t in, float* W, const float* magnitude,
                                        const float* norm, int32_t invert);

/* QDoRA's norm (lk_cpu_dora_weight_norm with P given transposed, as A·deq(W)ᵀ from the 4-bit
 * matmul): Pt = (W0 Aᵀ)ᵀ [r, out], G = A Aᵀ formed here. w0_sqnorm [out], A [r, in], B [out, r],
 * norm [out]. r >= 1. */
LK_API lk_status lk_cpu_dora_weight_norm_pt(int64_t out, int64_t in, int64_t r,
                                            const float* w0_sqnorm, const float* Pt,
                                            const float* A, const float* B, float scale,
                                            float* norm);

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
