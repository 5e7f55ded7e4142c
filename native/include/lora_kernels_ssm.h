/* lora_kernels_ssm.h: the selective scan (Mamba's S6) and the causal depthwise convolution of a Mamba
 * block, the CPU half of kernels/ssm.cu. Included by lora_kernels.h; same rules (flat prefixed C ABI,
 * int64 sizes, lk_status, no throw).
 *
 * Sequences are token-major: a tensor [batch, L, width] is stored as rows r = b·L + t with a row stride
 * (ld_*, >= width), so the block's column slices (z inside in_proj's output, B and C inside x_proj's) are
 * read and written in place. Definitions (Mamba's selective_scan_ref, mamba_simple.py), per batch b,
 * channel d < D, state n < N, step t < L:
 *   Δ_t      = softplus(delta_t[d] + delta_bias[d])          (delta_bias NULL: 0; softplus(x) = x past 20)
 *   h_t[n]   = exp(Δ_t·A[d, n])·h_{t-1}[n] + Δ_t·Bm_t[n]·u_t[d]     h_{-1} = h0[b, d, n] (NULL: 0)
 *   y_t[d]   = (Σ_n Cm_t[n]·h_t[n] + Dskip[d]·u_t[d])·silu(z_t[d])   (z NULL: no gate)
 * A [D, N] (Mamba: -exp(A_log)), Bm and Cm [batch·L, N] (shared by every channel; they may be the same
 * buffer with one stride), Dskip [D]. N <= LK_SSM_MAX_STATE. The scan's backward is for Mamba with LoRA on
 * its projections: A, Dskip and delta_bias are frozen, so their gradients are not formed. */
#ifndef LORA_KERNELS_SSM_H
#define LORA_KERNELS_SSM_H

#include <stdint.h>

/* The largest state size N the kernels hold in registers (Mamba's d_state is 16). */
#define LK_SSM_MAX_STATE 16

/* The scan over whole sequences (training and prefill): y [batch·L, D] (row stride ld_y) and, when
 * h_last is not NULL, the state after the last step [batch, D, N] (for decode to continue from). */
LK_API lk_status lk_cpu_ssm_scan_forward(int64_t batch, int64_t L, int64_t D, int64_t N, const float* u, int64_t ld_u,
                                         const float* delta, int64_t ld_delta, const float* delta_bias, const float* A,
                                         const float* Bm, const float* Cm, int64_t ld_bc, const float* Dskip,
                                         const float* z, int64_t ld_z, const float* h0, float* y, int64_t ld_y,
                                         float* h_last);

/* The scan's backward, given dy [batch·L, D] (the gradient of the gated y): the adjoint g_t[n] = ∂L/∂h_t[n]
 * runs backwards, g_t = Cm_t·dy'_t + exp(Δ_{t+1}·A)·g_{t+1} with dy'_t = dy_t·silu(z_t), and
 *   du_t[d]      = Σ_n g_t[n]·Δ_t·Bm_t[n] + Dskip[d]·dy'_t
 *   ddelta_t[d]  = σ(delta_t + delta_bias)·Σ_n g_t[n]·(A[d,n]·exp(Δ_t·A[d,n])·h_{t-1}[n] + Bm_t[n]·u_t[d])
 *   dBm_t[n]     = Σ_d g_t[n]·Δ_t·u_t[d],   dCm_t[n] = Σ_d h_t[n]·dy'_t[d]   (sums over d in order)
 *   dz_t[d]      = dy_t·(Σ_n Cm_t[n]·h_t[n] + Dskip·u_t)·silu'(z_t)
 * Each output may be NULL (not computed); dBm and dCm share ld_dbc (they may be slices of one buffer). */
LK_API lk_status lk_cpu_ssm_scan_backward(int64_t batch, int64_t L, int64_t D, int64_t N, const float* u, int64_t ld_u,
                                          const float* delta, int64_t ld_delta, const float* delta_bias, const float* A,
                                          const float* Bm, const float* Cm, int64_t ld_bc, const float* Dskip,
                                          const float* z, int64_t ld_z, const float* h0, const float* dy, int64_t ld_dy,
                                          float* du, int64_t ld_du, float* ddelta, int64_t ld_ddelta, float* dBm,
                                          float* dCm, int64_t ld_dbc, float* dz, int64_t ld_dz);

/* One decode step (the recurrence for one new token per batch row): rows b < batch of u, delta, z [batch, D]
 * (strides as above), Bm, Cm [batch, N] (stride ld_bc); h [batch, D, N] is updated in place; y [batch, D]. */
LK_API lk_status lk_cpu_ssm_step(int64_t batch, int64_t D, int64_t N, const float* u, int64_t ld_u, const float* delta,
                                 int64_t ld_delta, const float* delta_bias, const float* A, const float* Bm,
                                 const float* Cm, int64_t ld_bc, const float* Dskip, const float* z, int64_t ld_z,
                                 float* h, float* y, int64_t ld_y);

/* The block's causal depthwise convolution and SiLU (Conv1d(D, D, K, groups = D, padding = K - 1), truncated
 * to L): y_t[d] = silu(bias[d] + Σ_{j<K} weight[d, j]·x_{t-K+1+j}[d]), x_{<0} = 0 within each sequence.
 * x [batch·L, D] (row stride ld_x), weight [D, K], bias [D] or NULL, y [batch·L, D] (ld_y). */
LK_API lk_status lk_cpu_ssm_conv_forward(int64_t batch, int64_t L, int64_t D, int64_t K, const float* x, int64_t ld_x,
                                         const float* weight, const float* bias, float* y, int64_t ld_y);

/* Its backward to the input (weight and bias are frozen): dx_s[d] = Σ_j weight[d, j]·g_{s+K-1-j}[d] over
 * the steps the input reached, with g_t = dy_t·silu'(pre-activation_t) (recomputed). dx [batch·L, D] (ld_dx). */
LK_API lk_status lk_cpu_ssm_conv_backward(int64_t batch, int64_t L, int64_t D, int64_t K, const float* x, int64_t ld_x,
                                          const float* weight, const float* bias, const float* dy, int64_t ld_dy,
                                          float* dx, int64_t ld_dx);

/* One decode step of the convolution: state [batch, D, K - 1] holds each channel's last K - 1 inputs
 * (oldest first) and is shifted in place; x [batch, D] (ld_x), y [batch, D] (ld_y). */
LK_API lk_status lk_cpu_ssm_conv_step(int64_t batch, int64_t D, int64_t K, const float* x, int64_t ld_x,
                                      const float* weight, const float* bias, float* state, float* y, int64_t ld_y);

/* dst[r·ld_dst + c] = src[r·ld_src + c] for r < rows, c < width: moves a column slice of the block's
 * activations (dt out of x_proj's output, and its gradient back) between strided and dense storage. */
LK_API lk_status lk_cpu_ssm_copy_columns(int64_t rows, int64_t width, const float* src, int64_t ld_src, float* dst,
                                         int64_t ld_dst);

#endif /* LORA_KERNELS_SSM_H */
