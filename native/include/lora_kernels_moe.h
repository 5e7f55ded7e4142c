/* lora_kernels_moe.h: the mixture-of-experts steps around the segmented products, the CPU half of
 * kernels/moe.cu. Included by lora_kernels.h; same rules (flat prefixed C ABI, int64 sizes, lk_status).
 *
 * A token-choice MoE layer routes each of T tokens to k experts; the T·k assignments are sorted by
 * expert (assignment p = 0..P-1, P = T·k, expert segments consecutive), so every expert's rows form one
 * segment of the segmented products (lora_kernels_segmented.h). The routing itself (top-k, softmax)
 * runs on the host. What moves rows between token order and sorted order is here:
 *   tokens    [P] int32: the token of sorted assignment p;
 *   positions [T·k] int32: the sorted position of token t's j-th choice (positions[t·k + j]);
 *   gates     [P] fp32: the routing weight of assignment p (sorted order).
 * SwiGLU experts apply h = silu(g) ⊙ u between their gate/up and down products, silu(g) = g·σ(g). */
#ifndef LORA_KERNELS_MOE_H
#define LORA_KERNELS_MOE_H

#include <stdint.h>

/* xs[p, :] = x[tokens[p], :] for p < P; x [T, width] (T only bounds the tokens), xs [P, width]. */
LK_API lk_status lk_cpu_moe_gather(int64_t P, int64_t width, const float* x, const int32_t* tokens, float* xs);

/* y[t, :] = bias + Σ_{j<k} gates[positions[t·k + j]]·o[positions[t·k + j], :] for t < T.
 * gates NULL: weights of 1 (the sum of a token's rows, e.g. dx in the backward); bias [width] or NULL.
 * The k terms are added in order j = 0..k-1 (deterministic). */
LK_API lk_status lk_cpu_moe_combine(int64_t T, int64_t k, int64_t width, const float* o, const int32_t* positions,
                                    const float* gates, const float* bias, float* y);

/* The combine's backward for assignment p (token t = tokens[p]):
 *   d_o[p, :]  = gates[p]·dy[t, :]            [P, width]  (NULL: not computed)
 *   dgates[p]  = Σ_n dy[t, n]·o[p, n]          [P]         (NULL: not computed; o may then be NULL) */
LK_API lk_status lk_cpu_moe_combine_backward(int64_t P, int64_t width, const float* dy, const float* o,
                                             const int32_t* tokens, const float* gates, float* d_o, float* dgates);

/* h = silu(g) ⊙ u over n elements. */
LK_API lk_status lk_cpu_moe_swiglu(int64_t n, const float* g, const float* u, float* h);

/* dg = dh ⊙ u ⊙ σ(g)·(1 + g·(1 - σ(g))), du = dh ⊙ silu(g); either output may be NULL. */
LK_API lk_status lk_cpu_moe_swiglu_backward(int64_t n, const float* g, const float* u, const float* dh, float* dg,
                                            float* du);

#endif /* LORA_KERNELS_MOE_H */
