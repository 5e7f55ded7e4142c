// optim.cu: optimizer steps on fp32 parameters.
//
// Entry points:
//   lk_optim_adamw_f32   one torch.optim.AdamW step (foreach=False), as lk_cpu_adamw_step
//                        (native/include/lora_kernels.h) does it, operation for operation:
//                          p *= 1 - lr·wd;  m = m + (1 - b1)·(g - m)  (torch's lerp);
//                          v = v·b2 + (1 - b2)·g·g;
//                          p += (-lr / bc1) · m / (sqrt(v) / sqrt(bc2) + eps)
//                        bias_correction1/2 = 1 - beta1^step / 1 - beta2^step, computed on the
//                        host in double; the other scalar coefficients are computed here in
//                        double and rounded to float once, as the CPU kernel (and torch, whose
//                        coefficients are Python floats) does, so both agree to an ulp.
//
// Strategy: a grid-stride loop, one thread per element at a time, kOptimThreads per block; bound
// by memory: 16 bytes read and 12 written per element, about 12 FLOPs and one sqrt. Per-thread
// coefficient setup is a handful of double operations, negligible next to the loop.
// Assumptions: none on alignment; n >= 0; param, grad, m, v do not overlap.
#include "common.cuh"
#include "launch_geometry.cuh"

namespace {
constexpr int kOptimThreads = kElementwiseThreads;  // the element-wise geometry (launch_geometry.cuh)
static_assert(kOptimThreads % 32 == 0, "whole warps");
}  // namespace

extern "C" __global__ void __launch_bounds__(kOptimThreads)
    lk_optim_adamw_f32(float* param, const float* grad, float* m, float* v, long long n, float lr, float beta1,
                       float beta2, float eps, float weight_decay, float bias_correction1, float bias_correction2) {
    const float decay = (float)(1.0 - (double)lr * (double)weight_decay);
    const float lerp_weight = (float)(1.0 - (double)beta1);
    const float one_minus_b2 = (float)(1.0 - (double)beta2);
    const float neg_step_size = (float)(-(double)lr / (double)bias_correction1);
    const float bias_correction2_sqrt = (float)sqrt((double)bias_correction2);
    const lk_i64 stride = (lk_i64)gridDim.x * kOptimThreads;
    for (lk_i64 i = (lk_i64)blockIdx.x * kOptimThreads + threadIdx.x; i < n; i += stride) {
        const float g = grad[i];
        const float p = param[i] * decay;
        const float mi = m[i] + lerp_weight * (g - m[i]);
        const float vi = v[i] * beta2 + one_minus_b2 * g * g;
        const float denom = sqrtf(vi) / bias_correction2_sqrt + eps;
        m[i] = mi;
        v[i] = vi;
        param[i] = p + neg_step_size * mi / denom;
    }
}
LK_KERNEL(lk_optim_adamw_f32);
