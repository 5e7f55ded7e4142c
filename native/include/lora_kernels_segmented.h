/* lora_kernels_segmented.h: segmented (multi-adapter) LoRA, the CPU half of kernels/segmented.cu.
 * Included by lora_kernels.h; same rules (flat prefixed C ABI, int64 sizes, lk_status, no throw).
 *
 * The rows of x [M, in] are grouped into segments, each with its own adapter from a table
 * (Punica's SGMV: "shrink" is x·Aᵀ, "expand" is u·Bᵀ; S-LoRA, vLLM multi-LoRA):
 *   segments   [n_segments][3] int32: (start, length, adapter), rows [start, start + length),
 *              adapter in [-1, n_adapters); -1 means no adapter. Segments lie inside [0, M) and do
 *              not overlap; a length of 0 is allowed; they may come in any order. A row in no
 *              segment gets no adapter. A per-row adapter index is the special case of segments of
 *              one row (or runs of equal indices).
 *   A_table    [n_adapters, r, in], B_table [n_adapters, out, r], scales [n_adapters] (s_a).
 *              Ranks differ by padding: an adapter of rank r_a < r holds zeros in rows r_a.. of its
 *              A and columns r_a.. of its B, so every adapter runs r (the padded terms add zeros).
 * The base is exactly one of
 *   W0         [out, in]: one dense product x·W0ᵀ for the whole batch (a mixed-adapter batch), or
 *   W0_table   [n_adapters, out, in]: each row's base is its segment's adapter's (grouped expert
 *              GEMMs, MoE); then every row must lie in a segment whose adapter is >= 0.
 * r may be 0 (a plain dense or grouped product: A_table, B_table, scales and u may be NULL).
 * No dropout: the adapter branch reads x as it is. Status LK_ERR_INVALID_ARGUMENT names the first
 * bad argument or segment (overlap, out-of-range adapter, a segment past M, a row without a base). */
#ifndef LORA_KERNELS_SEGMENTED_H
#define LORA_KERNELS_SEGMENTED_H

#include <stdint.h>

/* Forward:
 *   u[m, :] = x[m, :]·A_aᵀ               for m in a segment of adapter a >= 0, else 0   [M, r]
 *   y[m, :] = x[m, :]·W0ᵀ + bias + s_a·u[m, :]·B_aᵀ     (W0_(a) from the table with W0_table)
 * bias [out] or NULL; y and u are overwritten. */
LK_API lk_status lk_cpu_segmented_forward(int64_t M, int64_t in, int64_t out, int64_t r,
                                          int64_t n_adapters, const float* x, const float* W0,
                                          const float* W0_table, const float* bias,
                                          const float* A_table, const float* B_table,
                                          const float* scales, const int32_t* segments,
                                          int64_t n_segments, float* y, float* u);

/* Backward, given dy [M, out] and the forward's u [M, r] (the base is frozen):
 *   du[m, :]  = s_a·dy[m, :]·B_a                                   [M, r] (internal)
 *   dB_table[a] = s_a·Σ_{m in adapter a} dy[m, :]ᵀ·u[m, :]         [n_adapters, out, r]
 *   dA_table[a] = Σ_{m in adapter a} du[m, :]ᵀ·x[m, :]             [n_adapters, r, in]
 *   dx[m, :]  = dy[m, :]·W0_(a) + du[m, :]·A_a                     [M, in]
 * An adapter without rows gets zero gradients. Sums over an adapter's segments run in the table's
 * order. Each output may be NULL, and is then not computed; outputs are overwritten. */
LK_API lk_status lk_cpu_segmented_backward(int64_t M, int64_t in, int64_t out, int64_t r,
                                           int64_t n_adapters, const float* x, const float* W0,
                                           const float* W0_table, const float* A_table,
                                           const float* B_table, const float* scales,
                                           const float* u, const float* dy,
                                           const int32_t* segments, int64_t n_segments,
                                           float* dx, float* dA_table, float* dB_table);

#endif /* LORA_KERNELS_SEGMENTED_H */
