// Every lk_gated_* entry point of kernels/gated.cu under the SIMT emulator, run in the C# launcher's
// sequences (Families/Gated/GpuGatedKernels.cs, with kernels/lora.cu's kernels where it uses them),
// against lk_cpu_gated_* on the same inputs:
//   per-rank gate   fold, then LoRA's decode or project + tiled forward on B'; LoRA's backward on B'
//                   (grad_u, grad_b, grad_a, grad_x), then rank_grad; merge = fold + LoRA's merge;
//   per-token gate  project, token_gate (u ⊙ G), LoRA's tiled forward on it; grad_u (z), token_gate
//                   (du, dG, u ⊙ G), grad_b, grad_a, grad_x;
//   top-k           LoRA's forward with r = 0, topk_project, topk_expand (B's columns); grad_h,
//                   topk_scatter (dA, dB), LoRA's grad_x with r = 0, topk_expand (A's rows, masked);
//   router          softmax, route_topk and their backwards, balance and its backward;
//   training        soft_threshold (bit for bit), sensitivity, triplet_score, gram, orth_grad.
// bf16 cases round the inputs to bf16 and give the CPU the rounded values as fp32.
//
// Tolerances: parity::Near (K = the longest fp32 chain behind an output) plus, for bf16 storage,
// 2^-8·extra_bound for each extra bf16 rounding the launcher's sequence makes: B' and dB' stored as
// bf16 (per-rank gate, as VeRA's fold: extra_bound = Σ|adapter terms|), and the base product stored
// before the top-k term is added to it (extra_bound = Σ|terms|). Router values differ by the fp32
// exp and sums of the GPU against the CPU's double: 8·2^-24 relative to Σ|terms|.
#include "parity.h"

namespace {

using parity::Buffer;
using parity::DType;
using parity::Launch;

constexpr uint32_t kGatedThreads = 256;
constexpr int kGatedWarps = 8;
constexpr int kEmulatedMultiprocessors = 4;  // what SimtKernelDevice reports
constexpr double kBf16Extra = 1.0 / 256.0;

std::vector<float> Zeros(size_t n) { return std::vector<float>(n, 0.0f); }

uint32_t Blocks(int64_t items, int per_block) { return (uint32_t)parity::CeilDiv(items, per_block); }

// ---- the dense gate -------------------------------------------------------------------------------

struct DenseCase {
    int M, in, out, r;
    bool per_token;
    DType dtype;
    float dropout_p;
};

std::string DenseName(const DenseCase& c) {
    std::ostringstream s;
    s << "M" << c.M << "_in" << c.in << "_out" << c.out << "_r" << c.r << (c.per_token ? "_token" : "_rank") << "_p"
      << (int)std::lround(c.dropout_p * 100) << "_" << parity::Suffix(c.dtype);
    return s.str();
}

// M over decode (1, 7) and tiled (17, 33); in/out multiples of no tile, warp or vector (and a
// decode vector path, in = 64); r over 1, 8, 17.
std::vector<DenseCase> DenseCases() {
    const int shapes[][4] = {{1, 33, 97, 8}, {7, 64, 33, 17}, {17, 97, 40, 1}, {33, 33, 65, 8}};
    std::vector<DenseCase> cases;
    for (const auto& s : shapes)
        for (bool per_token : {false, true})
            for (DType dtype : {DType::F32, DType::BF16})
                for (float p : {0.0f, 0.25f}) cases.push_back({s[0], s[1], s[2], s[3], per_token, dtype, p});
    return cases;
}

struct DenseInputs {
    Buffer x, W0, bias, A, B, dy;
    std::vector<float> gate;
    float scale = 0.75f;
    unsigned long long seed;

    explicit DenseInputs(const DenseCase& c) : seed(0x6a7e0000ull + (unsigned long long)c.M * 31 + c.r) {
        uint32_t s = (uint32_t)(c.M * 1000003 + c.in * 1009 + c.out * 17 + c.r + (c.per_token ? 7 : 0));
        x = Buffer(c.dtype, parity::RandomValues((size_t)c.M * c.in, s + 1));
        W0 = Buffer(c.dtype, parity::RandomValues((size_t)c.out * c.in, s + 2));
        bias = Buffer(c.dtype, parity::RandomValues((size_t)c.out, s + 3));
        A = Buffer(c.dtype, parity::RandomValues((size_t)c.r * c.in, s + 4));
        B = Buffer(c.dtype, parity::RandomValues((size_t)c.out * c.r, s + 5));
        gate = parity::RandomValues((size_t)(c.per_token ? c.M * c.r : c.r), s + 6);
        dy = Buffer(c.dtype, parity::RandomValues((size_t)c.M * c.out, s + 7));
    }
    int64_t stride(const DenseCase& c) const { return c.per_token ? c.r : 0; }
};

// B' = B·diag(g), the launcher's fold for a per-rank gate.
Buffer Fold(const DenseCase& c, DenseInputs& in) {
    Buffer folded = Buffer::Poisoned(c.dtype, (size_t)c.out * c.r);
    EXPECT_TRUE(Launch(parity::KernelName("lk_gated_fold", c.dtype).c_str(),
                       parity::ElementwiseGrid((int64_t)c.out * c.r, kEmulatedMultiprocessors), kGatedThreads, 0, in.B.data(),
                       (const float*)in.gate.data(), folded.data(), c.out, c.r));
    return folded;
}

// The elementwise token_gate launch: gated = u ⊙ G and, with z, du = z ⊙ G and dG = z ⊙ u.
void TokenGate(const DenseCase& c, const float* u, const float* z, const float* gate, float* gated, float* du, float* dgate) {
    const long long n = (long long)c.M * c.r;
    EXPECT_TRUE(Launch("lk_gated_token_gate_f32", parity::ElementwiseGrid(n, kEmulatedMultiprocessors), kGatedThreads, 0, u, z,
                       gate, gated, du, dgate, n));
}

class GatedDenseParity : public ::testing::TestWithParam<DenseCase> {};

TEST_P(GatedDenseParity, ForwardMatchesCpu) {
    const DenseCase c = GetParam();
    DenseInputs in(c);
    auto cpu = [&](const std::vector<float>& x, const std::vector<float>& W0, const std::vector<float>* bias,
                   const std::vector<float>& A, const std::vector<float>& B, const std::vector<float>& gate, std::vector<float>* u_out) {
        std::vector<float> y((size_t)c.M * c.out), u((size_t)c.M * c.r);
        EXPECT_EQ(LK_OK, lk_cpu_gated_forward(c.M, c.in, c.out, c.r, x.data(), W0.data(), bias ? bias->data() : nullptr, A.data(),
                                              B.data(), gate.data(), in.stride(c), in.scale, c.dropout_p, in.seed, y.data(), u.data()));
        if (u_out) *u_out = u;
        return y;
    };
    const std::vector<float> bias = in.bias.values(), abs_bias = parity::Abs(bias);
    std::vector<float> want_u, bound_u;
    const std::vector<float> want_y = cpu(in.x.values(), in.W0.values(), &bias, in.A.values(), in.B.values(), in.gate, &want_u);
    const std::vector<float> abs_x = parity::Abs(in.x.values()), abs_A = parity::Abs(in.A.values()),
                             abs_B = parity::Abs(in.B.values()), abs_g = parity::Abs(in.gate);
    const std::vector<float> bound_y = cpu(abs_x, parity::Abs(in.W0.values()), &abs_bias, abs_A, abs_B, abs_g, &bound_u);
    const std::vector<float> adapter_y = cpu(abs_x, Zeros((size_t)c.out * c.in), nullptr, abs_A, abs_B, abs_g, nullptr);
    const bool bf16 = c.dtype == DType::BF16;
    const double out_rounding = bf16 ? parity::kBf16Rounding : 0.0;
    const double extra = bf16 && !c.per_token ? kBf16Extra : 0.0;  // B' stored as bf16

    Buffer y = Buffer::Poisoned(c.dtype, (size_t)c.M * c.out), u = Buffer::Poisoned(DType::F32, (size_t)c.M * c.r);
    const auto decode = parity::DecodeGeometryFor(c.M, c.in, c.out, c.r, kEmulatedMultiprocessors, LK_SIMT_MAX_DYNAMIC_SHARED_BYTES);
    Buffer gate(DType::F32, in.gate);
    if (!c.per_token) {
        Buffer folded = Fold(c, in);
        if (decode.fits) {
            ASSERT_TRUE(Launch(parity::KernelName("lk_lora_forward_decode", c.dtype).c_str(), {decode.blocks, 1},
                               parity::kDecodeThreads, decode.shared_bytes, in.x.data(), in.W0.data(), in.bias.data(), in.A.data(),
                               folded.data(), y.data(), (float*)u.data(), c.M, c.in, c.out, c.r, in.scale, c.dropout_p, in.seed));
        } else {
            ASSERT_TRUE(Launch(parity::KernelName("lk_lora_project", c.dtype).c_str(), parity::TileGrid(c.M, c.r),
                               parity::kTileThreads, 0, in.x.data(), in.A.data(), (float*)u.data(), c.M, c.in, c.r, c.dropout_p,
                               in.seed));
            ASSERT_TRUE(Launch(parity::KernelName("lk_lora_forward_tiled", c.dtype).c_str(), parity::TileGrid(c.M, c.out),
                               parity::kTileThreads, 0, in.x.data(), in.W0.data(), in.bias.data(), (const float*)u.data(),
                               folded.data(), y.data(), c.M, c.in, c.out, c.r, in.scale));
        }
    } else {
        ASSERT_TRUE(Launch(parity::KernelName("lk_lora_project", c.dtype).c_str(), parity::TileGrid(c.M, c.r), parity::kTileThreads,
                           0, in.x.data(), in.A.data(), (float*)u.data(), c.M, c.in, c.r, c.dropout_p, in.seed));
        Buffer gated = Buffer::Poisoned(DType::F32, (size_t)c.M * c.r);
        TokenGate(c, (const float*)u.data(), nullptr, (const float*)gate.data(), (float*)gated.data(), nullptr, nullptr);
        ASSERT_TRUE(Launch(parity::KernelName("lk_lora_forward_tiled", c.dtype).c_str(), parity::TileGrid(c.M, c.out),
                           parity::kTileThreads, 0, in.x.data(), in.W0.data(), in.bias.data(), (const float*)gated.data(),
                           in.B.data(), y.data(), c.M, c.in, c.out, c.r, in.scale));
    }
    EXPECT_TRUE(parity::Near("u", u.values(), want_u, bound_u, c.in, 0.0));
    EXPECT_TRUE(parity::NearWithExtra("y", y.values(), want_y, bound_y, c.in + c.r + 4, out_rounding, adapter_y, extra));
}

TEST_P(GatedDenseParity, BackwardMatchesCpu) {
    const DenseCase c = GetParam();
    DenseInputs in(c);
    const std::vector<float> u = parity::RandomValues((size_t)c.M * c.r, 77u + (uint32_t)c.r);
    struct Grads {
        std::vector<float> dx, dA, dB, dg;
    };
    auto cpu = [&](const std::vector<float>& x, const std::vector<float>& W0, const std::vector<float>& A, const std::vector<float>& B,
                   const std::vector<float>& gate, const std::vector<float>& u_, const std::vector<float>& dy) {
        Grads g{std::vector<float>((size_t)c.M * c.in), std::vector<float>((size_t)c.r * c.in), std::vector<float>((size_t)c.out * c.r),
                std::vector<float>(gate.size())};
        EXPECT_EQ(LK_OK, lk_cpu_gated_backward(c.M, c.in, c.out, c.r, x.data(), W0.data(), A.data(), B.data(), gate.data(), in.stride(c),
                                               u_.data(), dy.data(), in.scale, c.dropout_p, in.seed, g.dx.data(), g.dA.data(),
                                               g.dB.data(), g.dg.data()));
        return g;
    };
    const Grads want = cpu(in.x.values(), in.W0.values(), in.A.values(), in.B.values(), in.gate, u, in.dy.values());
    const std::vector<float> abs_x = parity::Abs(in.x.values()), abs_A = parity::Abs(in.A.values()), abs_B = parity::Abs(in.B.values()),
                             abs_g = parity::Abs(in.gate), abs_u = parity::Abs(u), abs_dy = parity::Abs(in.dy.values());
    const Grads bound = cpu(abs_x, parity::Abs(in.W0.values()), abs_A, abs_B, abs_g, abs_u, abs_dy);
    const Grads adapter = cpu(abs_x, Zeros((size_t)c.out * c.in), abs_A, abs_B, abs_g, abs_u, abs_dy);
    const bool bf16 = c.dtype == DType::BF16;
    const double out_rounding = bf16 ? parity::kBf16Rounding : 0.0;
    const double extra = bf16 && !c.per_token ? 2 * kBf16Extra : 0.0;  // B' and dB' stored as bf16

    Buffer u_buffer(DType::F32, u), gate(DType::F32, in.gate);
    Buffer dx = Buffer::Poisoned(c.dtype, (size_t)c.M * c.in), dA = Buffer::Poisoned(c.dtype, (size_t)c.r * c.in);
    Buffer dB = Buffer::Poisoned(c.dtype, (size_t)c.out * c.r), dg = Buffer::Poisoned(DType::F32, in.gate.size());
    Buffer du = Buffer::Poisoned(DType::F32, (size_t)c.M * c.r);
    Buffer folded = c.per_token ? Buffer() : Fold(c, in);
    void* B_used = c.per_token ? in.B.data() : folded.data();
    ASSERT_TRUE(Launch(parity::KernelName("lk_lora_grad_u", c.dtype).c_str(), parity::TileGrid(c.M, c.r), parity::kTileThreads, 0,
                       in.dy.data(), B_used, (float*)du.data(), c.M, c.out, c.r, in.scale));
    if (c.per_token) {  // du held z: du = z ⊙ G (in place), dG = z ⊙ u, and u ⊙ G for dB
        Buffer z = du, gated = Buffer::Poisoned(DType::F32, (size_t)c.M * c.r);
        TokenGate(c, (const float*)u_buffer.data(), (const float*)z.data(), (const float*)gate.data(), (float*)gated.data(),
                  (float*)du.data(), (float*)dg.data());
        ASSERT_TRUE(Launch(parity::KernelName("lk_lora_grad_b", c.dtype).c_str(), parity::TileGrid(c.out, c.r), parity::kTileThreads,
                           0, in.dy.data(), (const float*)gated.data(), dB.data(), c.M, c.out, c.r, in.scale));
    } else {  // dB' = s dyᵀ u, then dB = dB'·diag(g) in place and dg = Σ_n B ⊙ dB'
        ASSERT_TRUE(Launch(parity::KernelName("lk_lora_grad_b", c.dtype).c_str(), parity::TileGrid(c.out, c.r), parity::kTileThreads,
                           0, in.dy.data(), (const float*)u_buffer.data(), dB.data(), c.M, c.out, c.r, in.scale));
        ASSERT_TRUE(Launch(parity::KernelName("lk_gated_rank_grad", c.dtype).c_str(), {Blocks(c.r, 32), 1}, kGatedThreads, 0,
                           in.B.data(), dB.data(), (const float*)gate.data(), dB.data(), (float*)dg.data(), c.out, c.r));
    }
    ASSERT_TRUE(Launch(parity::KernelName("lk_lora_grad_a", c.dtype).c_str(), parity::TileGrid(c.r, c.in), parity::kTileThreads, 0,
                       (const float*)du.data(), in.x.data(), dA.data(), c.M, c.in, c.r, c.dropout_p, in.seed));
    ASSERT_TRUE(Launch(parity::KernelName("lk_lora_grad_x", c.dtype).c_str(), parity::TileGrid(c.M, c.in), parity::kTileThreads, 0,
                       in.dy.data(), in.W0.data(), (const float*)du.data(), in.A.data(), dx.data(), c.M, c.in, c.out, c.r,
                       c.dropout_p, in.seed));

    EXPECT_TRUE(parity::NearWithExtra("dx", dx.values(), want.dx, bound.dx, c.out + c.r + 2, out_rounding, adapter.dx, extra));
    EXPECT_TRUE(parity::NearWithExtra("dA", dA.values(), want.dA, bound.dA, c.M + c.out + 2, out_rounding, bound.dA, extra));
    EXPECT_TRUE(parity::NearWithExtra("dB", dB.values(), want.dB, bound.dB, c.M + 2, out_rounding, bound.dB, extra));
    EXPECT_TRUE(parity::NearWithExtra("dgate", dg.values(), want.dg, bound.dg, c.M + c.out + 2, 0.0, bound.dg, extra));
}

INSTANTIATE_TEST_SUITE_P(Shapes, GatedDenseParity, ::testing::ValuesIn(DenseCases()),
                         [](const ::testing::TestParamInfo<DenseCase>& info) { return DenseName(info.param); });

TEST(GatedMergeParity, FoldAndLoraMergeMatchCpuBothWays_out23_in19_r5) {
    for (DType dtype : {DType::F32, DType::BF16}) {
        SCOPED_TRACE(parity::Suffix(dtype));
        const DenseCase c{1, 19, 23, 5, false, dtype, 0.0f};
        DenseInputs in(c);
        for (float scale : {0.75f, -0.75f}) {
            std::vector<float> want = in.W0.values(), bound = parity::Abs(want), adapter = Zeros(want.size());
            const std::vector<float> abs_A = parity::Abs(in.A.values()), abs_B = parity::Abs(in.B.values()), abs_g = parity::Abs(in.gate);
            ASSERT_EQ(LK_OK, lk_cpu_gated_merge(c.out, c.in, c.r, want.data(), in.A.values().data(), in.B.values().data(),
                                                in.gate.data(), scale));
            ASSERT_EQ(LK_OK, lk_cpu_gated_merge(c.out, c.in, c.r, bound.data(), abs_A.data(), abs_B.data(), abs_g.data(), std::fabs(scale)));
            ASSERT_EQ(LK_OK, lk_cpu_gated_merge(c.out, c.in, c.r, adapter.data(), abs_A.data(), abs_B.data(), abs_g.data(), std::fabs(scale)));
            Buffer folded = Fold(c, in);
            Buffer W = in.W0;
            ASSERT_TRUE(Launch(parity::KernelName("lk_lora_merge", dtype).c_str(), parity::TileGrid(c.out, c.in), parity::kTileThreads, 0,
                               W.data(), in.A.data(), folded.data(), c.out, c.in, c.r, scale));
            const bool bf16 = dtype == DType::BF16;
            EXPECT_TRUE(parity::NearWithExtra("W", W.values(), want, bound, c.r + 3, bf16 ? parity::kBf16Rounding : 0.0, adapter,
                                  bf16 ? kBf16Extra : 0.0));
        }
    }
}

// ---- top-k ----------------------------------------------------------------------------------------

struct TopKCase {
    int M, in, out, E, k;
    DType dtype;
    float dropout_p;
};

std::string TopKName(const TopKCase& c) {
    std::ostringstream s;
    s << "M" << c.M << "_in" << c.in << "_out" << c.out << "_E" << c.E << "_k" << c.k << "_p" << (int)std::lround(c.dropout_p * 100)
      << "_" << parity::Suffix(c.dtype);
    return s.str();
}

// M over decode (1, 7) and tiled (33) base products; E over 5 and 37 (more than a warp), k over 1, 3.
std::vector<TopKCase> TopKCases() {
    const int shapes[][5] = {{1, 33, 97, 5, 1}, {7, 64, 33, 37, 3}, {33, 97, 40, 5, 3}, {17, 33, 65, 37, 1}};
    std::vector<TopKCase> cases;
    for (const auto& s : shapes)
        for (DType dtype : {DType::F32, DType::BF16})
            for (float p : {0.0f, 0.25f}) cases.push_back({s[0], s[1], s[2], s[3], s[4], dtype, p});
    return cases;
}

struct TopKInputs {
    Buffer x, W0, bias, A, B, dy;
    std::vector<float> expert, weight, h;
    float scale = 1.25f;
    unsigned long long seed;

    explicit TopKInputs(const TopKCase& c) : seed(0x70e40000ull + (unsigned long long)c.M * 17 + c.E) {
        uint32_t s = (uint32_t)(c.M * 1000003 + c.in * 1009 + c.out * 17 + c.E * 3 + c.k);
        x = Buffer(c.dtype, parity::RandomValues((size_t)c.M * c.in, s + 1));
        W0 = Buffer(c.dtype, parity::RandomValues((size_t)c.out * c.in, s + 2));
        bias = Buffer(c.dtype, parity::RandomValues((size_t)c.out, s + 3));
        A = Buffer(c.dtype, parity::RandomValues((size_t)c.E * c.in, s + 4));
        B = Buffer(c.dtype, parity::RandomValues((size_t)c.out * c.E, s + 5));
        dy = Buffer(c.dtype, parity::RandomValues((size_t)c.M * c.out, s + 6));
        weight = parity::RandomValues((size_t)c.M * c.k, s + 7);
        h = parity::RandomValues((size_t)c.M * c.k, s + 8);
        // k distinct experts per token among the first E - 1, so the last expert is never picked
        for (int m = 0; m < c.M; ++m)
            for (int t = 0; t < c.k; ++t) expert.push_back((float)((m * 5 + t) % (c.E - 1)));
    }
};

class GatedTopKParity : public ::testing::TestWithParam<TopKCase> {};

TEST_P(GatedTopKParity, ForwardMatchesCpu) {
    const TopKCase c = GetParam();
    TopKInputs in(c);
    auto cpu = [&](const std::vector<float>& x, const std::vector<float>& W0, const std::vector<float>* bias, const std::vector<float>& A,
                   const std::vector<float>& B, const std::vector<float>& weight, std::vector<float>* h_out) {
        std::vector<float> y((size_t)c.M * c.out), h((size_t)c.M * c.k);
        EXPECT_EQ(LK_OK, lk_cpu_gated_topk_forward(c.M, c.in, c.out, c.E, c.k, x.data(), W0.data(), bias ? bias->data() : nullptr,
                                                   A.data(), B.data(), in.expert.data(), weight.data(), in.scale, c.dropout_p, in.seed,
                                                   y.data(), h.data()));
        if (h_out) *h_out = h;
        return y;
    };
    const std::vector<float> bias = in.bias.values(), abs_bias = parity::Abs(bias);
    std::vector<float> want_h, bound_h;
    const std::vector<float> want_y = cpu(in.x.values(), in.W0.values(), &bias, in.A.values(), in.B.values(), in.weight, &want_h);
    const std::vector<float> bound_y = cpu(parity::Abs(in.x.values()), parity::Abs(in.W0.values()), &abs_bias, parity::Abs(in.A.values()),
                                           parity::Abs(in.B.values()), parity::Abs(in.weight), &bound_h);
    const bool bf16 = c.dtype == DType::BF16;

    Buffer expert(DType::F32, in.expert), weight(DType::F32, in.weight);
    Buffer y = Buffer::Poisoned(c.dtype, (size_t)c.M * c.out), h = Buffer::Poisoned(DType::F32, (size_t)c.M * c.k);
    Buffer coefficient = Buffer::Poisoned(DType::F32, (size_t)c.M * c.k);
    const auto decode = parity::DecodeGeometryFor(c.M, c.in, c.out, 0, kEmulatedMultiprocessors, LK_SIMT_MAX_DYNAMIC_SHARED_BYTES);
    if (decode.fits) {
        ASSERT_TRUE(Launch(parity::KernelName("lk_lora_forward_decode", c.dtype).c_str(), {decode.blocks, 1}, parity::kDecodeThreads,
                           decode.shared_bytes, in.x.data(), in.W0.data(), in.bias.data(), (void*)nullptr, (void*)nullptr, y.data(),
                           (float*)nullptr, c.M, c.in, c.out, 0, 0.0f, 0.0f, 0ull));
    } else {
        ASSERT_TRUE(Launch(parity::KernelName("lk_lora_forward_tiled", c.dtype).c_str(), parity::TileGrid(c.M, c.out),
                           parity::kTileThreads, 0, in.x.data(), in.W0.data(), in.bias.data(), (const float*)nullptr, (void*)nullptr,
                           y.data(), c.M, c.in, c.out, 0, 0.0f));
    }
    ASSERT_TRUE(Launch(parity::KernelName("lk_gated_topk_project", c.dtype).c_str(), {Blocks((int64_t)c.M * c.k, kGatedWarps), 1},
                       kGatedThreads, 0, in.x.data(), in.A.data(), (const float*)expert.data(), (const float*)weight.data(),
                       (float*)h.data(), (float*)coefficient.data(), c.M, c.in, c.k, in.scale, c.dropout_p, in.seed));
    ASSERT_TRUE(Launch(parity::KernelName("lk_gated_topk_expand", c.dtype).c_str(),
                       parity::ElementwiseGrid((int64_t)c.M * c.out, kEmulatedMultiprocessors), kGatedThreads, 0, y.data(),
                       (const float*)coefficient.data(), (const float*)expert.data(), in.B.data(), 1, c.E, c.M, c.out, c.k, 0.0f, 0ull));
    EXPECT_TRUE(parity::Near("h", h.values(), want_h, bound_h, c.in, 0.0));
    EXPECT_TRUE(parity::NearWithExtra("y", y.values(), want_y, bound_y, c.in + c.k + 4, bf16 ? parity::kBf16Rounding : 0.0, bound_y,
                          bf16 ? kBf16Extra : 0.0));
}

TEST_P(GatedTopKParity, BackwardMatchesCpu) {
    const TopKCase c = GetParam();
    TopKInputs in(c);
    struct Grads {
        std::vector<float> dx, dA, dB, dw;
    };
    auto cpu = [&](const std::vector<float>& x, const std::vector<float>& W0, const std::vector<float>& A, const std::vector<float>& B,
                   const std::vector<float>& weight, const std::vector<float>& h, const std::vector<float>& dy) {
        Grads g{std::vector<float>((size_t)c.M * c.in), std::vector<float>((size_t)c.E * c.in), std::vector<float>((size_t)c.out * c.E),
                std::vector<float>((size_t)c.M * c.k)};
        EXPECT_EQ(LK_OK, lk_cpu_gated_topk_backward(c.M, c.in, c.out, c.E, c.k, x.data(), W0.data(), A.data(), B.data(), in.expert.data(),
                                                    weight.data(), h.data(), dy.data(), in.scale, c.dropout_p, in.seed, g.dx.data(),
                                                    g.dA.data(), g.dB.data(), g.dw.data()));
        return g;
    };
    const Grads want = cpu(in.x.values(), in.W0.values(), in.A.values(), in.B.values(), in.weight, in.h, in.dy.values());
    const Grads bound = cpu(parity::Abs(in.x.values()), parity::Abs(in.W0.values()), parity::Abs(in.A.values()), parity::Abs(in.B.values()),
                            parity::Abs(in.weight), parity::Abs(in.h), parity::Abs(in.dy.values()));
    const bool bf16 = c.dtype == DType::BF16;
    const double out_rounding = bf16 ? parity::kBf16Rounding : 0.0;

    Buffer expert(DType::F32, in.expert), weight(DType::F32, in.weight), h(DType::F32, in.h);
    Buffer dw = Buffer::Poisoned(DType::F32, (size_t)c.M * c.k), dh = Buffer::Poisoned(DType::F32, (size_t)c.M * c.k);
    Buffer coefficient_b = Buffer::Poisoned(DType::F32, (size_t)c.M * c.k);
    ASSERT_TRUE(Launch(parity::KernelName("lk_gated_topk_grad_h", c.dtype).c_str(), {Blocks((int64_t)c.M * c.k, kGatedWarps), 1},
                       kGatedThreads, 0, in.dy.data(), in.B.data(), (const float*)expert.data(), (const float*)weight.data(),
                       (const float*)h.data(), (float*)dw.data(), (float*)dh.data(), (float*)coefficient_b.data(), c.M, c.out, c.E, c.k,
                       in.scale));
    Buffer dA = Buffer::Poisoned(c.dtype, (size_t)c.E * c.in), dB = Buffer::Poisoned(c.dtype, (size_t)c.out * c.E);
    ASSERT_TRUE(Launch(parity::KernelName("lk_gated_topk_scatter", c.dtype).c_str(), {(uint32_t)c.E, Blocks(c.in, 256)}, kGatedThreads, 0,
                       dA.data(), (const float*)dh.data(), (const float*)expert.data(), in.x.data(), c.in, 1, c.M, c.in, c.k,
                       c.dropout_p, in.seed));
    ASSERT_TRUE(Launch(parity::KernelName("lk_gated_topk_scatter", c.dtype).c_str(), {(uint32_t)c.E, Blocks(c.out, 256)}, kGatedThreads,
                       0, dB.data(), (const float*)coefficient_b.data(), (const float*)expert.data(), in.dy.data(), 1, c.E, c.M, c.out,
                       c.k, 0.0f, 0ull));
    Buffer dx = Buffer::Poisoned(c.dtype, (size_t)c.M * c.in);
    ASSERT_TRUE(Launch(parity::KernelName("lk_lora_grad_x", c.dtype).c_str(), parity::TileGrid(c.M, c.in), parity::kTileThreads, 0,
                       in.dy.data(), in.W0.data(), (const float*)nullptr, (void*)nullptr, dx.data(), c.M, c.in, c.out, 0, 0.0f, 0ull));
    ASSERT_TRUE(Launch(parity::KernelName("lk_gated_topk_expand", c.dtype).c_str(),
                       parity::ElementwiseGrid((int64_t)c.M * c.in, kEmulatedMultiprocessors), kGatedThreads, 0, dx.data(),
                       (const float*)dh.data(), (const float*)expert.data(), in.A.data(), c.in, 1, c.M, c.in, c.k, c.dropout_p, in.seed));

    const int slots = c.M * c.k;
    EXPECT_TRUE(parity::Near("dweight", dw.values(), want.dw, bound.dw, c.out + 2, 0.0));
    EXPECT_TRUE(parity::NearWithExtra("dx", dx.values(), want.dx, bound.dx, c.out + c.out + c.k + 4, out_rounding, bound.dx, bf16 ? kBf16Extra : 0.0));
    EXPECT_TRUE(parity::Near("dA", dA.values(), want.dA, bound.dA, c.out + slots + 2, out_rounding));
    EXPECT_TRUE(parity::Near("dB", dB.values(), want.dB, bound.dB, slots + 4, out_rounding));
    const std::vector<float> dB_values = dB.values();
    for (int n = 0; n < c.out; ++n) ASSERT_EQ(dB_values[(size_t)(n * c.E + c.E - 1)], 0.0f) << "the never-picked expert's column of dB";
}

INSTANTIATE_TEST_SUITE_P(Shapes, GatedTopKParity, ::testing::ValuesIn(TopKCases()),
                         [](const ::testing::TestParamInfo<TopKCase>& info) { return TopKName(info.param); });

// ---- router ---------------------------------------------------------------------------------------

class GatedRouterParity : public ::testing::TestWithParam<std::pair<int, int>> {};

TEST_P(GatedRouterParity, SoftmaxTopKBalanceAndBackwardsMatchCpu) {
    const int M = GetParam().first, E = GetParam().second;
    const int k = std::min(3, E);
    std::vector<float> logits = parity::RandomValues((size_t)M * E, 900u + (uint32_t)E);
    for (float& v : logits) v *= 4.0f;
    const std::vector<float> dprobs_in = parity::RandomValues((size_t)M * E, 901u), dweight_in = parity::RandomValues((size_t)M * k, 902u);
    // The router's values are probabilities: bounded by 1, so Σ|terms| ≤ 1 per output; 8 fp32 ulps.
    const double router_K = 4.0;
    std::vector<float> want_p((size_t)M * E), want_dl((size_t)M * E);
    ASSERT_EQ(LK_OK, lk_cpu_gated_softmax(M, E, logits.data(), want_p.data()));
    ASSERT_EQ(LK_OK, lk_cpu_gated_softmax_backward(M, E, want_p.data(), dprobs_in.data(), want_dl.data()));
    Buffer l(DType::F32, logits), p = Buffer::Poisoned(DType::F32, (size_t)M * E), dp(DType::F32, dprobs_in);
    Buffer dl = Buffer::Poisoned(DType::F32, (size_t)M * E);
    ASSERT_TRUE(Launch("lk_gated_softmax_f32", {Blocks(M, kGatedWarps), 1}, kGatedThreads, 0, (const float*)l.data(), (float*)p.data(), M, E));
    ASSERT_TRUE(Launch("lk_gated_softmax_backward_f32", {Blocks(M, kGatedWarps), 1}, kGatedThreads, 0, (const float*)p.data(),
                       (const float*)dp.data(), (float*)dl.data(), M, E));
    std::vector<float> ones((size_t)M * E, 1.0f), dl_bound((size_t)M * E);
    for (size_t i = 0; i < dl_bound.size(); ++i) dl_bound[i] = 2.0f * (std::fabs(dprobs_in[i]) + 4.0f);
    EXPECT_TRUE(parity::Near("probs", p.values(), want_p, ones, router_K * E, 0.0));
    EXPECT_TRUE(parity::Near("dlogits", dl.values(), want_dl, dl_bound, router_K * E, 0.0));

    // Top-k on the CPU's probabilities (so both pick from the same values), with and without renormalisation.
    Buffer probs(DType::F32, want_p);
    for (int renormalize : {0, 1}) {
        SCOPED_TRACE(renormalize ? "renormalised" : "raw");
        std::vector<float> want_e((size_t)M * k), want_w((size_t)M * k), want_dp((size_t)M * E);
        ASSERT_EQ(LK_OK, lk_cpu_gated_route_topk(M, E, k, want_p.data(), renormalize, want_e.data(), want_w.data()));
        ASSERT_EQ(LK_OK, lk_cpu_gated_route_topk_backward(M, E, k, want_p.data(), want_e.data(), want_w.data(), dweight_in.data(),
                                                          renormalize, want_dp.data()));
        Buffer e = Buffer::Poisoned(DType::F32, (size_t)M * k), w = Buffer::Poisoned(DType::F32, (size_t)M * k);
        ASSERT_TRUE(Launch("lk_gated_route_topk_f32", {Blocks(M, kGatedWarps), 1}, kGatedThreads, 0, (const float*)probs.data(),
                           (float*)e.data(), (float*)w.data(), M, E, k, renormalize));
        EXPECT_EQ(e.values(), want_e) << "the same experts, in the same order";
        EXPECT_TRUE(parity::Near("weight", w.values(), want_w, std::vector<float>((size_t)M * k, 1.0f), router_K * k, 0.0));
        Buffer dw(DType::F32, dweight_in), dprobs = Buffer::Poisoned(DType::F32, (size_t)M * E), ew(DType::F32, want_w);
        ASSERT_TRUE(Launch("lk_gated_route_topk_backward_f32", {Blocks(M, kGatedWarps), 1}, kGatedThreads, 0, (const float*)probs.data(),
                           (const float*)e.data(), (const float*)ew.data(), (const float*)dw.data(), (float*)dprobs.data(), M, E, k,
                           renormalize));
        std::vector<float> dp_bound((size_t)M * E, (float)(4.0 * k));
        EXPECT_TRUE(parity::Near("dprobs", dprobs.values(), want_dp, dp_bound, router_K * k, 0.0));

        std::vector<float> want_stats((size_t)2 * E), want_db((size_t)M * E);
        ASSERT_EQ(LK_OK, lk_cpu_gated_balance(M, E, k, want_p.data(), want_e.data(), want_stats.data()));
        ASSERT_EQ(LK_OK, lk_cpu_gated_balance_backward(M, E, want_stats.data(), 0.01f, want_db.data()));
        Buffer stats = Buffer::Poisoned(DType::F32, (size_t)2 * E), db = Buffer::Poisoned(DType::F32, (size_t)M * E);
        ASSERT_TRUE(Launch("lk_gated_balance_f32", {(uint32_t)E, 1}, kGatedThreads, 0, (const float*)probs.data(), (const float*)e.data(),
                           (float*)stats.data(), M, E, k));
        const float factor = (float)(0.01 * E / ((double)M * M));
        ASSERT_TRUE(Launch("lk_gated_balance_backward_f32", parity::ElementwiseGrid((int64_t)M * E, kEmulatedMultiprocessors),
                           kGatedThreads, 0, (const float*)stats.data(), (float*)db.data(), M, E, factor));
        std::vector<float> stats_bound((size_t)2 * E);
        for (int j = 0; j < E; ++j) {
            stats_bound[(size_t)j] = 0.0f;  // counts are exact
            stats_bound[(size_t)(E + j)] = (float)M;
        }
        const std::vector<float> got_stats = stats.values();
        for (int j = 0; j < E; ++j) EXPECT_EQ(got_stats[(size_t)j], want_stats[(size_t)j]) << "count of expert " << j;
        EXPECT_TRUE(parity::Near("stats", got_stats, want_stats, stats_bound, M, 0.0));
        EXPECT_TRUE(parity::Near("dprobs (balance)", db.values(), want_db, parity::Abs(want_db), 4.0, 0.0));
    }
}

INSTANTIATE_TEST_SUITE_P(Rows, GatedRouterParity, ::testing::Values(std::pair{1, 5}, std::pair{9, 37}, std::pair{33, 64}),
                         [](const ::testing::TestParamInfo<std::pair<int, int>>& info) {
                             return "M" + std::to_string(info.param.first) + "_E" + std::to_string(info.param.second);
                         });

// ---- training steps -------------------------------------------------------------------------------

TEST(GatedTrainingParity, SoftThresholdIsBitExact) {
    std::vector<float> gate = parity::RandomValues(301, 31u);
    for (float& g : gate) g *= 0.3f;
    std::vector<float> want = gate;
    ASSERT_EQ(LK_OK, lk_cpu_gated_soft_threshold((int64_t)want.size(), want.data(), 0.1f));
    Buffer g(DType::F32, gate);
    ASSERT_TRUE(Launch("lk_gated_soft_threshold_f32", parity::ElementwiseGrid((int64_t)gate.size(), kEmulatedMultiprocessors),
                       kGatedThreads, 0, (float*)g.data(), (long long)gate.size(), 0.1f));
    const std::vector<float> got = g.values();
    int zeros = 0;
    for (size_t i = 0; i < got.size(); ++i) {
        ASSERT_EQ(got[i], want[i]) << "gate " << i;
        zeros += got[i] == 0.0f;
    }
    EXPECT_GT(zeros, 0);
    EXPECT_LT(zeros, (int)got.size());
}

TEST(GatedTrainingParity, SensitivityTripletScoreGramAndOrthGradMatchCpu) {
    const int r = 17, in = 70, out = 33;
    for (DType dtype : {DType::F32, DType::BF16}) {
        SCOPED_TRACE(parity::Suffix(dtype));
        Buffer pA(dtype, parity::RandomValues((size_t)r * in, 41u)), pB(dtype, parity::RandomValues((size_t)out * r, 42u));
        const std::vector<float> pE = parity::RandomValues(r, 43u), gA = parity::RandomValues((size_t)r * in, 44u),
                                 gE = parity::RandomValues(r, 45u), gB = parity::RandomValues((size_t)out * r, 46u);
        std::vector<float> iA((size_t)r * in, 0.0f), uA = iA, iE(r, 0.0f), uE = iE, iB((size_t)out * r, 0.0f), uB = iB;
        Buffer diA(DType::F32, iA), duA(DType::F32, uA), diE(DType::F32, iE), duE(DType::F32, uE), diB(DType::F32, iB), duB(DType::F32, uB);
        Buffer dgA(DType::F32, gA), dgE(DType::F32, gE), dgB(DType::F32, gB), dpE(DType::F32, pE);
        const std::vector<float> vA = pA.values(), vB = pB.values();
        for (int step = 0; step < 2; ++step) {
            ASSERT_EQ(LK_OK, lk_cpu_gated_sensitivity((int64_t)r * in, vA.data(), gA.data(), iA.data(), uA.data(), 0.85f, 0.85f));
            ASSERT_EQ(LK_OK, lk_cpu_gated_sensitivity(r, pE.data(), gE.data(), iE.data(), uE.data(), 0.85f, 0.85f));
            ASSERT_EQ(LK_OK, lk_cpu_gated_sensitivity((int64_t)out * r, vB.data(), gB.data(), iB.data(), uB.data(), 0.85f, 0.85f));
            ASSERT_TRUE(Launch(parity::KernelName("lk_gated_sensitivity", dtype).c_str(), parity::ElementwiseGrid((int64_t)r * in, 4),
                               kGatedThreads, 0, pA.data(), (const float*)dgA.data(), (float*)diA.data(), (float*)duA.data(),
                               (long long)r * in, 0.85f, 0.85f));
            ASSERT_TRUE(Launch("lk_gated_sensitivity_f32", parity::ElementwiseGrid(r, 4), kGatedThreads, 0, dpE.data(),
                               (const float*)dgE.data(), (float*)diE.data(), (float*)duE.data(), (long long)r, 0.85f, 0.85f));
            ASSERT_TRUE(Launch(parity::KernelName("lk_gated_sensitivity", dtype).c_str(), parity::ElementwiseGrid((int64_t)out * r, 4),
                               kGatedThreads, 0, pB.data(), (const float*)dgB.data(), (float*)diB.data(), (float*)duB.data(),
                               (long long)out * r, 0.85f, 0.85f));
        }
        // A handful of fp32 operations per element, each on values of its own size.
        EXPECT_TRUE(parity::Near("ipt A", diA.values(), iA, iA, 8, 0.0));
        EXPECT_TRUE(parity::Near("unc B", duB.values(), uB, parity::Abs(uB), 8, 0.0));
        std::vector<float> want_score(r);
        ASSERT_EQ(LK_OK, lk_cpu_gated_triplet_score(r, in, out, iA.data(), uA.data(), iE.data(), uE.data(), iB.data(), uB.data(),
                                                    want_score.data()));
        Buffer score = Buffer::Poisoned(DType::F32, r);
        Buffer ciA(DType::F32, iA), cuA(DType::F32, uA), ciE(DType::F32, iE), cuE(DType::F32, uE), ciB(DType::F32, iB), cuB(DType::F32, uB);
        ASSERT_TRUE(Launch("lk_gated_triplet_score_f32", {(uint32_t)r, 1}, kGatedThreads, 0, (const float*)ciA.data(),
                           (const float*)cuA.data(), (const float*)ciE.data(), (const float*)cuE.data(), (const float*)ciB.data(),
                           (const float*)cuB.data(), (float*)score.data(), r, in, out));
        EXPECT_TRUE(parity::Near("score", score.values(), want_score, want_score, 4, 0.0));

        for (int transpose : {0, 1}) {
            SCOPED_TRACE(transpose ? "B: Bᵀ B" : "A: A Aᵀ");
            Buffer& X = transpose ? pB : pA;
            const int rows = transpose ? out : r, cols = transpose ? r : in, side = transpose ? cols : rows;
            const std::vector<float> xv = X.values(), xa = parity::Abs(xv);
            std::vector<float> want_c((size_t)side * side), bound_c((size_t)side * side);
            ASSERT_EQ(LK_OK, lk_cpu_gated_gram(rows, cols, xv.data(), transpose, want_c.data()));
            ASSERT_EQ(LK_OK, lk_cpu_gated_gram(rows, cols, xa.data(), transpose, bound_c.data()));
            Buffer C = Buffer::Poisoned(DType::F32, (size_t)side * side);
            ASSERT_TRUE(Launch(parity::KernelName("lk_gated_gram", dtype).c_str(), parity::TileGrid(side, side), parity::kTileThreads, 0,
                               X.data(), (float*)C.data(), rows, cols, transpose));
            EXPECT_TRUE(parity::Near("C", C.values(), want_c, bound_c, transpose ? rows : cols, 0.0));
            std::vector<float> want_g((size_t)rows * cols), bound_g((size_t)rows * cols), abs_shift = parity::Abs(want_c);
            for (int i = 0; i < side; ++i) abs_shift[(size_t)(i * side + i)] = std::fabs(want_c[(size_t)(i * side + i)] - 1.0f);
            ASSERT_EQ(LK_OK, lk_cpu_gated_orth_grad(rows, cols, xv.data(), want_c.data(), transpose, 0.375f, want_g.data()));
            Buffer Cw(DType::F32, want_c), G = Buffer::Poisoned(dtype, (size_t)rows * cols);
            // Σ|terms|: |C - I| against |X| (the identity taken out of the absolute values).
            std::vector<float> shifted_abs = abs_shift;
            for (int i = 0; i < side; ++i) shifted_abs[(size_t)(i * side + i)] += 1.0f;  // lk_cpu_gated_orth_grad subtracts I again
            ASSERT_EQ(LK_OK, lk_cpu_gated_orth_grad(rows, cols, xa.data(), shifted_abs.data(), transpose, 0.375f, bound_g.data()));
            ASSERT_TRUE(Launch(parity::KernelName("lk_gated_orth_grad", dtype).c_str(), parity::TileGrid(rows, cols), parity::kTileThreads,
                               0, X.data(), (const float*)Cw.data(), G.data(), rows, cols, transpose, 0.375f));
            EXPECT_TRUE(parity::Near("G", G.values(), want_g, bound_g, side + 2, dtype == DType::BF16 ? parity::kBf16Rounding : 0.0));
        }
    }
}

}  // namespace
