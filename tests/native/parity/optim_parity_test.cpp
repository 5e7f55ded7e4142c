// Every lk_optim_* entry point of kernels/optim.cu under the SIMT emulator, launched with the C#
// launcher's geometry (Optim/GpuOptimizerKernels.cs: one block per kOptimChunk elements of a
// segment, one per 256-element block for 8-bit, first_block the running sum), against the CPU
// functions of lora_kernels_optim.h on the same segment lists. Both run the arithmetic of
// kernels/adamw_math.cuh compiled by g++ without FMA contraction, so AdamW (both forms, every
// parameter mode) and 8-bit AdamW match bit for bit; the norm's double sums differ only in order.
// Sizes: 1, a prime below a block run, one above it, and one spanning several runs, as separate
// segments of one launch, so block-to-segment lookups at every boundary are exercised.
#include "parity.h"

namespace {

using parity::CeilDiv;
using parity::Launch;

const std::vector<int64_t> kSizes = {1, 251, 4099, 100003};
constexpr float kBeta1 = 0.9f, kBeta2 = 0.999f;

// Fills first_block as the launcher does and returns the grid's block count.
template <class Segment>
uint32_t AssignBlocks(std::vector<Segment>& segments, int64_t run) {
    int64_t blocks = 0;
    for (Segment& s : segments) {
        s.first_block = blocks;
        blocks += CeilDiv(s.n, run);
    }
    return (uint32_t)blocks;
}

::testing::AssertionResult SameBits(const char* what, const void* got, const void* want, size_t bytes) {
    if (std::memcmp(got, want, bytes) == 0) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << what << " differs";
}

// One parameter's buffers: fp32 value (or master), bf16 copy, gradient, fp32 or 8-bit state.
struct Tensor {
    std::vector<float> p, g, m, v;
    std::vector<uint16_t> p_bf16;
    std::vector<unsigned char> m_codes, v_codes;
    std::vector<float> m_absmax, v_absmax;
};

std::vector<Tensor> MakeTensors(uint32_t seed) {
    std::vector<Tensor> tensors;
    for (int64_t n : kSizes) {
        Tensor t;
        t.p = parity::RandomValues((size_t)n, seed++);
        t.g = parity::RandomValues((size_t)n, seed++);
        t.m = parity::RandomValues((size_t)n, seed++);
        for (float& e : t.m) e *= 0.1f;
        t.v = parity::Abs(parity::RandomValues((size_t)n, seed++));
        for (float& e : t.v) e *= 0.01f;
        t.p_bf16.resize((size_t)n);
        lk_cpu_f32_to_bf16(n, t.p.data(), t.p_bf16.data());
        const size_t blocks = (size_t)CeilDiv(n, kOptim8bitBlock);
        std::mt19937 rng(seed++);
        for (int64_t i = 0; i < n; ++i) {
            t.m_codes.push_back((unsigned char)(rng() & 255));
            t.v_codes.push_back((unsigned char)(rng() & 255));
        }
        for (size_t b = 0; b < blocks; ++b) {
            t.m_absmax.push_back(0.01f * (float)(1 + b % 7));
            t.v_absmax.push_back(0.001f * (float)(1 + b % 5));
        }
        tensors.push_back(std::move(t));
    }
    return tensors;
}

// The fp32 kernel: segment t uses parameter mode t % 3 (fp32, fp32 master + bf16 copy, bf16 only).
std::vector<lk_adamw_segment> AdamwSegments(std::vector<Tensor>& tensors) {
    std::vector<lk_adamw_segment> segments;
    for (size_t t = 0; t < tensors.size(); ++t) {
        Tensor& x = tensors[t];
        const int mode = (int)(t % 3);
        segments.push_back(lk_adamw_segment{mode == 2 ? nullptr : x.p.data(), mode == 0 ? nullptr : x.p_bf16.data(),
                                            x.g.data(), x.m.data(), x.v.data(), (long long)x.p.size(), 0,
                                            0.99f - 0.01f * (float)t, -1e-2f * (float)(t + 1), 0.3f, 1e-8f});
    }
    return segments;
}

TEST(OptimParity, AdamWBothFormsBitForBit) {
    for (int bnb_form : {0, 1}) {
        SCOPED_TRACE("bnb_form=" + std::to_string(bnb_form));
        std::vector<Tensor> cpu = MakeTensors(100), gpu = MakeTensors(100);
        std::vector<lk_adamw_segment> cpu_segments = AdamwSegments(cpu), gpu_segments = AdamwSegments(gpu);
        const uint32_t blocks = AssignBlocks(gpu_segments, kOptimChunk);
        const float grad_scale = 0.75f;
        ASSERT_EQ(LK_OK, lk_cpu_adamw(cpu_segments.data(), (int64_t)cpu_segments.size(), kBeta1, kBeta2, grad_scale,
                                      bnb_form));
        ASSERT_TRUE(Launch("lk_optim_adamw_f32", {blocks, 1}, kOptimThreads, 0,
                           (const lk_adamw_segment*)gpu_segments.data(), (int)gpu_segments.size(), kBeta1, kBeta2,
                           grad_scale, bnb_form));
        const std::vector<Tensor> before = MakeTensors(100);
        for (size_t t = 0; t < cpu.size(); ++t) {
            SCOPED_TRACE("segment " + std::to_string(t));
            const size_t n = cpu[t].p.size();
            EXPECT_TRUE(SameBits("p", gpu[t].p.data(), cpu[t].p.data(), n * 4));
            EXPECT_TRUE(SameBits("p_bf16", gpu[t].p_bf16.data(), cpu[t].p_bf16.data(), n * 2));
            EXPECT_TRUE(SameBits("m", gpu[t].m.data(), cpu[t].m.data(), n * 4));
            EXPECT_TRUE(SameBits("v", gpu[t].v.data(), cpu[t].v.data(), n * 4));
            EXPECT_NE(cpu[t].m, before[t].m);  // the step did something
            EXPECT_TRUE(cpu[t].p != before[t].p || cpu[t].p_bf16 != before[t].p_bf16) << "the parameter moved";
        }
    }
}

TEST(OptimParity, AdamW8bitBitForBit) {
    std::vector<Tensor> cpu = MakeTensors(200), gpu = MakeTensors(200);
    auto segments_of = [](std::vector<Tensor>& tensors) {
        std::vector<lk_adamw8bit_segment> segments;
        for (size_t t = 0; t < tensors.size(); ++t) {
            Tensor& x = tensors[t];
            const bool bf16 = t % 2 == 1;  // bitsandbytes updates a bf16 parameter directly
            segments.push_back(lk_adamw8bit_segment{bf16 ? nullptr : x.p.data(), bf16 ? x.p_bf16.data() : nullptr,
                                                    x.g.data(), x.m_codes.data(), x.v_codes.data(), x.m_absmax.data(),
                                                    x.v_absmax.data(), (long long)x.p.size(), 0, 0.999f, -1e-3f,
                                                    1e-8f, 0.0f});
        }
        return segments;
    };
    std::vector<lk_adamw8bit_segment> cpu_segments = segments_of(cpu), gpu_segments = segments_of(gpu);
    const uint32_t blocks = AssignBlocks(gpu_segments, kOptim8bitBlock);
    ASSERT_EQ(LK_OK, lk_cpu_adamw8bit(cpu_segments.data(), (int64_t)cpu_segments.size(), kBeta1, kBeta2, 1.0f));
    ASSERT_TRUE(Launch("lk_optim_adamw8bit_f32", {blocks, 1}, kOptimThreads, 0,
                       (const lk_adamw8bit_segment*)gpu_segments.data(), (int)gpu_segments.size(), kBeta1, kBeta2, 1.0f));
    const std::vector<Tensor> before = MakeTensors(200);
    for (size_t t = 0; t < cpu.size(); ++t) {
        SCOPED_TRACE("segment " + std::to_string(t));
        const size_t n = cpu[t].p.size();
        EXPECT_TRUE(SameBits("p", gpu[t].p.data(), cpu[t].p.data(), n * 4));
        EXPECT_TRUE(SameBits("p_bf16", gpu[t].p_bf16.data(), cpu[t].p_bf16.data(), n * 2));
        EXPECT_EQ(gpu[t].m_codes, cpu[t].m_codes);
        EXPECT_EQ(gpu[t].v_codes, cpu[t].v_codes);
        EXPECT_TRUE(SameBits("m_absmax", gpu[t].m_absmax.data(), cpu[t].m_absmax.data(), cpu[t].m_absmax.size() * 4));
        EXPECT_TRUE(SameBits("v_absmax", gpu[t].v_absmax.data(), cpu[t].v_absmax.data(), cpu[t].v_absmax.size() * 4));
        EXPECT_NE(cpu[t].m_codes, before[t].m_codes);
        EXPECT_NE(cpu[t].m_absmax, before[t].m_absmax);
    }
}

TEST(OptimParity, GradSumOfSquaresPerBlock) {
    const std::vector<Tensor> tensors = MakeTensors(300);
    std::vector<lk_grad_span> spans;
    for (const Tensor& t : tensors) spans.push_back(lk_grad_span{t.g.data(), (long long)t.g.size(), 0});
    const uint32_t blocks = AssignBlocks(spans, kOptimChunk);
    std::vector<double> block_sums(blocks, NAN);
    ASSERT_TRUE(Launch("lk_optim_grad_sumsq_f32", {blocks, 1}, kOptimThreads, 0, (const lk_grad_span*)spans.data(),
                       (int)spans.size(), block_sums.data()));
    double gpu = 0.0;
    for (double s : block_sums) gpu += s;  // the launcher's order: block by block
    double cpu = 0.0;
    ASSERT_EQ(LK_OK, lk_cpu_grad_sumsq(spans.data(), (int64_t)spans.size(), &cpu));
    // The same runs summed in double in two orders: at most (run length + runs) · 2^-53 · Σ g² apart.
    const double total_elements = 1 + 251 + 4099 + 100003;
    EXPECT_NEAR(gpu, cpu, total_elements * std::ldexp(1.0, -53) * cpu);
    EXPECT_GT(cpu, 1000.0);
}

}  // namespace
