// Every lk_lora_* entry point of kernels/lora.cu (fp32 and bf16) under the SIMT emulator, launched
// with the C# launcher's geometry, against lk_cpu_lora_forward / _backward / _merge on the same
// inputs. bf16 cases round the inputs to bf16 first and give the CPU the rounded values as fp32;
// tolerances are parity::Near's formula with K = the longest chain of fp32 sums behind an output.
#include "parity.h"

namespace {

using parity::Buffer;
using parity::DType;
using parity::Launch;
using parity::Near;

struct LoraCase {
    int M, in, out, r;
    bool bias;
    float dropout_p;
    DType dtype;
};

std::string CaseName(const LoraCase& c) {
    std::ostringstream s;
    s << "M" << c.M << "_in" << c.in << "_out" << c.out << "_r" << c.r << (c.bias ? "_bias" : "_nobias") << "_p"
      << (int)std::lround(c.dropout_p * 100) << "_" << parity::Suffix(c.dtype);
    return s.str();
}

// Shapes: M over 1, 7, 16 (decode), 17, 33, 130, 200 (tiled); in/out over 1, 33, 97, 257 (none a
// multiple of a tile, a warp or a vector) plus decode's chunking (in > 2048, a partial last
// chunk) and its 16-byte vector path (in a multiple of 8); r over 1, 8, 16, 24, 64. The bf16
// tensor-core kernels take cp.async on multiples of 8 (64, 136, 256, 264, 2056) and element-wise
// staging elsewhere; 130 and 200 rows, 257 and 264 columns span several 128-wide tiles.
struct Shape {
    int M, in, out, r;
};
const Shape kShapes[] = {
    {1, 1, 1, 1},      {1, 257, 97, 8},   {7, 33, 257, 16},   {16, 97, 33, 64}, {16, 257, 257, 1},
    {17, 33, 97, 8},   {33, 257, 1, 16},  {130, 97, 257, 64}, {130, 1, 33, 1},  {7, 1, 97, 64},
    {5, 2056, 40, 16}, {16, 4100, 19, 8}, {2, 64, 300, 4}, {130, 256, 264, 24}, {200, 136, 72, 16},
};

std::vector<LoraCase> AllCases() {
    std::vector<LoraCase> cases;
    int index = 0;
    for (const Shape& s : kShapes) {
        for (DType dtype : {DType::F32, DType::BF16})
            for (float p : {0.0f, 0.25f}) cases.push_back({s.M, s.in, s.out, s.r, index % 2 == 0, p, dtype});
        ++index;
    }
    return cases;
}

// The inputs of one case, stored in the case's dtype (u and dy's consumers: u is always fp32).
struct Inputs {
    Buffer x, W0, bias, A, B, dy;
    float scale = 0.75f;
    unsigned long long seed;

    explicit Inputs(const LoraCase& c) : seed(0x5eed0000ull + (unsigned long long)c.M * 131 + c.in) {
        uint32_t s = (uint32_t)(c.M * 1000003 + c.in * 1009 + c.out * 17 + c.r);
        x = Buffer(c.dtype, parity::RandomValues((size_t)c.M * c.in, s + 1));
        W0 = Buffer(c.dtype, parity::RandomValues((size_t)c.out * c.in, s + 2));
        bias = Buffer(c.dtype, parity::RandomValues((size_t)c.out, s + 3));
        A = Buffer(c.dtype, parity::RandomValues((size_t)c.r * c.in, s + 4));
        B = Buffer(c.dtype, parity::RandomValues((size_t)c.out * c.r, s + 5));
        dy = Buffer(c.dtype, parity::RandomValues((size_t)c.M * c.out, s + 6));
    }
};

struct ForwardResult {
    std::vector<float> y, u;
};

// lk_cpu_lora_forward on fp32 values (absolute values give the tolerance bound).
ForwardResult CpuForward(const LoraCase& c, const std::vector<float>& x, const std::vector<float>& W0,
                         const std::vector<float>* bias, const std::vector<float>& A, const std::vector<float>& B,
                         float scale, unsigned long long seed) {
    ForwardResult r{std::vector<float>((size_t)c.M * c.out), std::vector<float>((size_t)c.M * c.r)};
    EXPECT_EQ(LK_OK, lk_cpu_lora_forward(c.M, c.in, c.out, c.r, x.data(), W0.data(), bias ? bias->data() : nullptr,
                                         A.data(), B.data(), scale, c.dropout_p, seed, r.y.data(), r.u.data()));
    return r;
}

class LoraParity : public ::testing::TestWithParam<LoraCase> {};

TEST_P(LoraParity, ForwardDecodeAndTiledMatchCpu) {
    const LoraCase c = GetParam();
    Inputs in(c);
    const std::vector<float> bias_values = in.bias.values();
    const ForwardResult want = CpuForward(c, in.x.values(), in.W0.values(), c.bias ? &bias_values : nullptr,
                                          in.A.values(), in.B.values(), in.scale, in.seed);
    const std::vector<float> abs_bias = parity::Abs(bias_values);
    const ForwardResult bound =
        CpuForward(c, parity::Abs(in.x.values()), parity::Abs(in.W0.values()), c.bias ? &abs_bias : nullptr,
                   parity::Abs(in.A.values()), parity::Abs(in.B.values()), in.scale, in.seed);
    const double out_rounding = c.dtype == DType::BF16 ? parity::kBf16Rounding : 0.0;
    const double y_chain = c.in + c.r + 2;  // x·W0ᵀ, then u's in-long sum times B over r, plus bias
    void* bias_ptr = c.bias ? in.bias.data() : nullptr;

    // Decode, as the C# launcher picks it for M <= 16, with several multiprocessor counts so that
    // blocks own 1, several and all W0 rows (4 is what SimtKernelDevice reports).
    if (c.M <= parity::kDecodeMaxTokens) {
        for (int multiprocessors : {1, 4, 132}) {
            const auto g =
                parity::DecodeGeometryFor(c.M, c.in, c.out, c.r, multiprocessors, LK_SIMT_MAX_DYNAMIC_SHARED_BYTES);
            ASSERT_TRUE(g.fits) << "decode should fit the emulator's shared memory";
            Buffer y = Buffer::Poisoned(c.dtype, (size_t)c.M * c.out);
            Buffer u = Buffer::Poisoned(DType::F32, (size_t)c.M * c.r);
            ASSERT_TRUE(Launch(parity::KernelName("lk_lora_forward_decode", c.dtype).c_str(), {g.blocks, 1},
                               parity::kDecodeThreads, g.shared_bytes, in.x.data(), in.W0.data(), bias_ptr, in.A.data(),
                               in.B.data(), y.data(), (float*)u.data(), c.M, c.in, c.out, c.r, in.scale, c.dropout_p,
                               in.seed));
            const std::string where = "decode with " + std::to_string(g.blocks) + " blocks: ";
            EXPECT_TRUE(Near(where + "u", u.values(), want.u, bound.u, c.in, 0.0));
            EXPECT_TRUE(Near(where + "y", y.values(), want.y, bound.y, y_chain, out_rounding));
        }
    }

    // Project + tiled, the path for M > 16 (and for small M when decode's x does not fit).
    Buffer u = Buffer::Poisoned(DType::F32, (size_t)c.M * c.r);
    ASSERT_TRUE(Launch(parity::KernelName("lk_lora_project", c.dtype).c_str(), parity::TileGrid(c.M, c.r),
                       parity::kTileThreads, 0, in.x.data(), in.A.data(), (float*)u.data(), c.M, c.in, c.r, c.dropout_p,
                       in.seed));
    EXPECT_TRUE(Near("project: u", u.values(), want.u, bound.u, c.in, 0.0));
    Buffer y = Buffer::Poisoned(c.dtype, (size_t)c.M * c.out);
    ASSERT_TRUE(Launch(parity::KernelName("lk_lora_forward_tiled", c.dtype).c_str(), parity::TileGrid(c.M, c.out),
                       parity::kTileThreads, 0, in.x.data(), in.W0.data(), bias_ptr, (const float*)u.data(),
                       in.B.data(), y.data(), c.M, c.in, c.out, c.r, in.scale));
    EXPECT_TRUE(Near("tiled: y", y.values(), want.y, bound.y, y_chain, out_rounding));

    // The tensor-core forward (bf16 on sm_80+, the C# launcher's choice there), with the same u.
    if (c.dtype == DType::BF16) {
        Buffer y_mma = Buffer::Poisoned(c.dtype, (size_t)c.M * c.out);
        ASSERT_TRUE(Launch("lk_lora_forward_mma_bf16", parity::MmaTileGrid(c.M, c.out), parity::kMmaThreads,
                           parity::kMmaSharedBytes, in.x.data(), in.W0.data(), bias_ptr, (const float*)u.data(),
                           in.B.data(), y_mma.data(), c.M, c.in, c.out, c.r, in.scale));
        EXPECT_TRUE(Near("tensor cores: y", y_mma.values(), want.y, bound.y, y_chain, out_rounding));
    }
}

TEST_P(LoraParity, BackwardMatchesCpu) {
    const LoraCase c = GetParam();
    Inputs in(c);
    const std::vector<float> x = in.x.values(), W0 = in.W0.values(), A = in.A.values(), B = in.B.values();
    const std::vector<float> dy = in.dy.values();
    // u as the forward left it (fp32 in every dtype).
    std::vector<float> u = CpuForward(c, x, W0, nullptr, A, B, in.scale, in.seed).u;

    struct Grads {
        std::vector<float> dx, dA, dB;
    };
    auto cpu_backward = [&](const std::vector<float>& x_, const std::vector<float>& W0_, const std::vector<float>& A_,
                            const std::vector<float>& B_, const std::vector<float>& u_, const std::vector<float>& dy_) {
        Grads g{std::vector<float>((size_t)c.M * c.in), std::vector<float>((size_t)c.r * c.in),
                std::vector<float>((size_t)c.out * c.r)};
        EXPECT_EQ(LK_OK, lk_cpu_lora_backward(c.M, c.in, c.out, c.r, x_.data(), W0_.data(), A_.data(), B_.data(),
                                              u_.data(), dy_.data(), in.scale, c.dropout_p, in.seed, g.dx.data(),
                                              g.dA.data(), g.dB.data()));
        return g;
    };
    const Grads want = cpu_backward(x, W0, A, B, u, dy);
    const Grads bound =
        cpu_backward(parity::Abs(x), parity::Abs(W0), parity::Abs(A), parity::Abs(B), parity::Abs(u), parity::Abs(dy));
    const double out_rounding = c.dtype == DType::BF16 ? parity::kBf16Rounding : 0.0;

    // The C# launcher's sequence: du into an fp32 temporary, then dB, dA, dx.
    Buffer u_buffer(DType::F32, u);
    Buffer du = Buffer::Poisoned(DType::F32, (size_t)c.M * c.r);
    ASSERT_TRUE(Launch(parity::KernelName("lk_lora_grad_u", c.dtype).c_str(), parity::TileGrid(c.M, c.r),
                       parity::kTileThreads, 0, in.dy.data(), in.B.data(), (float*)du.data(), c.M, c.out, c.r,
                       in.scale));
    Buffer dB = Buffer::Poisoned(c.dtype, (size_t)c.out * c.r);
    ASSERT_TRUE(Launch(parity::KernelName("lk_lora_grad_b", c.dtype).c_str(), parity::TileGrid(c.out, c.r),
                       parity::kTileThreads, 0, in.dy.data(), (const float*)u_buffer.data(), dB.data(), c.M, c.out, c.r,
                       in.scale));
    Buffer dA = Buffer::Poisoned(c.dtype, (size_t)c.r * c.in);
    ASSERT_TRUE(Launch(parity::KernelName("lk_lora_grad_a", c.dtype).c_str(), parity::TileGrid(c.r, c.in),
                       parity::kTileThreads, 0, (const float*)du.data(), in.x.data(), dA.data(), c.M, c.in, c.r,
                       c.dropout_p, in.seed));
    Buffer dx = Buffer::Poisoned(c.dtype, (size_t)c.M * c.in);
    ASSERT_TRUE(Launch(parity::KernelName("lk_lora_grad_x", c.dtype).c_str(), parity::TileGrid(c.M, c.in),
                       parity::kTileThreads, 0, in.dy.data(), in.W0.data(), (const float*)du.data(), in.A.data(),
                       dx.data(), c.M, c.in, c.out, c.r, c.dropout_p, in.seed));

    EXPECT_TRUE(Near("dB", dB.values(), want.dB, bound.dB, c.M, out_rounding));
    EXPECT_TRUE(Near("dA", dA.values(), want.dA, bound.dA, c.M + c.out, out_rounding));  // du's out-long sums, then M
    EXPECT_TRUE(Near("dx", dx.values(), want.dx, bound.dx, c.out + c.r, out_rounding));  // dy·W0 and du·A

    if (c.dtype == DType::BF16) {
        Buffer dx_mma = Buffer::Poisoned(c.dtype, (size_t)c.M * c.in);
        ASSERT_TRUE(Launch("lk_lora_grad_x_mma_bf16", parity::MmaTileGrid(c.M, c.in), parity::kMmaThreads,
                           parity::kMmaSharedBytes, in.dy.data(), in.W0.data(), (const float*)du.data(), in.A.data(),
                           dx_mma.data(), c.M, c.in, c.out, c.r, c.dropout_p, in.seed));
        EXPECT_TRUE(Near("tensor cores: dx", dx_mma.values(), want.dx, bound.dx, c.out + c.r, out_rounding));
    }
}

INSTANTIATE_TEST_SUITE_P(Shapes, LoraParity, ::testing::ValuesIn(AllCases()),
                         [](const ::testing::TestParamInfo<LoraCase>& info) { return CaseName(info.param); });

// Merge has no bias or dropout, so it runs once per shape and dtype.
struct MergeCase {
    Shape shape;
    DType dtype;
};

class LoraMergeParity : public ::testing::TestWithParam<MergeCase> {};

TEST_P(LoraMergeParity, MergeAndUnmergeMatchCpu) {
    const MergeCase mc = GetParam();
    const LoraCase c{mc.shape.M, mc.shape.in, mc.shape.out, mc.shape.r, false, 0.0f, mc.dtype};
    Inputs in(c);
    for (float scale : {in.scale, -in.scale}) {  // merge, and unmerge's negative scale
        std::vector<float> want = in.W0.values(), bound = parity::Abs(in.W0.values());
        ASSERT_EQ(LK_OK,
                  lk_cpu_lora_merge(c.out, c.in, c.r, want.data(), in.A.values().data(), in.B.values().data(), scale));
        ASSERT_EQ(LK_OK, lk_cpu_lora_merge(c.out, c.in, c.r, bound.data(), parity::Abs(in.A.values()).data(),
                                           parity::Abs(in.B.values()).data(), std::fabs(scale)));
        Buffer W = in.W0;
        ASSERT_TRUE(Launch(parity::KernelName("lk_lora_merge", c.dtype).c_str(), parity::TileGrid(c.out, c.in),
                           parity::kTileThreads, 0, W.data(), in.A.data(), in.B.data(), c.out, c.in, c.r, scale));
        EXPECT_TRUE(Near("W", W.values(), want, bound, c.r + 1, c.dtype == DType::BF16 ? parity::kBf16Rounding : 0.0));
    }
}

std::vector<MergeCase> MergeCases() {
    std::vector<MergeCase> cases;
    for (const Shape& s : kShapes)
        for (DType dtype : {DType::F32, DType::BF16}) cases.push_back({s, dtype});
    return cases;
}

INSTANTIATE_TEST_SUITE_P(Shapes, LoraMergeParity, ::testing::ValuesIn(MergeCases()),
                         [](const ::testing::TestParamInfo<MergeCase>& info) {
                             const Shape& s = info.param.shape;
                             return "out" + std::to_string(s.out) + "_in" + std::to_string(s.in) + "_r" +
                                    std::to_string(s.r) + "_" + parity::Suffix(info.param.dtype);
                         });

// The decode kernel stops with a fault instead of computing garbage when handed M > 16.
TEST(LoraParityMisuse, DecodeRejectsMoreThanSixteenTokens) {
    const int M = 17, in = 8, out = 4, r = 2;
    std::vector<float> x(M * in, 1.0f), W0(out * in, 1.0f), A(r * in, 1.0f), B(out * r, 1.0f), y(M * out), u(M * r);
    const float* no_bias = nullptr;
    const float scale = 1.0f, p = 0.0f;
    const unsigned long long seed = 1;
    const auto launched =
        Launch("lk_lora_forward_decode_f32", {1, 1}, parity::kDecodeThreads, 1 << 16, x.data(), W0.data(), no_bias,
               A.data(), B.data(), y.data(), u.data(), M, in, out, r, scale, p, seed);
    EXPECT_FALSE(launched);
}

}  // namespace
