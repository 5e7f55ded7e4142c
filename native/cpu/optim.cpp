// optim.cpp: one AdamW step, as torch.optim.AdamW (foreach=False, the single-tensor loop) does
// it in fp32, operation for operation:
//   p *= 1 - lr*wd;  m = lerp(m, g, 1 - b1);  v = v*b2 + (1 - b2)*g*g;
//   p += (-lr / (1 - b1^step)) * m / (sqrt(v) / sqrt(1 - b2^step) + eps)
// with the scalar coefficients computed in double (torch computes them as Python floats) and
// rounded to float once. Memory-bound: 16 bytes read and 12 written per element.
#include <cmath>

#include "check.h"
#include "parallel.h"

LK_API lk_status lk_cpu_adamw_step(int64_t n, float* param, const float* grad, float* m, float* v,
                                   float lr, float beta1, float beta2, float eps,
                                   float weight_decay, int64_t step) {
    lk::cpu::ArgCheck check("lk_cpu_adamw_step");
    check.nonnegative("n", n)
        .not_null("param", param, n > 0)
        .not_null("grad", grad, n > 0)
        .not_null("m", m, n > 0)
        .not_null("v", v, n > 0)
        .at_least("lr", lr, 0.0)
        .at_least("eps", eps, 0.0)
        .at_least("weight_decay", weight_decay, 0.0)
        .in_half_open_range("beta1", beta1, 0.0f, 1.0f)
        .in_half_open_range("beta2", beta2, 0.0f, 1.0f);
    if (!check.ok()) return check.status();
    if (step < 1)
        return lk::fail(LK_ERR_INVALID_ARGUMENT, "lk_cpu_adamw_step: step = %lld is smaller than 1",
                        (long long)step);

    const double bias_correction1 = 1.0 - std::pow((double)beta1, (double)step);
    const double bias_correction2 = 1.0 - std::pow((double)beta2, (double)step);
    const float decay = (float)(1.0 - (double)lr * (double)weight_decay);
    const float lerp_weight = (float)(1.0 - (double)beta1);
    const float b2 = beta2;
    const float one_minus_b2 = (float)(1.0 - (double)beta2);
    const float neg_step_size = (float)(-(double)lr / bias_correction1);
    const float bias_correction2_sqrt = (float)std::sqrt(bias_correction2);

    const int threads = lk::cpu::elementwise_threads(n);
#pragma omp parallel for simd schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t i = 0; i < n; ++i) {
        const float g = grad[i];
        const float p = param[i] * decay;
        const float mi = m[i] + lerp_weight * (g - m[i]);  // torch's lerp for weight < 0.5
        const float vi = v[i] * b2 + one_minus_b2 * g * g;
        const float denom = std::sqrt(vi) / bias_correction2_sqrt + eps;
        m[i] = mi;
        v[i] = vi;
        param[i] = p + neg_step_size * mi / denom;
    }
    return LK_OK;
}
