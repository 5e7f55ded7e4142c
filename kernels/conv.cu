// conv.cu: 2-D convolution (NCHW, PyTorch's Conv2d with groups = 1), forward and both gradients,
// as implicit GEMMs on the shared tile engine. Semantics are those of lk_cpu_conv2d_* (native/include/
// lora_kernels_conv.h): x [N, C, H, W], w [O, C, KH, KW], y [N, O, HO, WO], stride, zero padding and
// dilation per axis. The frozen base of a convolution layer and the kh×kw products of its adapters
// (LoRA's A, LoKr's w2, the Tucker core) run here; their 1×1 products are kernels/tucker.cu's batched
// matrix products.
//
// Entry points (fp32 storage, fp32 sums):
//   lk_conv2d_forward_f32      y  = alpha·conv(x, w) + bias + beta·y      rows o, columns (n, ho, wo)
//   lk_conv2d_grad_x_f32       dx = alpha·convᵀ(dy, w) + beta·dx         rows c, columns (n, h, v)
//   lk_conv2d_grad_w_f32       partial[z] = dy · im2col(x)ᵀ over chunk z  rows o, columns (c, a, b)
//   lk_conv2d_sum_chunks_f32   dw = alpha·Σ_z partial[z] + beta·dw        split_k.cuh
//
// Strategy: no im2col buffer. Each product is a GEMM whose operand loaders compute the image
// address of every element as it is staged into shared memory (tile_engine.cuh's loaders are
// arbitrary functors), zero where the window leaves the image:
//   forward:  K = (c, a, b); the image operand reads x at (ho·sh − ph + a·dh, wo·sw − pw + b·dw);
//   grad_x:   K = (o, a, b); dy is read at ho = (h + ph − a·dh)/sh where that divides exactly and
//             lands inside [0, HO) (likewise wo), i.e. the transposed convolution as a gather, so
//             every dx element is written once (no atomics);
//   grad_w:   K = (n, ho, wo), cut into chunks of kConvPixelsPerChunk pixels (grid.z); each block
//             writes an fp32 partial, and the sum launch adds the chunks in order (deterministic).
// Output pixels are the tile's columns, so threads with consecutive x indices store consecutive
// pixels (coalesced), and the image operand is staged along its pixel index (coalesced reads
// along wo). Index arithmetic (4 integer divisions per staged element, 4 per thread per 16-deep
// slice) is the price of not materialising im2col (KH·KW times the input's size).
// Grids (block 256, static shared 8448 bytes, no dynamic shared memory):
//   forward (⌈N·HO·WO/64⌉, ⌈O/64⌉); grad_x (⌈N·H·W/64⌉, ⌈C/64⌉);
//   grad_w (⌈C·KH·KW/64⌉, ⌈O/64⌉, ⌈N·HO·WO/kConvPixelsPerChunk⌉); sum: the element-wise grid.
// FLOPs 2·N·O·C·KH·KW·HO·WO per product (grad_x counts only the taps inside the image).
// Bytes: w once per column tile (from L2), x (or dy) once per row tile from L2, y/dx written once;
// grad_w partials 4·chunks·O·C·KH·KW. Assumptions: every tensor < 2^31 elements (C# checks).
#include "common.cuh"
#include "launch_geometry.cuh"
#include "split_k.cuh"
#include "tile_engine.cuh"

namespace {

constexpr int kConvPixelsPerChunk = 4096;  // reduction length one grad_w block covers

struct ConvShape {
    int N, C, H, W, O, KH, KW, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, HO, WO;
    LK_DEVICE int taps() const { return KH * KW; }
    LK_DEVICE int out_pixels() const { return HO * WO; }
    LK_DEVICE int in_pixels() const { return H * W; }
};

// x at output pixel `pixel` (n, ho, wo flattened over the batch) and window element `k` (c, a, b).
struct ImagePatch {
    static constexpr bool kContiguousK = false;  // staged along the pixel index
    const float* x;
    ConvShape s;
    LK_DEVICE float operator()(int pixel, int k) const {
        const int n = pixel / s.out_pixels(), p = pixel - n * s.out_pixels();
        const int ho = p / s.WO, wo = p - ho * s.WO;
        const int c = k / s.taps(), t = k - c * s.taps();
        const int a = t / s.KW, b = t - a * s.KW;
        const int h = ho * s.stride_h - s.pad_h + a * s.dilation_h, v = wo * s.stride_w - s.pad_w + b * s.dilation_w;
        if (h < 0 || h >= s.H || v < 0 || v >= s.W) return 0.0f;
        return x[(((lk_i64)n * s.C + c) * s.H + h) * s.W + v];
    }
};

// dy at input pixel `pixel` (n, h, v) and window element `k` (o, a, b): the output pixel whose
// window tap (a, b) lands on (h, v), or 0 when none does.
struct GradientGather {
    static constexpr bool kContiguousK = false;
    const float* dy;
    ConvShape s;
    LK_DEVICE float operator()(int pixel, int k) const {
        const int n = pixel / s.in_pixels(), p = pixel - n * s.in_pixels();
        const int h = p / s.W, v = p - h * s.W;
        const int o = k / s.taps(), t = k - o * s.taps();
        const int a = t / s.KW, b = t - a * s.KW;
        const int hs = h + s.pad_h - a * s.dilation_h, vs = v + s.pad_w - b * s.dilation_w;
        if (hs < 0 || vs < 0 || hs % s.stride_h != 0 || vs % s.stride_w != 0) return 0.0f;
        const int ho = hs / s.stride_h, wo = vs / s.stride_w;
        if (ho >= s.HO || wo >= s.WO) return 0.0f;
        return dy[(((lk_i64)n * s.O + o) * s.HO + ho) * s.WO + wo];
    }
};

// w read as [C, O·KH·KW]: row c, reduction index (o, a, b).
struct WeightByInput {
    static constexpr bool kContiguousK = true;  // (a, b) are contiguous in w
    const float* w;
    ConvShape s;
    LK_DEVICE float operator()(int c, int k) const {
        const int o = k / s.taps(), t = k - o * s.taps();
        return w[((lk_i64)o * s.C + c) * s.taps() + t];
    }
};

// dy read as [O, N·HO·WO] from the reduction offset k0: row o, reduction index (n, ho, wo).
struct GradientByChannel {
    static constexpr bool kContiguousK = true;
    const float* dy;
    ConvShape s;
    int k0;
    LK_DEVICE float operator()(int o, int k) const {
        const int pixel = k0 + k, n = pixel / s.out_pixels(), p = pixel - n * s.out_pixels();
        return dy[((lk_i64)n * s.O + o) * s.out_pixels() + p];
    }
};

// The image patch read with the window element as its row and the pixel (from k0) as reduction.
struct PatchByTap {
    static constexpr bool kContiguousK = true;
    ImagePatch patch;
    int k0;
    LK_DEVICE float operator()(int k, int pixel) const { return patch(k0 + pixel, k); }
};

// ---- forward: y = alpha·conv(x, w) + bias + beta·y ------------------------------------------------
LK_DEVICE void lk_conv2d_forward(const float* x, const float* w, const float* bias, float* y, const ConvShape& s,
                                 float alpha, float beta) {
    LK_SHARED(float, tile_a, [kTileK][kTileStride]);
    LK_SHARED(float, tile_b, [kTileK][kTileStride]);
    const int o0 = (int)blockIdx.y * kTileM, pixel0 = (int)blockIdx.x * kTileN;
    const int K = s.C * s.taps(), pixels = s.N * s.out_pixels();
    float acc[kTilePerThread][kTilePerThread] = {};
    lk_tile_reduce(acc, lk_operand<float, true>(w, K), ImagePatch{x, s}, K, o0, s.O, pixel0, pixels, tile_a, tile_b);
    lk_tile_for_each(acc, o0, s.O, pixel0, pixels, [&](int o, int pixel, float v) {
        const int n = pixel / s.out_pixels(), p = pixel - n * s.out_pixels();
        float* at = y + ((lk_i64)n * s.O + o) * s.out_pixels() + p;
        float value = alpha * v + (bias ? bias[o] : 0.0f);
        if (beta != 0.0f) value += beta * *at;
        *at = value;
    });
}

// ---- grad_x: dx = alpha·convᵀ(dy, w) + beta·dx ----------------------------------------------------
LK_DEVICE void lk_conv2d_grad_x(const float* dy, const float* w, float* dx, const ConvShape& s, float alpha, float beta) {
    LK_SHARED(float, tile_a, [kTileK][kTileStride]);
    LK_SHARED(float, tile_b, [kTileK][kTileStride]);
    const int c0 = (int)blockIdx.y * kTileM, pixel0 = (int)blockIdx.x * kTileN;
    const int K = s.O * s.taps(), pixels = s.N * s.in_pixels();
    float acc[kTilePerThread][kTilePerThread] = {};
    lk_tile_reduce(acc, WeightByInput{w, s}, GradientGather{dy, s}, K, c0, s.C, pixel0, pixels, tile_a, tile_b);
    lk_tile_for_each(acc, c0, s.C, pixel0, pixels, [&](int c, int pixel, float v) {
        const int n = pixel / s.in_pixels(), p = pixel - n * s.in_pixels();
        float* at = dx + ((lk_i64)n * s.C + c) * s.in_pixels() + p;
        *at = beta == 0.0f ? alpha * v : alpha * v + beta * *at;
    });
}

// ---- grad_w: partial[z][o, (c, a, b)] = Σ over chunk z's pixels of dy·patch -------------------------
LK_DEVICE void lk_conv2d_grad_w(const float* x, const float* dy, float* partial, const ConvShape& s) {
    LK_SHARED(float, tile_a, [kTileK][kTileStride]);
    LK_SHARED(float, tile_b, [kTileK][kTileStride]);
    const int o0 = (int)blockIdx.y * kTileM, k0 = (int)blockIdx.x * kTileN;
    const int taps = s.C * s.taps(), pixels = s.N * s.out_pixels();
    const int first = (int)blockIdx.z * kConvPixelsPerChunk;
    const int length = lk_min(kConvPixelsPerChunk, pixels - first);
    float acc[kTilePerThread][kTilePerThread] = {};
    lk_tile_reduce(acc, GradientByChannel{dy, s, first}, PatchByTap{ImagePatch{x, s}, first}, length, o0, s.O, k0,
                   taps, tile_a, tile_b);
    float* chunk = partial + (lk_i64)blockIdx.z * s.O * taps;
    lk_tile_for_each(acc, o0, s.O, k0, taps, [&](int o, int k, float v) { chunk[o * taps + k] = v; });
}

LK_DEVICE ConvShape lk_conv_shape(int N, int C, int H, int W, int O, int KH, int KW, int stride_h, int stride_w,
                                  int pad_h, int pad_w, int dilation_h, int dilation_w, int HO, int WO) {
    return ConvShape{N, C, H, W, O, KH, KW, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, HO, WO};
}

}  // namespace

// ---- entry points. The shape travels as 15 ints (N, C, H, W, O, KH, KW, stride_h, stride_w, pad_h,
// pad_w, dilation_h, dilation_w, HO, WO), HO and WO as the launcher computed them. -------------------
#define LK_CONV_SHAPE_PARAMETERS                                                                                  \
    int N, int C, int H, int W, int O, int KH, int KW, int stride_h, int stride_w, int pad_h, int pad_w,            \
        int dilation_h, int dilation_w, int HO, int WO
#define LK_CONV_SHAPE lk_conv_shape(N, C, H, W, O, KH, KW, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, HO, WO)

extern "C" __global__ void __launch_bounds__(kTileThreads) lk_conv2d_forward_f32(
    const float* x, const float* w, const float* bias, float* y, LK_CONV_SHAPE_PARAMETERS, float alpha, float beta) {
    lk_conv2d_forward(x, w, bias, y, LK_CONV_SHAPE, alpha, beta);
}
LK_KERNEL(lk_conv2d_forward_f32);

extern "C" __global__ void __launch_bounds__(kTileThreads) lk_conv2d_grad_x_f32(
    const float* dy, const float* w, float* dx, LK_CONV_SHAPE_PARAMETERS, float alpha, float beta) {
    lk_conv2d_grad_x(dy, w, dx, LK_CONV_SHAPE, alpha, beta);
}
LK_KERNEL(lk_conv2d_grad_x_f32);

extern "C" __global__ void __launch_bounds__(kTileThreads) lk_conv2d_grad_w_f32(
    const float* x, const float* dy, float* partial, LK_CONV_SHAPE_PARAMETERS) {
    lk_conv2d_grad_w(x, dy, partial, LK_CONV_SHAPE);
}
LK_KERNEL(lk_conv2d_grad_w_f32);

extern "C" __global__ void __launch_bounds__(kElementwiseThreads) lk_conv2d_sum_chunks_f32(
    const float* partial, float* dw, int chunks, long long n, float alpha, float beta) {
    lk_split_k_sum<float>(partial, dw, chunks, n, alpha, beta);
}
LK_KERNEL(lk_conv2d_sum_chunks_f32);
