/* lora_kernels_tucker.h: the Tucker family's mode products (FLoRA / LoTR), the CPU half of
 * kernels/tucker.cu. Included by lora_kernels.h; same rules (flat prefixed C ABI, int64 sizes,
 * lk_status, no throw).
 *
 * A Tucker adapter dW = s * (S x_1 U_1 x_2 U_2 ... x_N U_N) is a chain of mode products, and the
 * mode-n product of a tensor viewed as [batch, I, inner] with U [J, I] is a batched product
 * Y_b [J, inner] = U * X_b [I, inner]. One strided batched matrix product therefore serves every
 * mode product of this family and the per-token and per-image products of the Kronecker and
 * convolution adapters:
 *
 *   reduce = 0:  C_b = alpha * op(A_b) * op(B_b) + beta * C_b     for b in [0, batch)
 *   reduce = 1:  C   = alpha * sum_b op(A_b) * op(B_b) + beta * C
 *
 * X_b = X + b * stride_x (stride 0: one matrix shared by every b); each X_b dense and row-major:
 * op(A_b) [M, K] is stored [M, K], or [K, M] when trans_a; op(B_b) [K, N] is stored [K, N], or
 * [N, K] when trans_b; C_b [M, N]. beta == 0 overwrites C without reading it. A reduction sums in
 * a fixed order that depends only on the shapes (the same bits for every thread count).
 * FLOP 2 * batch * M * N * K. */
#ifndef LORA_KERNELS_TUCKER_H
#define LORA_KERNELS_TUCKER_H

#include <stdint.h>

LK_API lk_status lk_cpu_tucker_batched_matmul(int64_t batch, int64_t M, int64_t N, int64_t K, int32_t trans_a,
                                              const float* A, int64_t stride_a, int32_t trans_b, const float* B,
                                              int64_t stride_b, float alpha, float beta, float* C,
                                              int64_t stride_c, int32_t reduce);

#endif /* LORA_KERNELS_TUCKER_H */
