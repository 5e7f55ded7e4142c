// convert.cpp: bf16 <-> fp32 with the rounding of kernels/common.cuh (round to nearest even,
// NaN kept as a quiet NaN with its sign), so CPU and GPU kernels convert bit for bit alike.
// Memory-bound: 6 bytes per element.
#include "check.h"
#include "common.cuh"
#include "parallel.h"

LK_API lk_status lk_cpu_bf16_to_f32(int64_t n, const uint16_t* src, float* dst) {
    lk::cpu::ArgCheck check("lk_cpu_bf16_to_f32");
    check.nonnegative("n", n).not_null("src", src, n > 0).not_null("dst", dst, n > 0);
    if (!check.ok()) return check.status();
    const int threads = lk::cpu::elementwise_threads(n);
#pragma omp parallel for simd schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t i = 0; i < n; ++i) dst[i] = lk_bf16_to_f32(lk_bf16{src[i]});
    return LK_OK;
}

LK_API lk_status lk_cpu_f32_to_bf16(int64_t n, const float* src, uint16_t* dst) {
    lk::cpu::ArgCheck check("lk_cpu_f32_to_bf16");
    check.nonnegative("n", n).not_null("src", src, n > 0).not_null("dst", dst, n > 0);
    if (!check.ok()) return check.status();
    const int threads = lk::cpu::elementwise_threads(n);
#pragma omp parallel for simd schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t i = 0; i < n; ++i) dst[i] = lk_f32_to_bf16(src[i]).bits;
    return LK_OK;
}
