// adamw_math.cuh: the per-element arithmetic of the optimizers, written once for the GPU kernels
// (kernels/optim.cu) and the CPU kernels (native/cpu/optim.cpp), so both do the same fp32
// operations in the same order.
//
//   torch form      torch.optim.AdamW (foreach=False): decay first, m by torch's lerp,
//                   p += step_size·m / (√v / √(1 - β2^t) + eps)
//   bitsandbytes    bnb's Adam kernels (REFERENCE.md §8.7): m = m·β1 + (1-β1)·g,
//                   p += step_size·(m / (√v + eps·√(1 - β2^t))), then p ·= 1 - lr·wd
//   8-bit           bnb's blockwise 8-bit Adam: moments dequantized as code·absmax, updated as
//                   above, requantized to the nearest code of m/absmax (signed map, nudged one
//                   code toward m's sign when the chosen code has the other sign) and v/absmax
//                   (unsigned map); the new absmax is the block's max |m| (|v|).
//
// bnb's two kernels associate the g² term differently ((1-β2)·(g·g) in the 32-bit kernel,
// ((1-β2)·g)·g in the 8-bit one); each form keeps its own.
#pragma once

#include "common.cuh"
#include "quant_codes.cuh"

// The betas of a launch and their complements, computed in double and rounded once (for β in
// [0.5, 1) the float subtraction bnb does is exact, so both agree).
struct LkAdamwBetas {
    float beta1, beta2, one_minus_beta1, one_minus_beta2;
};

LK_HD LkAdamwBetas lk_adamw_betas(float beta1, float beta2) {
    return LkAdamwBetas{beta1, beta2, (float)(1.0 - (double)beta1), (float)(1.0 - (double)beta2)};
}

// torch.optim.AdamW, one element: returns the new parameter; m and v are updated in place.
LK_HD float lk_adamw_torch(float p, float g, float& m, float& v, const LkAdamwBetas& b, float decay, float step_size,
                           float bias_correction2_sqrt, float eps) {
    p = p * decay;
    const float mi = m + b.one_minus_beta1 * (g - m);  // torch's lerp for a weight below 0.5
    const float vi = v * b.beta2 + b.one_minus_beta2 * g * g;
    m = mi;
    v = vi;
    const float denom = sqrtf(vi) / bias_correction2_sqrt + eps;
    return p + step_size * mi / denom;
}

// bitsandbytes' 32-bit Adam (kOptimizer32bit2State), one element; eps is eps·√(1 - β2^t).
LK_HD float lk_adamw_bnb(float p, float g, float& m, float& v, const LkAdamwBetas& b, float decay, float step_size,
                         float eps) {
    const float vi = v * b.beta2 + b.one_minus_beta2 * (g * g);
    const float mi = m * b.beta1 + b.one_minus_beta1 * g;
    m = mi;
    v = vi;
    p = p + step_size * (mi / (sqrtf(vi) + eps));
    return p * decay;
}

// bitsandbytes' blockwise 8-bit Adam: the moments of one element from their dequantized values.
LK_HD void lk_adamw8bit_moments(float g, const LkAdamwBetas& b, float& m, float& v) {
    v = (v * b.beta2) + (b.one_minus_beta2 * g * g);
    m = (m * b.beta1) + (b.one_minus_beta1 * g);
}

// bitsandbytes' blockwise 8-bit Adam: the parameter update of one element; eps is eps·√(1 - β2^t).
LK_HD float lk_adamw8bit_param(float p, float m, float v, float decay, float step_size, float eps) {
    p = p + step_size * (m / (sqrtf(v) + eps));
    return p * decay;
}

// The signed-map code of m in a block of absmax `absmax`: bnb's nearest code, then one code toward
// m's sign if the chosen code has the other sign (so a small moment never flips direction).
template <class Code>
LK_CODE_FN int lk_adamw8bit_m_code(float m, float absmax, const Code& signed_map) {
    int c = lk_dynamic_encode(m / absmax, signed_map);
    if ((lk_f32_bits(signed_map(c)) >> 31) != (lk_f32_bits(m) >> 31)) c += m > 0.0f ? 1 : -1;
    return c & 255;  // bnb's unsigned char arithmetic
}

// The unsigned-map code of v in a block of absmax `absmax`.
template <class Code>
LK_CODE_FN int lk_adamw8bit_v_code(float v, float absmax, const Code& unsigned_map) {
    return lk_dynamic_encode(v / absmax, unsigned_map);
}
