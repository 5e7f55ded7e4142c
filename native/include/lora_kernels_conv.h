/* lora_kernels_conv.h: 2-D convolution (NCHW, PyTorch's Conv2d with groups = 1), the CPU half of
 * kernels/conv.cu: the frozen base of a convolution layer and the kh x kw products of its adapters
 * (LoRA's A, LoKr's w2, Tucker's core). Included by lora_kernels.h; same rules (flat prefixed C
 * ABI, int64 sizes, lk_status, no throw).
 *
 *   x [N, C, H, W], w [O, C, KH, KW], y [N, O, HO, WO] with
 *   HO = (H + 2*pad_h - dilation_h*(KH - 1) - 1) / stride_h + 1   (likewise WO), both >= 1;
 *   y[n, o, ho, wo] = sum_{c, a, b} w[o, c, a, b] * x[n, c, ho*stride_h - pad_h + a*dilation_h,
 *                                                        wo*stride_w - pad_w + b*dilation_w]
 *   (x is zero outside [0, H) x [0, W)). */
#ifndef LORA_KERNELS_CONV_H
#define LORA_KERNELS_CONV_H

#include <stdint.h>

typedef struct lk_conv2d_shape {
    int64_t N, C, H, W;                /* input [N, C, H, W] */
    int64_t O, KH, KW;                 /* weight [O, C, KH, KW] */
    int64_t stride_h, stride_w;        /* >= 1 */
    int64_t pad_h, pad_w;              /* >= 0 (zero padding) */
    int64_t dilation_h, dilation_w;    /* >= 1 */
} lk_conv2d_shape;

/* y = alpha * conv(x, w) + bias + beta * y; bias [O] or NULL; beta == 0 does not read y. */
LK_API lk_status lk_cpu_conv2d_forward(const lk_conv2d_shape* shape, const float* x, const float* w,
                                       const float* bias, float alpha, float beta, float* y);

/* The input gradient: dx = alpha * conv^T(dy, w) + beta * dx, dy [N, O, HO, WO], dx [N, C, H, W]:
 *   dx[n, c, h, v] = sum over (o, a, b, ho, wo) with h = ho*stride_h - pad_h + a*dilation_h and
 *                    v = wo*stride_w - pad_w + b*dilation_w of w[o, c, a, b] * dy[n, o, ho, wo]. */
LK_API lk_status lk_cpu_conv2d_backward_data(const lk_conv2d_shape* shape, const float* dy, const float* w,
                                             float alpha, float beta, float* dx);

/* The weight gradient: dw = alpha * sum_n dy_n * im2col(x_n)^T + beta * dw, dw [O, C, KH, KW]. The
 * image sum runs in a fixed order that depends only on the shapes (the same bits for every thread
 * count). */
LK_API lk_status lk_cpu_conv2d_backward_weight(const lk_conv2d_shape* shape, const float* x, const float* dy,
                                               float alpha, float beta, float* dw);

#endif /* LORA_KERNELS_CONV_H */
