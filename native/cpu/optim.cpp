// optim.cpp: the multi-tensor optimizer steps of kernels/optim.cu on the CPU, with the per-element
// arithmetic of kernels/adamw_math.cuh (one copy for both), so CPU and GPU do the same fp32
// operations in the same order.
//
//   lk_cpu_adamw       every element of every segment is independent: the concatenation of the
//                      segments is cut into one contiguous share per thread, each share walks its
//                      segments with a vectorized loop. Memory-bound: 28 B/elem with an fp32
//                      parameter (p, m, v read and written, g read), about 14 FLOPs and a sqrt.
//   lk_cpu_adamw8bit   one 256-element block at a time (its absmax couples its elements), blocks
//                      spread over the threads; the two code searches dominate (about 16 compares
//                      an element), so it runs below memory speed.
//   lk_cpu_grad_sumsq  runs of 4096 elements summed in double (a fixed vectorized order), run sums
//                      added in order: the same bits for any thread count.
// Assumptions: segments do not overlap; no alignment. Validation precedes any write.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "adamw_math.cuh"
#include "check.h"
#include "launch_geometry.cuh"
#include "parallel.h"

namespace {

using lk::cpu::ArgCheck;

// bindings/LoraKernels/Optim/OptimizerSegments.cs mirrors these layouts; its test pins the same sizes.
static_assert(sizeof(lk_adamw_segment) == 72, "the C# AdamWSegment layout");
static_assert(sizeof(lk_adamw8bit_segment) == 88, "the C# AdamW8bitSegment layout");
static_assert(sizeof(lk_grad_span) == 24, "the C# GradSpan layout");

constexpr int64_t kBlock8bit = kOptim8bitBlock;  // bitsandbytes' block size for 8-bit optimizer state
constexpr int64_t kNormRun = kOptimChunk;        // elements summed together, as one GPU block does

// How a segment holds its parameter (optim_segments.cuh).
enum ParamMode { kFp32, kFp32WithBf16Copy, kBf16 };

ParamMode mode_of(const float* param, const unsigned short* param_bf16) {
    if (param == nullptr) return kBf16;
    return param_bf16 == nullptr ? kFp32 : kFp32WithBf16Copy;
}

// Checks what every segment kind shares: a parameter, a gradient and a non-negative size.
template <class Segment>
bool valid_common(ArgCheck& check, const Segment& s) {
    check.nonnegative("segment n", s.n)
        .not_null("segment grad", s.grad, s.n > 0)
        .not_null("segment param or param_bf16", s.param != nullptr ? (const void*)s.param : s.param_bf16, s.n > 0);
    return check.ok();
}

template <int Form, ParamMode Mode>
void adamw_range(const lk_adamw_segment& s, int64_t begin, int64_t end, const LkAdamwBetas& betas, float grad_scale) {
    float* __restrict param = s.param;
    unsigned short* __restrict param_bf16 = s.param_bf16;
    const float* __restrict grad = s.grad;
    float* __restrict m = s.m;
    float* __restrict v = s.v;
    const float decay = s.decay, step_size = s.step_size, bc2_sqrt = s.bias_correction2_sqrt, eps = s.eps;
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) {
        const float g = grad[i] * grad_scale;
        float mi = m[i], vi = v[i];
        const float p0 = Mode == kBf16 ? lk_bf16_to_f32(lk_bf16{param_bf16[i]}) : param[i];
        const float p = Form == 1 ? lk_adamw_bnb(p0, g, mi, vi, betas, decay, step_size, eps)
                                  : lk_adamw_torch(p0, g, mi, vi, betas, decay, step_size, bc2_sqrt, eps);
        m[i] = mi;
        v[i] = vi;
        if (Mode != kBf16) param[i] = p;
        if (Mode != kFp32) param_bf16[i] = lk_f32_to_bf16(p).bits;
    }
}

template <int Form>
void adamw_range(const lk_adamw_segment& s, int64_t begin, int64_t end, const LkAdamwBetas& betas, float grad_scale) {
    switch (mode_of(s.param, s.param_bf16)) {
        case kFp32: adamw_range<Form, kFp32>(s, begin, end, betas, grad_scale); break;
        case kFp32WithBf16Copy: adamw_range<Form, kFp32WithBf16Copy>(s, begin, end, betas, grad_scale); break;
        case kBf16: adamw_range<Form, kBf16>(s, begin, end, betas, grad_scale); break;
    }
}

// One 256-element block (or a segment's partial last block) of bitsandbytes' 8-bit AdamW.
void adamw8bit_block(const lk_adamw8bit_segment& s, int64_t block, const LkAdamwBetas& betas, float grad_scale) {
    const LkDynamicBits signed_map{lk_dynamic_signed_bits}, unsigned_map{lk_dynamic_unsigned_bits};
    const int64_t first = block * kBlock8bit;
    const int count = (int)std::min<int64_t>(kBlock8bit, s.n - first);
    float m[kBlock8bit], v[kBlock8bit];
    const float m_absmax = s.m_absmax[block], v_absmax = s.v_absmax[block];
    float new_m_absmax = 0.0f, new_v_absmax = 0.0f;
    for (int j = 0; j < count; ++j) {
        const int64_t i = first + j;
        m[j] = signed_map(s.m_codes[i]) * m_absmax;
        v[j] = unsigned_map(s.v_codes[i]) * v_absmax;
        lk_adamw8bit_moments(s.grad[i] * grad_scale, betas, m[j], v[j]);
        const float am = std::fabs(m[j]), av = std::fabs(v[j]);
        new_m_absmax = am > new_m_absmax ? am : new_m_absmax;
        new_v_absmax = av > new_v_absmax ? av : new_v_absmax;
    }
    for (int j = 0; j < count; ++j) {
        const int64_t i = first + j;
        const float p0 = s.param != nullptr ? s.param[i] : lk_bf16_to_f32(lk_bf16{s.param_bf16[i]});
        const float p = lk_adamw8bit_param(p0, m[j], v[j], s.decay, s.step_size, s.eps);
        if (s.param != nullptr) s.param[i] = p;
        if (s.param_bf16 != nullptr) s.param_bf16[i] = lk_f32_to_bf16(p).bits;
        s.m_codes[i] = (uint8_t)lk_adamw8bit_m_code(m[j], new_m_absmax, signed_map);
        s.v_codes[i] = (uint8_t)lk_adamw8bit_v_code(v[j], new_v_absmax, unsigned_map);
    }
    s.m_absmax[block] = new_m_absmax;
    s.v_absmax[block] = new_v_absmax;
}

// Running sums of per-segment counts: starts[s] is the first unit of segment s, starts[count] the total.
template <class Segment, class Units>
std::vector<int64_t> prefix(const Segment* segments, int64_t count, Units units) {
    std::vector<int64_t> starts((size_t)count + 1, 0);
    for (int64_t s = 0; s < count; ++s) starts[(size_t)s + 1] = starts[(size_t)s] + units(segments[s]);
    return starts;
}

// The segment holding unit u: the last s with starts[s] <= u and a non-empty range.
int64_t segment_of(const std::vector<int64_t>& starts, int64_t u) {
    return (int64_t)(std::upper_bound(starts.begin(), starts.end(), u) - starts.begin()) - 1;
}

bool valid_betas(ArgCheck& check, float beta1, float beta2, float grad_scale) {
    check.in_half_open_range("beta1", beta1, 0.0f, 1.0f)
        .in_half_open_range("beta2", beta2, 0.0f, 1.0f)
        .at_least("grad_scale", grad_scale, 0.0)
        .finite("grad_scale", grad_scale);
    return check.ok();
}

}  // namespace

LK_API lk_status lk_cpu_adamw(const lk_adamw_segment* segments, int64_t count, float beta1, float beta2,
                              float grad_scale, int32_t bnb_form) {
    ArgCheck check("lk_cpu_adamw");
    check.nonnegative("count", count).not_null("segments", segments, count > 0);
    if (!valid_betas(check, beta1, beta2, grad_scale)) return check.status();
    if (bnb_form != 0 && bnb_form != 1)
        return lk::fail(LK_ERR_INVALID_ARGUMENT, "lk_cpu_adamw: bnb_form = %d is neither 0 nor 1", (int)bnb_form);
    for (int64_t s = 0; s < count; ++s) {
        const lk_adamw_segment& segment = segments[s];
        if (!valid_common(check, segment)) return check.status();
        check.not_null("segment m", segment.m, segment.n > 0).not_null("segment v", segment.v, segment.n > 0);
        if (!check.ok()) return check.status();
    }
    return lk::cpu::guarded("lk_cpu_adamw", [&] {
        const std::vector<int64_t> starts = prefix(segments, count, [](const lk_adamw_segment& s) { return s.n; });
        const int64_t total = starts.back();
        const LkAdamwBetas betas = lk_adamw_betas(beta1, beta2);
        const int threads = lk::cpu::elementwise_threads(total);
#pragma omp parallel num_threads(threads) if (threads > 1)
        {
            int64_t begin, end;
            lk::cpu::thread_share(total, omp_get_thread_num(), omp_get_num_threads(), begin, end);
            for (int64_t s = begin < end ? segment_of(starts, begin) : count; s < count && starts[(size_t)s] < end; ++s) {
                const int64_t lo = std::max(begin, starts[(size_t)s]) - starts[(size_t)s];
                const int64_t hi = std::min(end, starts[(size_t)s + 1]) - starts[(size_t)s];
                if (bnb_form) adamw_range<1>(segments[s], lo, hi, betas, grad_scale);
                else adamw_range<0>(segments[s], lo, hi, betas, grad_scale);
            }
        }
        return LK_OK;
    });
}

LK_API lk_status lk_cpu_adamw8bit(const lk_adamw8bit_segment* segments, int64_t count, float beta1, float beta2,
                                  float grad_scale) {
    ArgCheck check("lk_cpu_adamw8bit");
    check.nonnegative("count", count).not_null("segments", segments, count > 0);
    if (!valid_betas(check, beta1, beta2, grad_scale)) return check.status();
    for (int64_t s = 0; s < count; ++s) {
        const lk_adamw8bit_segment& segment = segments[s];
        if (!valid_common(check, segment)) return check.status();
        const bool any = segment.n > 0;
        check.not_null("segment m_codes", segment.m_codes, any)
            .not_null("segment v_codes", segment.v_codes, any)
            .not_null("segment m_absmax", segment.m_absmax, any)
            .not_null("segment v_absmax", segment.v_absmax, any);
        if (!check.ok()) return check.status();
    }
    return lk::cpu::guarded("lk_cpu_adamw8bit", [&] {
        const std::vector<int64_t> starts =
            prefix(segments, count, [](const lk_adamw8bit_segment& s) { return (s.n + kBlock8bit - 1) / kBlock8bit; });
        const int64_t blocks = starts.back();
        const LkAdamwBetas betas = lk_adamw_betas(beta1, beta2);
        const int threads = lk::cpu::elementwise_threads(blocks * kBlock8bit);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
        for (int64_t b = 0; b < blocks; ++b) {
            const int64_t s = segment_of(starts, b);
            adamw8bit_block(segments[s], b - starts[(size_t)s], betas, grad_scale);
        }
        return LK_OK;
    });
}

LK_API lk_status lk_cpu_grad_sumsq(const lk_grad_span* spans, int64_t count, double* sum) {
    ArgCheck check("lk_cpu_grad_sumsq");
    check.nonnegative("count", count).not_null("spans", spans, count > 0).not_null("sum", sum);
    for (int64_t s = 0; s < count && check.ok(); ++s)
        check.nonnegative("span n", spans[s].n).not_null("span grad", spans[s].grad, spans[s].n > 0);
    if (!check.ok()) return check.status();
    return lk::cpu::guarded("lk_cpu_grad_sumsq", [&] {
        const std::vector<int64_t> starts =
            prefix(spans, count, [](const lk_grad_span& s) { return (s.n + kNormRun - 1) / kNormRun; });
        const int64_t runs = starts.back();
        std::vector<double> run_sums((size_t)runs);
        const int threads = lk::cpu::elementwise_threads(runs * kNormRun);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
        for (int64_t r = 0; r < runs; ++r) {
            const int64_t s = segment_of(starts, r);
            const float* grad = spans[s].grad;
            const int64_t first = (r - starts[(size_t)s]) * kNormRun;
            const int64_t last = std::min<int64_t>(first + kNormRun, spans[s].n);
            double run = 0.0;
#pragma omp simd reduction(+ : run)
            for (int64_t i = first; i < last; ++i) run += (double)grad[i] * (double)grad[i];
            run_sums[(size_t)r] = run;
        }
        double total = 0.0;
        for (double run : run_sums) total += run;
        *sum = total;
        return LK_OK;
    });
}
