// optim.cu: multi-tensor optimizer steps. One launch updates a whole list of segments (every
// parameter of an adapter set, or the slices a paged optimizer moves through memory at once);
// kernels/optim_segments.cuh has the list's layout, kernels/adamw_math.cuh the per-element
// arithmetic the CPU kernels share. docs/KERNELS.md has each entry point's contract.
//
// Entry points:
//   lk_optim_adamw_f32       AdamW with fp32 moments, torch's form or bitsandbytes' 32-bit form
//                            (bnb_form), optional bf16 parameter output; 28 B/elem with an fp32
//                            parameter (p, m, v read and written, g read), about 14 FLOPs, 1 sqrt
//   lk_optim_adamw8bit_f32   bitsandbytes' blockwise 8-bit AdamW (REFERENCE.md §8.7): per element
//                            g 4 B, p 8 B (4 for bf16 read and written), codes 2+2 B, plus 16 B
//                            of absmax per 256 elements; a 16-step code search per moment
//   lk_optim_grad_sumsq_f32  block_sums[b] = Σ g² in double over block b's elements: the global
//                            gradient norm for clipping, and (non-finite iff a gradient is) the
//                            non-finite check; 4 B/elem
//
// Strategy: one block per fixed run of a segment's elements (kOptimChunk of launch_geometry.cuh for
// the fp32 kernels, one 256-element quantization block for the 8-bit one), the segment found by a binary search over
// first_block (every thread reads the same words: broadcasts); a block-stride loop inside the run,
// so accesses are coalesced and no thread walks other segments. The 8-bit kernel copies both
// dynamic maps into shared memory (the code search reads them data-dependently; __constant__ reads
// would serialize), reduces the block's max |m| and |v| through warp shuffles and one shared word
// per warp, then requantizes. The norm pass writes one double per block; the launcher adds them in
// block order, so a run repeats bit for bit. All are bound by memory bandwidth.
// Assumptions: segments are non-empty and listed in first_block order with first_block[0] = 0;
// an 8-bit segment starts at a quantization-block boundary; nothing overlaps; no alignment.
#include "adamw_math.cuh"
#include "common.cuh"
#include "launch_geometry.cuh"
#include "optim_segments.cuh"
#include "quant_codes.cuh"

namespace {

static_assert(kOptimThreads % 32 == 0 && kOptimChunk % kOptimThreads == 0, "whole warps, whole passes");
static_assert(kOptim8bitBlock == kOptimThreads, "the 8-bit kernel gives each thread one element of its block");

// The segment owning grid block `block`: the last s whose first_block <= block.
template <class Segment>
LK_DEVICE int lk_optim_segment_of(const Segment* segments, int count, lk_i64 block) {
    int lo = 0, hi = count - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (segments[mid].first_block <= block) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

// This block's run [begin, end) of its segment, `run` elements per block.
template <class Segment>
LK_DEVICE void lk_optim_run(const Segment& s, lk_i64 run, lk_i64& begin, lk_i64& end) {
    begin = ((lk_i64)blockIdx.x - s.first_block) * run;
    end = begin + run < s.n ? begin + run : s.n;
}

LK_DEVICE float lk_optim_load_param(const float* param, const unsigned short* param_bf16, lk_i64 i) {
    return param ? param[i] : lk_bf16_to_f32(lk_bf16{param_bf16[i]});
}

LK_DEVICE void lk_optim_store_param(float* param, unsigned short* param_bf16, lk_i64 i, float p) {
    if (param) param[i] = p;
    if (param_bf16) param_bf16[i] = lk_f32_to_bf16(p).bits;
}

// Max over the block's threads of a and b (every thread gets both); `scratch` holds 2 words a warp.
LK_DEVICE void lk_optim_block_max2(float& a, float& b, float* scratch) {
    constexpr int kWarps = kOptimThreads / 32;
    a = lk_warp_max(a);
    b = lk_warp_max(b);
    const int lane = (int)threadIdx.x & 31, warp = (int)threadIdx.x >> 5;
    if (lane == 0) {
        scratch[warp] = a;
        scratch[kWarps + warp] = b;
    }
    __syncthreads();
    a = scratch[0];
    b = scratch[kWarps];
    for (int w = 1; w < kWarps; ++w) {
        a = scratch[w] > a ? scratch[w] : a;
        b = scratch[kWarps + w] > b ? scratch[kWarps + w] : b;
    }
}

}  // namespace

extern "C" __global__ void __launch_bounds__(kOptimThreads)
    lk_optim_adamw_f32(const lk_adamw_segment* segments, int count, float beta1, float beta2, float grad_scale,
                       int bnb_form) {
    const lk_adamw_segment s = segments[lk_optim_segment_of(segments, count, blockIdx.x)];
    const LkAdamwBetas betas = lk_adamw_betas(beta1, beta2);
    lk_i64 begin, end;
    lk_optim_run(s, kOptimChunk, begin, end);
    for (lk_i64 i = begin + threadIdx.x; i < end; i += kOptimThreads) {
        const float g = s.grad[i] * grad_scale;
        float m = s.m[i], v = s.v[i];
        const float p0 = lk_optim_load_param(s.param, s.param_bf16, i);
        const float p = bnb_form ? lk_adamw_bnb(p0, g, m, v, betas, s.decay, s.step_size, s.eps)
                                 : lk_adamw_torch(p0, g, m, v, betas, s.decay, s.step_size, s.bias_correction2_sqrt, s.eps);
        s.m[i] = m;
        s.v[i] = v;
        lk_optim_store_param(s.param, s.param_bf16, i, p);
    }
}
LK_KERNEL(lk_optim_adamw_f32);

extern "C" __global__ void __launch_bounds__(kOptimThreads)
    lk_optim_adamw8bit_f32(const lk_adamw8bit_segment* segments, int count, float beta1, float beta2,
                           float grad_scale) {
    LK_SHARED(float, signed_map, [256]);
    LK_SHARED(float, unsigned_map, [256]);
    LK_SHARED(float, scratch, [2 * (kOptimThreads / 32)]);
    signed_map[threadIdx.x] = lk_bits_f32(lk_dynamic_signed_bits[threadIdx.x]);
    unsigned_map[threadIdx.x] = lk_bits_f32(lk_dynamic_unsigned_bits[threadIdx.x]);
    __syncthreads();

    const lk_adamw8bit_segment s = segments[lk_optim_segment_of(segments, count, blockIdx.x)];
    const lk_i64 block = (lk_i64)blockIdx.x - s.first_block;
    const lk_i64 i = block * kOptim8bitBlock + threadIdx.x;
    const bool active = i < s.n;  // the last block of a segment may be partial; every thread stays to the barriers
    const LkAdamwBetas betas = lk_adamw_betas(beta1, beta2);
    float m = 0.0f, v = 0.0f;
    if (active) {
        m = signed_map[s.m_codes[i]] * s.m_absmax[block];
        v = unsigned_map[s.v_codes[i]] * s.v_absmax[block];
        lk_adamw8bit_moments(s.grad[i] * grad_scale, betas, m, v);
    }
    float absmax_m = fabsf(m), absmax_v = fabsf(v);  // inactive threads add 0, which no max is below
    lk_optim_block_max2(absmax_m, absmax_v, scratch);
    if (active) {
        const float p = lk_optim_load_param(s.param, s.param_bf16, i);
        lk_optim_store_param(s.param, s.param_bf16, i, lk_adamw8bit_param(p, m, v, s.decay, s.step_size, s.eps));
        s.m_codes[i] = (lk_u8)lk_adamw8bit_m_code(m, absmax_m, LkDynamicFloats{signed_map});
        s.v_codes[i] = (lk_u8)lk_adamw8bit_v_code(v, absmax_v, LkDynamicFloats{unsigned_map});
        if (threadIdx.x == 0) {
            s.m_absmax[block] = absmax_m;
            s.v_absmax[block] = absmax_v;
        }
    }
}
LK_KERNEL(lk_optim_adamw8bit_f32);

// block_sums: one double per block of the grid.
extern "C" __global__ void __launch_bounds__(kOptimThreads)
    lk_optim_grad_sumsq_f32(const lk_grad_span* spans, int count, double* block_sums) {
    LK_SHARED(double, warp_sums, [kOptimThreads / 32]);
    const lk_grad_span s = spans[lk_optim_segment_of(spans, count, blockIdx.x)];
    lk_i64 begin, end;
    lk_optim_run(s, kOptimChunk, begin, end);
    double sum = 0.0;
    for (lk_i64 i = begin + threadIdx.x; i < end; i += kOptimThreads) {
        const double g = s.grad[i];
        sum += g * g;
    }
    sum = lk_warp_sum_f64(sum);
    const int lane = (int)threadIdx.x & 31, warp = (int)threadIdx.x >> 5;
    if (lane == 0) warp_sums[warp] = sum;
    __syncthreads();
    if (warp == 0) {
        double block_sum = lane < kOptimThreads / 32 ? warp_sums[lane] : 0.0;
        block_sum = lk_warp_sum_f64(block_sum);
        if (lane == 0) block_sums[blockIdx.x] = block_sum;
    }
}
LK_KERNEL(lk_optim_grad_sumsq_f32);
