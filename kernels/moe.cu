// moe.cu: the mixture-of-experts steps around the segmented products (kernels/segmented.cu runs the
// experts' grouped GEMMs and their LoRA). Semantics are those of lk_cpu_moe_* in
// native/include/lora_kernels_moe.h: assignments sorted by expert (p < P = T·k), tokens[p] their token,
// positions[t·k + j] the sorted position of token t's j-th choice, gates[p] its routing weight.
//
// Entry points (fp32 only: the MoE layer is fp32):
//   lk_moe_gather_f32            xs[p, :] = x[tokens[p], :]                   grid-stride over P·width
//   lk_moe_combine_f32           y[t, :] = bias + Σ_j g·o[positions[t·k+j], :] grid-stride over T·width
//   lk_moe_combine_backward_f32  d_o[p, :] = g_p·dy[t_p, :], dgates[p] = dy[t_p]·o[p]   one warp per p
//   lk_moe_swiglu_f32            h = silu(g) ⊙ u                               grid-stride
//   lk_moe_swiglu_backward_f32   dg = dh ⊙ u ⊙ silu'(g), du = dh ⊙ silu(g)      grid-stride
//
// Strategy and why: each is bound by memory (row copies and weighted row sums), so grid-stride loops
// over the output with consecutive threads on consecutive columns of a row (coalesced), the element-wise
// geometry (launch_geometry.cuh). The combine gathers (each output row reads its k rows in the order
// j = 0..k-1) rather than scattering with atomics, so it is deterministic; the backward's dgates is one
// warp per assignment, lanes striding the row, lk_warp_sum. The activations are activations.cuh's, as
// the CPU's. Indices over P·width or T·width elements are 64-bit.
//
// Bytes and FLOPs per call: gather 8·P·width; combine 4·(k + 1)·T·width, 2·k·T·width FLOPs;
// combine_backward 12·P·width, 3·P·width FLOPs; swiglu 12·n; swiglu_backward 20·n.
#include "activations.cuh"
#include "common.cuh"
#include "launch_geometry.cuh"

namespace {

constexpr int kMoeThreads = kElementwiseThreads;
constexpr int kMoeWarps = kMoeThreads / 32;  // combine_backward: assignments per block

LK_DEVICE lk_i64 lk_moe_thread() { return (lk_i64)blockIdx.x * blockDim.x + threadIdx.x; }
LK_DEVICE lk_i64 lk_moe_stride() { return (lk_i64)gridDim.x * blockDim.x; }

}  // namespace

extern "C" __global__ void __launch_bounds__(kMoeThreads) lk_moe_gather_f32(const float* x, const int* tokens, float* xs,
                                                                            long long P, int width) {
    for (lk_i64 i = lk_moe_thread(); i < P * width; i += lk_moe_stride()) {
        const lk_i64 p = i / width, c = i - p * width;
        xs[i] = x[(lk_i64)tokens[p] * width + c];
    }
}
LK_KERNEL(lk_moe_gather_f32);

extern "C" __global__ void __launch_bounds__(kMoeThreads) lk_moe_combine_f32(const float* o, const int* positions,
                                                                             const float* gates, const float* bias,
                                                                             float* y, long long T, int k, int width) {
    for (lk_i64 i = lk_moe_thread(); i < T * width; i += lk_moe_stride()) {
        const lk_i64 t = i / width, c = i - t * width;
        float sum = bias ? bias[c] : 0.0f;
        for (int j = 0; j < k; ++j) {
            const lk_i64 p = positions[t * k + j];
            sum += (gates ? gates[p] : 1.0f) * o[p * width + c];
        }
        y[i] = sum;
    }
}
LK_KERNEL(lk_moe_combine_f32);

extern "C" __global__ void __launch_bounds__(kMoeThreads) lk_moe_combine_backward_f32(
    const float* dy, const float* o, const int* tokens, const float* gates, float* d_o, float* dgates, long long P,
    int width) {
    const int lane = (int)threadIdx.x & 31;
    const lk_i64 p = (lk_i64)blockIdx.x * kMoeWarps + (threadIdx.x >> 5);
    if (p >= P) return;  // warp-uniform, and no barrier follows
    const float* g = dy + (lk_i64)tokens[p] * width;
    float sum = 0.0f;
    for (int c = lane; c < width; c += 32) {
        if (d_o) d_o[p * width + c] = gates[p] * g[c];
        if (dgates) sum += g[c] * o[p * width + c];
    }
    sum = lk_warp_sum(sum);
    if (dgates && lane == 0) dgates[p] = sum;
}
LK_KERNEL(lk_moe_combine_backward_f32);

extern "C" __global__ void __launch_bounds__(kMoeThreads) lk_moe_swiglu_f32(const float* g, const float* u, float* h,
                                                                            long long n) {
    for (lk_i64 i = lk_moe_thread(); i < n; i += lk_moe_stride()) h[i] = lk_silu(g[i]) * u[i];
}
LK_KERNEL(lk_moe_swiglu_f32);

extern "C" __global__ void __launch_bounds__(kMoeThreads) lk_moe_swiglu_backward_f32(const float* g, const float* u,
                                                                                     const float* dh, float* dg,
                                                                                     float* du, long long n) {
    for (lk_i64 i = lk_moe_thread(); i < n; i += lk_moe_stride()) {
        if (dg) dg[i] = dh[i] * u[i] * lk_silu_grad(g[i]);
        if (du) du[i] = dh[i] * lk_silu(g[i]);
    }
}
LK_KERNEL(lk_moe_swiglu_backward_f32);
