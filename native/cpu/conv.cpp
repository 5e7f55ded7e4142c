// conv.cpp: 2-D convolution on the CPU (NCHW, groups = 1; same argument order as kernels/conv.cu).
//
// Strategy: im2col + the packed GEMM engine, one image at a time. Image n's patches are copied into
// col [C*KH*KW, HO*WO] (zero where the window leaves the image) and
//   forward:          y_n [O, HO*WO]        = alpha * w [O, C*KH*KW] * col           (+ bias, beta*y)
//   backward data:    dcol [C*KH*KW, HO*WO] = w^T * dy_n, scattered back (col2im) into dx_n
//   backward weight:  dw [O, C*KH*KW]      += dy_n * col^T    (images summed in fixed chunks)
// A pointwise convolution (1x1, stride 1, no padding) needs no copy: col is x_n itself.
// Images whose products are small run side by side on the OpenMP threads (one GEMM per image on
// one thread) when the batch is worth a fork; large ones run in order, each GEMM threaded
// (batched_gemm.h's side_by_side rule). The col buffer
// is per thread and kept between calls, as the GEMM's packing workspace is.
// FLOP 2*N*O*C*KH*KW*HO*WO per call; bytes: x (read KH*KW times through col), w, y.
#include <algorithm>
#include <vector>

#include "batched_gemm.h"
#include "check.h"
#include "gemm.h"
#include "parallel.h"

namespace lk::cpu {
namespace {

struct ConvDims {
    lk_conv2d_shape s;
    int64_t HO, WO;
    int64_t pixels() const { return HO * WO; }
    int64_t plane() const { return s.H * s.W; }
    int64_t patch() const { return s.C * s.KH * s.KW; }
    bool pointwise() const {
        return s.KH == 1 && s.KW == 1 && s.stride_h == 1 && s.stride_w == 1 && s.pad_h == 0 && s.pad_w == 0;
    }
    // Whether the batch's images run side by side (each product too small to thread, the batch worth a fork).
    bool images_side_by_side() const {
        return side_by_side(2.0 * (double)s.O * (double)patch() * (double)pixels(), s.N);
    }
};

int64_t output_extent(int64_t in, int64_t k, int64_t stride, int64_t pad, int64_t dilation) {
    const int64_t span = dilation * (k - 1) + 1, padded = in + 2 * pad;
    return padded < span ? 0 : (padded - span) / stride + 1;
}

thread_local std::vector<float> t_col;

float* col_buffer(const ConvDims& d) {
    const size_t n = (size_t)(d.patch() * d.pixels());
    if (t_col.size() < n) t_col.resize(n);
    return t_col.data();
}

// col[(c*KH + a)*KW + b][ho*WO + wo] = x_n[c, ho*sh - ph + a*dh, wo*sw - pw + b*dw], 0 outside.
void im2col(const ConvDims& d, const float* x_n, float* col) {
    const lk_conv2d_shape& s = d.s;
    for (int64_t c = 0; c < s.C; ++c)
        for (int64_t a = 0; a < s.KH; ++a)
            for (int64_t b = 0; b < s.KW; ++b) {
                float* row = col + ((c * s.KH + a) * s.KW + b) * d.pixels();
                for (int64_t ho = 0; ho < d.HO; ++ho) {
                    const int64_t h = ho * s.stride_h - s.pad_h + a * s.dilation_h;
                    float* out = row + ho * d.WO;
                    if (h < 0 || h >= s.H) {
                        std::fill(out, out + d.WO, 0.0f);
                        continue;
                    }
                    const float* line = x_n + c * d.plane() + h * s.W;
                    for (int64_t wo = 0; wo < d.WO; ++wo) {
                        const int64_t v = wo * s.stride_w - s.pad_w + b * s.dilation_w;
                        out[wo] = v >= 0 && v < s.W ? line[v] : 0.0f;
                    }
                }
            }
}

// The adjoint of im2col: dx_n[c, h, v] += alpha * col[...] over every window position that reads it.
void col2im_add(const ConvDims& d, const float* col, float alpha, float* dx_n) {
    const lk_conv2d_shape& s = d.s;
    for (int64_t c = 0; c < s.C; ++c)
        for (int64_t a = 0; a < s.KH; ++a)
            for (int64_t b = 0; b < s.KW; ++b) {
                const float* row = col + ((c * s.KH + a) * s.KW + b) * d.pixels();
                for (int64_t ho = 0; ho < d.HO; ++ho) {
                    const int64_t h = ho * s.stride_h - s.pad_h + a * s.dilation_h;
                    if (h < 0 || h >= s.H) continue;
                    float* line = dx_n + c * d.plane() + h * s.W;
                    for (int64_t wo = 0; wo < d.WO; ++wo) {
                        const int64_t v = wo * s.stride_w - s.pad_w + b * s.dilation_w;
                        if (v >= 0 && v < s.W) line[v] += alpha * row[ho * d.WO + wo];
                    }
                }
            }
}

void forward(const ConvDims& d, const float* x, const float* w, const float* bias, float alpha, float beta,
             float* y) {
    const int64_t O = d.s.O, P = d.pixels(), K = d.patch();
    run_tasks(d.s.N, d.images_side_by_side(), [&](int64_t n) {
        float* y_n = y + n * O * P;
        float gemm_beta = beta;
        if (bias != nullptr) {  // y_n = beta * y_n + bias first, then the product accumulates on it
            for (int64_t o = 0; o < O; ++o)
                for (int64_t p = 0; p < P; ++p)
                    y_n[o * P + p] = beta == 0.0f ? bias[o] : beta * y_n[o * P + p] + bias[o];
            gemm_beta = 1.0f;
        }
        const float* x_n = x + n * d.s.C * d.plane();
        const float* col = x_n;
        if (!d.pointwise()) {
            float* buffer = col_buffer(d);
            im2col(d, x_n, buffer);
            col = buffer;
        }
        GemmOutput out;
        out.c = y_n;
        out.ldc = P;
        out.alpha = alpha;
        out.beta = gemm_beta;
        gemm(O, P, Operand(matrix_piece(w, K, false, K)), Operand(matrix_piece(col, P, false, K)), out);
    });
}

void backward_data(const ConvDims& d, const float* dy, const float* w, float alpha, float beta, float* dx) {
    const int64_t O = d.s.O, P = d.pixels(), K = d.patch();
    run_tasks(d.s.N, d.images_side_by_side(), [&](int64_t n) {
        float* dx_n = dx + n * d.s.C * d.plane();
        const OperandPiece w_t = matrix_piece(w, K, true, O), dy_n = matrix_piece(dy + n * O * P, P, false, O);
        GemmOutput out;
        if (d.pointwise()) {  // dx_n [C, H*W] = alpha * w^T * dy_n + beta * dx_n
            out.c = dx_n;
            out.ldc = P;
            out.alpha = alpha;
            out.beta = beta;
            gemm(d.s.C, P, Operand(w_t), Operand(dy_n), out);
            return;
        }
        float* dcol = col_buffer(d);
        out.c = dcol;
        out.ldc = P;
        gemm(K, P, Operand(w_t), Operand(dy_n), out);
        const int64_t count = d.s.C * d.plane();
        for (int64_t i = 0; i < count; ++i) dx_n[i] = beta == 0.0f ? 0.0f : beta * dx_n[i];
        col2im_add(d, dcol, alpha, dx_n);
    });
}

void backward_weight(const ConvDims& d, const float* x, const float* dy, float alpha, float beta, float* dw) {
    const int64_t O = d.s.O, P = d.pixels(), K = d.patch(), N = d.s.N;
    const int64_t chunks = (N + kReduceChunk - 1) / kReduceChunk, size = O * K;
    std::vector<float> partial((size_t)(chunks * size));
    run_tasks(chunks, side_by_side(2.0 * (double)O * (double)K * (double)P * (double)kReduceChunk, chunks), [&](int64_t c) {
        const int64_t first = c * kReduceChunk, end = std::min(N, first + kReduceChunk);
        for (int64_t n = first; n < end; ++n) {
            const float* x_n = x + n * d.s.C * d.plane();
            const float* col = x_n;
            if (!d.pointwise()) {
                float* buffer = col_buffer(d);
                im2col(d, x_n, buffer);
                col = buffer;
            }
            GemmOutput out;  // partial_c [O, K] (+)= dy_n [O, P] * col^T [P, K]
            out.c = partial.data() + c * size;
            out.ldc = K;
            out.beta = n == first ? 0.0f : 1.0f;
            gemm(O, K, Operand(matrix_piece(dy + n * O * P, P, false, P)), Operand(matrix_piece(col, P, true, P)),
                 out);
        }
    });
    const int threads = elementwise_threads(size * chunks);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t i = 0; i < size; ++i) {
        float sum = 0.0f;
        for (int64_t c = 0; c < chunks; ++c) sum += partial[(size_t)(c * size + i)];
        dw[i] = beta == 0.0f ? alpha * sum : alpha * sum + beta * dw[i];
    }
}

// Validates the shape and computes the output extents; the first bad field fails the check.
ConvDims check_shape(ArgCheck& check, const lk_conv2d_shape* shape) {
    ConvDims d{};
    check.not_null("shape", shape);
    if (!check.ok()) return d;
    d.s = *shape;
    check.nonnegative("N", d.s.N)
        .at_least("C", (double)d.s.C, 1.0)
        .at_least("H", (double)d.s.H, 1.0)
        .at_least("W", (double)d.s.W, 1.0)
        .at_least("O", (double)d.s.O, 1.0)
        .at_least("KH", (double)d.s.KH, 1.0)
        .at_least("KW", (double)d.s.KW, 1.0)
        .at_least("stride_h", (double)d.s.stride_h, 1.0)
        .at_least("stride_w", (double)d.s.stride_w, 1.0)
        .nonnegative("pad_h", d.s.pad_h)
        .nonnegative("pad_w", d.s.pad_w)
        .at_least("dilation_h", (double)d.s.dilation_h, 1.0)
        .at_least("dilation_w", (double)d.s.dilation_w, 1.0);
    if (!check.ok()) return d;
    d.HO = output_extent(d.s.H, d.s.KH, d.s.stride_h, d.s.pad_h, d.s.dilation_h);
    d.WO = output_extent(d.s.W, d.s.KW, d.s.stride_w, d.s.pad_w, d.s.dilation_w);
    check.at_least("HO (the output height the kernel window leaves)", (double)d.HO, 1.0)
        .at_least("WO (the output width the kernel window leaves)", (double)d.WO, 1.0);
    return d;
}

}  // namespace
}  // namespace lk::cpu

namespace lk::cpu {
namespace {

// The shared body of the three exports: the shape, then the two inputs (read only when the batch is not empty) and
// the output (written then, or always when `writes_when_empty`: the weight gradient), alpha and beta, then `body`
// under the no-throw guard.
template <class Body>
lk_status conv_export(const char* fn, const lk_conv2d_shape* shape, const char* first_name, const void* first,
                      const char* second_name, const void* second, const char* output_name, const void* output,
                      bool writes_when_empty, float alpha, float beta, const Body& body) {
    ArgCheck check(fn);
    const ConvDims d = check_shape(check, shape);
    if (!check.ok()) return check.status();
    const bool images = d.s.N > 0;
    check.not_null(first_name, first, images)
        .not_null(second_name, second, images)
        .not_null(output_name, output, images || writes_when_empty)
        .finite("alpha", alpha)
        .finite("beta", beta);
    if (!check.ok()) return check.status();
    return guarded(fn, [&] {
        body(d);
        return LK_OK;
    });
}

}  // namespace
}  // namespace lk::cpu

LK_API lk_status lk_cpu_conv2d_forward(const lk_conv2d_shape* shape, const float* x, const float* w,
                                       const float* bias, float alpha, float beta, float* y) {
    return lk::cpu::conv_export("lk_cpu_conv2d_forward", shape, "x", x, "w", w, "y", y, false, alpha, beta,
                                [&](const lk::cpu::ConvDims& d) { lk::cpu::forward(d, x, w, bias, alpha, beta, y); });
}

LK_API lk_status lk_cpu_conv2d_backward_data(const lk_conv2d_shape* shape, const float* dy, const float* w,
                                             float alpha, float beta, float* dx) {
    return lk::cpu::conv_export("lk_cpu_conv2d_backward_data", shape, "dy", dy, "w", w, "dx", dx, false, alpha, beta,
                                [&](const lk::cpu::ConvDims& d) { lk::cpu::backward_data(d, dy, w, alpha, beta, dx); });
}

LK_API lk_status lk_cpu_conv2d_backward_weight(const lk_conv2d_shape* shape, const float* x, const float* dy,
                                               float alpha, float beta, float* dw) {
    return lk::cpu::conv_export("lk_cpu_conv2d_backward_weight", shape, "x", x, "dy", dy, "dw", dw, true, alpha, beta,
                                [&](const lk::cpu::ConvDims& d) { lk::cpu::backward_weight(d, x, dy, alpha, beta, dw); });
}
