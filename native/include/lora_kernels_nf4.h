/* lora_kernels_nf4.h: 4-bit (NF4/FP4) quantization and QLoRA, the CPU half of kernels/nf4.cu.
 * Included by lora_kernels.h; same rules (flat prefixed C ABI, int64 sizes, lk_status, no throw).
 *
 * Formats are bitsandbytes' exactly (REFERENCE.md §8, beside the repository in shared/):
 *   - W [out, in] (or any tensor) is flattened row-major into n elements; blocks of `blocksize`
 *     consecutive elements (a power of two in [32, 4096]; bnb's default 64) share one fp32 absmax.
 *   - codes: uint8[(n + 1) / 2], element 2k in the HIGH nibble, 2k + 1 in the LOW nibble; an odd
 *     n pads the last low nibble with the code of 0.0 (NF4 7, FP4 0).
 *   - quantize: q = code whose table value is nearest w * (1 / absmax) with bnb's tie rule (the
 *     float32 midpoints, a value exactly on a midpoint goes to the lower code); an all-zero block
 *     encodes 0.0 (NF4 code 7: REFERENCE.md §11).
 *   - dequantize: w = table[q] * absmax[block].
 *   - double quantization (bnb compress_statistics): offset = mean(absmax); nested blocks of 256
 *     absmax values; absmax2[c] = max |absmax - offset| over nested block c; qabsmax[b] = index of
 *     the nearest signed dynamic-8-bit code (REFERENCE.md Appendix B) to (absmax[b] - offset) *
 *     (1 / absmax2[b >> 8]); decode absmax[b] = dyn8[qabsmax[b]] * absmax2[b >> 8] + offset.
 *
 * Quantization statistics of one tensor, passed to every consumer: either plain (absmax != NULL,
 * nested fields NULL) or double-quantized (absmax == NULL; qabsmax, absmax2 and offset used). */
#ifndef LORA_KERNELS_NF4_H
#define LORA_KERNELS_NF4_H

#include <stdint.h>

enum { LK_QUANT_NF4 = 0, LK_QUANT_FP4 = 1 };
#define LK_NESTED_BLOCKSIZE 256

typedef struct lk_quant_stats {
    int32_t quant_type;      /* LK_QUANT_NF4 or LK_QUANT_FP4 */
    int32_t reserved;        /* 0 */
    int64_t blocksize;       /* 32..4096, power of two */
    const float* absmax;     /* [nblocks] or NULL when nested */
    const uint8_t* qabsmax;  /* [nblocks] when nested, else NULL */
    const float* absmax2;    /* [ceil(nblocks / 256)] when nested, else NULL */
    float offset;            /* mean of the first-level absmax when nested */
    int32_t reserved2;       /* 0 */
} lk_quant_stats;

/* The 16-entry code table of quant_type (fp32), and the 256-entry signed dynamic map. */
LK_API lk_status lk_cpu_quant_table(int32_t quant_type, float* table16);
LK_API lk_status lk_cpu_dynamic_map_signed(float* table256);

/* codes[(n+1)/2], absmax[ceil(n/blocksize)] <- w[n]. NaN or Inf in w: LK_ERR_INVALID_ARGUMENT
 * naming the first bad index; nothing is written in that case. */
LK_API lk_status lk_cpu_quantize_4bit(int32_t quant_type, int64_t n, int64_t blocksize,
                                      const float* w, uint8_t* codes, float* absmax);
/* w[n] <- codes with stats (plain or nested). */
LK_API lk_status lk_cpu_dequantize_4bit(int64_t n, const uint8_t* codes, const lk_quant_stats* stats,
                                        float* w);
/* qabsmax[nblocks], absmax2[ceil(nblocks/256)], offset[1] <- absmax[nblocks]. */
LK_API lk_status lk_cpu_double_quantize(int64_t nblocks, const float* absmax, uint8_t* qabsmax,
                                        float* absmax2, float* offset);
/* absmax[nblocks] <- qabsmax, absmax2, offset. */
LK_API lk_status lk_cpu_double_dequantize(int64_t nblocks, const uint8_t* qabsmax,
                                          const float* absmax2, float offset, float* absmax);

/* y[M,out] = x[M,in] * deq(W)^T + bias, W the quantized [out,in] matrix; never materialises
 * deq(W). bias may be NULL. */
LK_API lk_status lk_cpu_nf4_matmul(int64_t M, int64_t in, int64_t out, const float* x,
                                   const uint8_t* codes, const lk_quant_stats* stats,
                                   const float* bias, float* y);

/* QLoRA forward in one pass: u[M,r] = dropout(x) A^T; y = x deq(W)^T + bias + scale u B^T.
 * Dropout as lk_cpu_lora_forward. */
LK_API lk_status lk_cpu_qlora_forward(int64_t M, int64_t in, int64_t out, int64_t r, const float* x,
                                      const uint8_t* codes, const lk_quant_stats* stats,
                                      const float* bias, const float* A, const float* B, float scale,
                                      float dropout_p, uint64_t seed, float* y, float* u);

/* QLoRA backward: dx = dy deq(W) + dropout'(du A) (deq(W) never materialised), dA, dB as
 * lk_cpu_lora_backward. Each output may be NULL. */
LK_API lk_status lk_cpu_qlora_backward(int64_t M, int64_t in, int64_t out, int64_t r,
                                       const float* x, const uint8_t* codes,
                                       const lk_quant_stats* stats, const float* A, const float* B,
                                       const float* u, const float* dy, float scale,
                                       float dropout_p, uint64_t seed, float* dx, float* dA,
                                       float* dB);

#endif /* LORA_KERNELS_NF4_H */
