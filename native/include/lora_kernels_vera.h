/* lora_kernels_vera.h: VeRA (REFERENCE.md §3), the CPU half of kernels/vera.cu.
 * Included by lora_kernels.h; same rules (flat prefixed C ABI, int64 sizes, lk_status, no throw).
 *
 * Every VeRA layer reads the top-left slices of one shared frozen pair:
 *   A = vera_A[:, :in]   stored with row stride lda >= in   (vera_A is [r, max_in], lda = max_in)
 *   B = vera_B[:out, :]  the first `out` rows of vera_B      ([max_out, r], dense: stride r)
 * and trains two vectors, lambda_d [r] and lambda_b [out]:
 *   u[M,r]   = dropout(x) * A^T                                   (kept for the backward pass)
 *   y[M,out] = x * W0^T + bias + lambda_b .* ((lambda_d .* u) * B^T)
 * x [M,in], W0 [out,in], bias [out] or NULL. Dropout as lk_cpu_lora_forward. r >= 1. */
#ifndef LORA_KERNELS_VERA_H
#define LORA_KERNELS_VERA_H

#include <stdint.h>

LK_API lk_status lk_cpu_vera_forward(int64_t M, int64_t in, int64_t out, int64_t r, const float* x,
                                     const float* W0, const float* bias, const float* A, int64_t lda,
                                     const float* B, const float* lambda_d, const float* lambda_b,
                                     float dropout_p, uint64_t seed, float* y, float* u);

/* VeRA backward, given dy [M,out] and the forward's u [M,r] (A and B are frozen: no gradients):
 *   dv          = (dy .* lambda_b) * B                     [M,r]   (internal)
 *   dlambda_b[j] = sum_t dy[t,j] * ((lambda_d .* u) * B^T)[t,j]     [out]
 *   dlambda_d[i] = sum_t dv[t,i] * u[t,i]                           [r]
 *   dx[M,in]    = dy * W0 + dropout'((dv .* lambda_d) * A)  (the mask on the adapter term only)
 * Each output may be NULL, and is then not computed. Outputs are overwritten. */
LK_API lk_status lk_cpu_vera_backward(int64_t M, int64_t in, int64_t out, int64_t r,
                                      const float* W0, const float* A, int64_t lda, const float* B,
                                      const float* lambda_d, const float* lambda_b, const float* u,
                                      const float* dy, float dropout_p, uint64_t seed, float* dx,
                                      float* dlambda_d, float* dlambda_b);

/* W[out,in] += scale * diag(lambda_b) * B * diag(lambda_d) * A, in place (PEFT's merge is
 * scale = 1; unmerge passes -1). */
LK_API lk_status lk_cpu_vera_merge(int64_t out, int64_t in, int64_t r, float* W, const float* A,
                                   int64_t lda, const float* B, const float* lambda_d,
                                   const float* lambda_b, float scale);

#endif /* LORA_KERNELS_VERA_H */
