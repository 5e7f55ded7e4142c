/* lora_kernels_gated.h: the gated-rank family, the CPU half of kernels/gated.cu.
 * Included by lora_kernels.h; same rules (flat prefixed C ABI, int64 sizes, lk_status, no throw).
 *
 * One computation serves SoRA, AdaLoRA, the mixture of rank-1 experts and MiRA's search:
 *   u[M,r]   = dropout(x) * A^T                                     (kept for the backward pass)
 *   y[M,out] = x * W0^T + bias + scale * (u .* G) * B^T
 * with a gate G that is one value per rank (gate_stride = 0: gate is [r], SoRA's g, AdaLoRA's
 * masked Lambda, MiRA's rank mask) or one per token and rank (gate_stride = r: gate is [M, r], a
 * dense softmax router). x [M,in], W0 [out,in], bias [out] or NULL, A [r,in], B [out,r]; the
 * gate is always fp32 (a SoRA threshold of 1e-3 is below bf16's resolution near 1). Dropout as
 * lk_cpu_lora_forward. r >= 1.
 *
 * The sparse form (a top-k router over a pool of E rank-1 experts, expert j = (B[:, j], A[j, :])):
 *   h[m,t]   = dropout(x_m) . A[e(m,t), :]                           [M,k] (kept for the backward)
 *   y[m,:]   = x_m * W0^T + bias + scale * sum_t w[m,t] * h[m,t] * B[:, e(m,t)]
 * expert [M,k] holds the chosen expert of each token's slot t as an exact integer in fp32 (the
 * C# tensors have no integer dtype; E <= 2^24), weight [M,k] its routing weight. Experts a token
 * did not pick are never read: the work grows with k, not with E. */
#ifndef LORA_KERNELS_GATED_H
#define LORA_KERNELS_GATED_H

#include <stdint.h>

/* ---- the dense gate ------------------------------------------------------------------------- */

/* gate_stride is 0 (gate [r]) or r (gate [M, r]). */
LK_API lk_status lk_cpu_gated_forward(int64_t M, int64_t in, int64_t out, int64_t r, const float* x,
                                      const float* W0, const float* bias, const float* A,
                                      const float* B, const float* gate, int64_t gate_stride,
                                      float scale, float dropout_p, uint64_t seed, float* y,
                                      float* u);

/* Backward, given dy [M,out] and the forward's u [M,r]:
 *   z        = scale * dy * B                        [M,r]  (internal)
 *   du       = z .* G                                [M,r]  (internal)
 *   dB[out,r] = scale * dy^T * (u .* G)
 *   dA[r,in]  = du^T * dropout(x)
 *   dx[M,in]  = dy * W0 + dropout'(du * A)           (the mask on the adapter term only)
 *   dgate    = sum_m z[m,:] .* u[m,:]  ([r], gate_stride 0)  or  z .* u  ([M,r], gate_stride r)
 * Each output may be NULL, and is then not computed. Outputs are overwritten. */
LK_API lk_status lk_cpu_gated_backward(int64_t M, int64_t in, int64_t out, int64_t r,
                                       const float* x, const float* W0, const float* A,
                                       const float* B, const float* gate, int64_t gate_stride,
                                       const float* u, const float* dy, float scale,
                                       float dropout_p, uint64_t seed, float* dx, float* dA,
                                       float* dB, float* dgate);

/* W[out,in] += scale * B * diag(gate) * A in place, gate [r] (unmerge passes -scale). */
LK_API lk_status lk_cpu_gated_merge(int64_t out, int64_t in, int64_t r, float* W, const float* A,
                                    const float* B, const float* gate, float scale);

/* ---- the sparse top-k form ------------------------------------------------------------------ */

/* A [E,in], B [out,E], expert and weight [M,k] (1 <= k <= E), h [M,k] written. An expert index
 * that is not an integer in [0, E) is LK_ERR_INVALID_ARGUMENT. */
LK_API lk_status lk_cpu_gated_topk_forward(int64_t M, int64_t in, int64_t out, int64_t E, int64_t k,
                                           const float* x, const float* W0, const float* bias,
                                           const float* A, const float* B, const float* expert,
                                           const float* weight, float scale, float dropout_p,
                                           uint64_t seed, float* y, float* h);

/* Backward of lk_cpu_gated_topk_forward given dy [M,out] and its h [M,k]:
 *   z[m,t]       = scale * dy_m . B[:, e(m,t)]
 *   dweight[m,t] = z[m,t] * h[m,t]
 *   dA[j,:]      = sum over slots with e(m,t) = j of z[m,t] * w[m,t] * dropout(x_m)   (0 if unpicked)
 *   dB[:,j]      = scale * sum over slots with e(m,t) = j of w[m,t] * h[m,t] * dy_m
 *   dx[m,:]      = dy_m * W0 + dropout'(sum_t z[m,t] * w[m,t] * A[e(m,t), :])
 * Each output may be NULL. Slots are summed in the order (m, t), so results are deterministic. */
LK_API lk_status lk_cpu_gated_topk_backward(int64_t M, int64_t in, int64_t out, int64_t E, int64_t k,
                                            const float* x, const float* W0, const float* A,
                                            const float* B, const float* expert,
                                            const float* weight, const float* h, const float* dy,
                                            float scale, float dropout_p, uint64_t seed, float* dx,
                                            float* dA, float* dB, float* dweight);

/* ---- the router's graph ops (fp32) ---------------------------------------------------------- */

/* probs[m,:] = softmax(logits[m,:]) over E columns (max subtracted; exp and the sum in fp32). */
LK_API lk_status lk_cpu_gated_softmax(int64_t M, int64_t E, const float* logits, float* probs);
/* dlogits = probs .* (dprobs - sum_j probs .* dprobs), row by row (the sum in double). */
LK_API lk_status lk_cpu_gated_softmax_backward(int64_t M, int64_t E, const float* probs,
                                               const float* dprobs, float* dlogits);

/* The k largest probabilities of each row, in decreasing order (equal values: the lower index
 * first), their indices in expert [M,k] and their values in weight [M,k], divided by their sum
 * when renormalize != 0 (Mixtral's norm_topk_prob). */
LK_API lk_status lk_cpu_gated_route_topk(int64_t M, int64_t E, int64_t k, const float* probs,
                                         int32_t renormalize, float* expert, float* weight);
/* dprobs [M,E] from dweight [M,k]: zero except at the chosen experts, where it is dweight[m,t]
 * (renormalize = 0) or (dweight[m,t] - sum_s dweight[m,s] * weight[m,s]) / sum_s probs[m, e(m,s)]. */
LK_API lk_status lk_cpu_gated_route_topk_backward(int64_t M, int64_t E, int64_t k, const float* probs,
                                                  const float* expert, const float* weight,
                                                  const float* dweight, int32_t renormalize,
                                                  float* dprobs);

/* The load-balancing loss's statistics (Switch / Mixtral, HF's load_balancing_loss_func):
 * stats[j] = the number of slots routed to expert j, stats[E + j] = sum_m probs[m,j]. The loss is
 * E * sum_j (stats[j] / M) * (stats[E + j] / M); 1 * k when perfectly balanced. */
LK_API lk_status lk_cpu_gated_balance(int64_t M, int64_t E, int64_t k, const float* probs,
                                      const float* expert, float* stats);
/* dprobs[m,j] = coefficient * E * stats[j] / M^2 (the counts carry no gradient). */
LK_API lk_status lk_cpu_gated_balance_backward(int64_t M, int64_t E, const float* stats,
                                               float coefficient, float* dprobs);

/* ---- SoRA ----------------------------------------------------------------------------------- */

/* SoRA's proximal step on n gate values, its three masked assignments in order (REFERENCE.md
 * 7.3): g > lambda: g -= lambda; then g < -lambda: g += lambda; then |g| < lambda: g = 0. So
 * values with lambda < |g| < 2 lambda end at 0 too, and |g| == lambda exactly is kept. */
LK_API lk_status lk_cpu_gated_soft_threshold(int64_t n, float* gate, float lambda);

/* ---- AdaLoRA -------------------------------------------------------------------------------- */

/* AdaLoRA's importance EMAs (REFERENCE.md 6.4), element by element over n values:
 *   I = |p * grad|;  ipt = beta1 * ipt + (1 - beta1) * I;  unc = beta2 * unc + (1 - beta2) * |I - ipt|
 * (unc uses the freshly updated ipt). */
LK_API lk_status lk_cpu_gated_sensitivity(int64_t n, const float* p, const float* grad, float* ipt,
                                          float* unc, float beta1, float beta2);
/* score[i] = ipt_E[i]*unc_E[i] + mean_k ipt_A[i,k]*unc_A[i,k] + mean_j ipt_B[j,i]*unc_B[j,i]
 * for the r triplets of a layer (A [r,in], E [r], B [out,r]); means in double. */
LK_API lk_status lk_cpu_gated_triplet_score(int64_t r, int64_t in, int64_t out, const float* ipt_A,
                                            const float* unc_A, const float* ipt_E,
                                            const float* unc_E, const float* ipt_B,
                                            const float* unc_B, float* score);
/* The Gram matrix of AdaLoRA's orthogonality regulariser: transpose = 0: C = X * X^T (X [rows,
 * cols], C [rows,rows], for lora_A); transpose = 1: C = X^T * X (C [cols,cols], for lora_B). */
LK_API lk_status lk_cpu_gated_gram(int64_t rows, int64_t cols, const float* X, int32_t transpose,
                                   float* C);
/* The regulariser's gradient for one factor: G = coefficient * (C - I) * X (transpose = 0) or
 * coefficient * X * (C - I) (transpose = 1), the shapes of lk_cpu_gated_gram; G is X's shape. */
LK_API lk_status lk_cpu_gated_orth_grad(int64_t rows, int64_t cols, const float* X, const float* C,
                                        int32_t transpose, float coefficient, float* G);

#endif /* LORA_KERNELS_GATED_H */
