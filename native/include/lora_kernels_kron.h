/* lora_kernels_kron.h: the Kronecker adapter (LoKr / KronA, REFERENCE.md §5), the CPU half of
 * kernels/kron.cu. Included by lora_kernels.h; same rules (flat prefixed C ABI, int64 sizes,
 * lk_status, no throw).
 *
 * A linear layer W0 [out, in] with out = out_l * out_k and in = in_m * in_n gets
 *   dW = scale * kron(w1, w2),  w1 [out_l, in_m], w2 [out_k, in_n]  (dense: low-rank factors are
 *   formed by the caller),  kron(w1, w2)[i*out_k + p, j*in_n + q] = w1[i, j] * w2[p, q].
 * The [out, in] product is never formed: with each token viewed as a matrix X_t [in_m, in_n]
 * (x[t] row-major) and Y_t [out_l, out_k] likewise,
 *   Y_t = scale * w1 * X_t * w2^T        ((w1 (x) w2) vec(X) = vec(w1 X w2^T) for row-major vec)
 * as two products per token: T_t = X_t * w2^T [in_m, out_k] (one GEMM over all tokens, since the
 * rows of every X_t are consecutive rows of x viewed [M*in_m, in_n]) and Y_t = w1 * T_t.
 * `workspace` holds T (or the backward's E) for every token: M * in_m * out_k floats, owned by the
 * caller (so every byte the op uses is the caller's, measurable, and never [out, in]). */
#ifndef LORA_KERNELS_KRON_H
#define LORA_KERNELS_KRON_H

#include <stdint.h>

/* y[M,out] = x * W0^T + bias + scale * x * kron(w1, w2)^T. x [M,in], W0 [out,in], bias [out] or NULL.
 * scale == 0 computes the base alone (w1, w2 and the workspace are not read).
 * FLOP 2*M*out*in (base) + 2*M*(in*out_k + out_l*in_m*out_k) (adapter). */
LK_API lk_status lk_cpu_kron_forward(int64_t M, int64_t out_l, int64_t out_k, int64_t in_m, int64_t in_n,
                                     const float* x, const float* W0, const float* bias, const float* w1,
                                     const float* w2, float scale, float* workspace, float* y);

/* Backward of lk_cpu_kron_forward given dy [M,out]:
 *   dx[M,in]      = dy * W0 + scale * dy * kron(w1, w2)      (per token: scale * w1^T * dY_t * w2)
 *   dw1[out_l,in_m] = scale * sum_t dY_t * w2 * X_t^T
 *   dw2[out_k,in_n] = scale * sum_t (w1^T * dY_t)^T * X_t
 * Each output may be NULL, and is then not computed (x may be NULL when dw1 and dw2 are). Outputs
 * are overwritten. Token sums run in a fixed order: the same bits for every thread count. */
LK_API lk_status lk_cpu_kron_backward(int64_t M, int64_t out_l, int64_t out_k, int64_t in_m, int64_t in_n,
                                      const float* x, const float* W0, const float* w1, const float* w2,
                                      const float* dy, float scale, float* workspace, float* dx, float* dw1,
                                      float* dw2);

/* W += scale * kron(w1, w2) in place, for a linear weight (spatial = 1) or a convolution weight
 * [out, in, kh, kw] (spatial = kh * kw) with w2 [out_k, in_n, kh, kw] and w1 [out_l, in_m] (PEFT's
 * make_kron unsqueezes w1 to [out_l, in_m, 1, 1]):
 *   W[((i*out_k + p)*in + j*in_n + q)*spatial + s] += scale * w1[i, j] * w2[(p*in_n + q)*spatial + s].
 * Unmerge passes -scale. Bound by reading and writing W (8 bytes per element). */
LK_API lk_status lk_cpu_kron_merge(int64_t out_l, int64_t out_k, int64_t in_m, int64_t in_n, int64_t spatial,
                                   float* W, const float* w1, const float* w2, float scale);

#endif /* LORA_KERNELS_KRON_H */
