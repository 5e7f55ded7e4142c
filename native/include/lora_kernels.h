/* lora_kernels.h: the C ABI of LoraKernels' two native libraries.
 *
 *   libloraknl_cpu.so   - CPU kernels (native/cpu): lk_cpu_*
 *   libloraknl_simt.so  - the SIMT emulator running kernels/*.cu on the CPU (native/simt): lk_simt_*
 *
 * Rules (STYLE.md lesson 3): flat, prefixed names; element counts and dimensions are int64_t;
 * every function returns an lk_status and never throws, exits or aborts; on failure the
 * thread's last error message is kept and copied out by lk_*_last_error. Matrices are
 * row-major, dense (leading dimension = number of columns) unless an ld argument says otherwise.
 * Shapes follow PyTorch: W0 [out, in], A [r, in], B [out, r], activations [M, features].
 */
#ifndef LORA_KERNELS_H
#define LORA_KERNELS_H

#include <stdint.h>

#ifdef __cplusplus
#define LK_EXTERN_C extern "C"
#else
#define LK_EXTERN_C
#endif
#define LK_API LK_EXTERN_C __attribute__((visibility("default")))

typedef int32_t lk_status;
enum {
    LK_OK = 0,
    LK_ERR_INVALID_ARGUMENT = 1, /* null pointer where one is required, negative size, bad launch
                                    geometry or shared-memory size, ... */
    LK_ERR_OUT_OF_MEMORY = 2,
    LK_ERR_UNSUPPORTED = 3,      /* e.g. a kernel that needs more shared memory than allowed */
    LK_ERR_INTERNAL = 4,
    LK_ERR_KERNEL_FAULT = 5,     /* emulator: barrier not reached by all threads, collective with
                                    missing lanes, deadlock, __trap() */
    LK_ERR_NOT_FOUND = 6         /* emulator: no kernel of that name */
};

/* A static, human-readable name for a status ("LK_ERR_INVALID_ARGUMENT", ...). */
LK_API const char* lk_status_name(lk_status status);

/* ============================== CPU kernels (libloraknl_cpu) ================================ */

/* Copies the calling thread's last error message (UTF-8, NUL-terminated, truncated to fit) into
 * buffer and returns the message's full length in bytes (without the NUL). */
LK_API int64_t lk_cpu_last_error(char* buffer, int64_t capacity);

/* Bit 0: AVX2+FMA kernels in use; bit 1: AVX-512F kernels in use; 0: portable fallback. */
LK_API int32_t lk_cpu_isa(void);
/* OpenMP threads used by every CPU kernel (default: the number of cores). n <= 0 restores the default;
 * n > LK_CPU_MAX_THREADS is LK_ERR_INVALID_ARGUMENT (the count is unchanged). */
#define LK_CPU_MAX_THREADS 1024
LK_API lk_status lk_cpu_set_num_threads(int32_t n);
LK_API int32_t lk_cpu_get_num_threads(void);

/* C[M,N] = alpha * op(A) * op(B) + beta * C. op(X) = X (trans = 0) or X^T (trans = 1).
 * op(A) is [M,K], op(B) is [K,N]; A is stored [M,K] (or [K,M] when trans_a), B stored [K,N]
 * (or [N,K] when trans_b). beta == 0 overwrites C without reading it (NaN in C is not propagated). */
LK_API lk_status lk_cpu_sgemm(int32_t trans_a, int32_t trans_b, int64_t M, int64_t N, int64_t K,
                              float alpha, const float* A, int64_t lda, const float* B, int64_t ldb,
                              float beta, float* C, int64_t ldc);

/* Fused LoRA forward:
 *   u[M,r]   = dropout(x) * A^T                       (kept for the backward pass)
 *   y[M,out] = x * W0^T + bias + scale * u * B^T
 * x [M,in], W0 [out,in], bias [out] or NULL, A [r,in], B [out,r]. dropout_p in [0,1): the mask is
 * lk_dropout_factor(seed, m*in + k, dropout_p) from kernels/common.cuh. r may be 0 (plain linear;
 * A, B, u may then be NULL). */
LK_API lk_status lk_cpu_lora_forward(int64_t M, int64_t in, int64_t out, int64_t r,
                                     const float* x, const float* W0, const float* bias,
                                     const float* A, const float* B, float scale,
                                     float dropout_p, uint64_t seed, float* y, float* u);

/* LoRA backward, given dy [M,out] and the forward's u [M,r]:
 *   du       = scale * dy * B                    [M,r]   (internal)
 *   dB[out,r] = scale * dy^T * u
 *   dA[r,in]  = du^T * dropout(x)
 *   dx[M,in]  = dy * W0 + dropout'(du * A)       (the mask applied to the LoRA term only)
 * Each output may be NULL, and is then not computed. Outputs are overwritten, not accumulated. */
LK_API lk_status lk_cpu_lora_backward(int64_t M, int64_t in, int64_t out, int64_t r,
                                      const float* x, const float* W0, const float* A,
                                      const float* B, const float* u, const float* dy, float scale,
                                      float dropout_p, uint64_t seed, float* dx, float* dA,
                                      float* dB);

/* W[out,in] += scale * B[out,r] * A[r,in], in place. Unmerge passes -scale. */
LK_API lk_status lk_cpu_lora_merge(int64_t out, int64_t in, int64_t r, float* W, const float* A,
                                   const float* B, float scale);

/* Element-wise ops used by the autograd tape (n elements, fp32). */
LK_API lk_status lk_cpu_relu_forward(int64_t n, const float* x, float* y);
LK_API lk_status lk_cpu_relu_backward(int64_t n, const float* x, const float* dy, float* dx);
/* y += alpha * x */
LK_API lk_status lk_cpu_axpy(int64_t n, float alpha, const float* x, float* y);
/* loss[0] = mean((pred - target)^2); dpred (nullable) = 2 * (pred - target) / n. Sums in double
 * over fixed chunks in a fixed order: the same bits for any thread count. */
LK_API lk_status lk_cpu_mse_loss(int64_t n, const float* pred, const float* target, float* loss,
                                 float* dpred);
/* Softmax cross-entropy over the rows of logits [M, C] with class targets [M], as
 * torch.nn.functional.cross_entropy(reduction="mean", ignore_index, label_smoothing):
 * loss[0] = mean over rows with targets[i] != ignore_index of
 *           lse_i - (1 - label_smoothing) * x[i, t_i] - label_smoothing * mean_j x[i, j]
 * (NaN when no row counts); dlogits (nullable) = (softmax - (1 - ls) * onehot - ls / C) / count,
 * 0 on ignored rows. A target outside [0, C) that is not ignore_index is an invalid argument.
 * The same bits for any thread count. */
LK_API lk_status lk_cpu_cross_entropy(int64_t M, int64_t C, const float* logits, const int32_t* targets,
                                      int32_t ignore_index, float label_smoothing, float* loss,
                                      float* dlogits);
/* index[0] = the smallest i < n with x[i] NaN or +-Inf, or -1 when all n values are finite. */
LK_API lk_status lk_cpu_first_nonfinite(int64_t n, const float* x, int64_t* index);
/* bf16 <-> fp32 conversion with the rounding of kernels/common.cuh (round to nearest even). */
LK_API lk_status lk_cpu_bf16_to_f32(int64_t n, const uint16_t* src, float* dst);
LK_API lk_status lk_cpu_f32_to_bf16(int64_t n, const float* src, uint16_t* dst);

/* ============================ SIMT emulator (libloraknl_simt) =============================== */

/* Copies the calling thread's last emulator error (which kernel, which block/thread, what went
 * wrong) into buffer; returns its full length. */
LK_API int64_t lk_simt_last_error(char* buffer, int64_t capacity);

/* Launches a registered kernel exactly as cuLaunchKernel would: args[i] points at the value of
 * parameter i (device pointers are host addresses under the emulator). Runs to completion
 * before returning (the emulator's stream is synchronous). Blocks may run in parallel on
 * worker threads; the threads of one block run as fibers on one worker. */
LK_API lk_status lk_simt_launch(const char* kernel, uint32_t grid_x, uint32_t grid_y,
                                uint32_t grid_z, uint32_t block_x, uint32_t block_y,
                                uint32_t block_z, uint32_t dynamic_shared_bytes, void** args);

/* Registered kernels, for discovery and tests. Names are valid for the library's lifetime. */
LK_API int32_t lk_simt_kernel_count(void);
LK_API const char* lk_simt_kernel_name(int32_t index);

/* Worker threads that run blocks in parallel (default: the number of cores; 1 = sequential). */
LK_API lk_status lk_simt_set_num_threads(int32_t n);

/* Limits the emulator enforces, matching an sm_80/sm_90 GPU's defaults. */
#define LK_SIMT_MAX_THREADS_PER_BLOCK 1024
#define LK_SIMT_MAX_STATIC_SHARED_BYTES (48 * 1024)
#define LK_SIMT_MAX_DYNAMIC_SHARED_BYTES (227 * 1024)

/* Kernel families beyond plain LoRA, one header each. */
#include "lora_kernels_linalg.h"
#include "lora_kernels_nf4.h"
#include "lora_kernels_dora.h"
#include "lora_kernels_vera.h"
#include "lora_kernels_kron.h"
#include "lora_kernels_tucker.h"
#include "lora_kernels_conv.h"
#include "lora_kernels_optim.h"
#include "lora_kernels_gated.h"
#include "lora_kernels_segmented.h"
#include "lora_kernels_moe.h"
#include "lora_kernels_ssm.h"

#endif /* LORA_KERNELS_H */
