// Every lk_kron_* entry point of kernels/kron.cu under the SIMT emulator, run in the C# launcher's
// sequence (Families/Kron/GpuKronKernels.cs: the base product by kernels/lora.cu's kernels with
// r = 0, then the Kronecker term added in place; the factor gradients as token-chunk partials summed
// by lk_kron_sum_chunks), against lk_cpu_kron_forward / _backward / _merge on the same inputs.
//
// Shapes: tokens 1, 7 (decode base), 17 and 33 (tiled base; 33 = five gradient chunks of 8, the
// last one short); factors square, prime, with a 1 (kron with a scalar), w1 larger than w2, and
// factors past one 64 tile and one 64-row chunk of the chain's middle product (70, 65).
// Tolerances: parity::Near's formula (K = the longest fp32 chain behind an output: the base sum,
// then the two sums of the chain) with bound = the CPU kernel on absolute values. With bf16 storage
// y and dx are rounded twice: the base is stored as bf16 before the adapter term is added, an error
// of up to 2⁻⁸·|base| ≤ 2⁻⁸·bound that cancellation can leave beside a small result, so NearRoundedTwice
// adds 2⁻⁸·bound on top of the final rounding.
#include "parity.h"

namespace {

using parity::Buffer;
using parity::DType;
using parity::Launch;

constexpr int kEmulatedMultiprocessors = 4;  // what SimtKernelDevice reports
constexpr int kKronTokensPerChunk = 8;       // GpuKronKernels.TokensPerChunk
constexpr int kMaxGridZ = 65535;

struct KronCase {
    int M, out_l, out_k, in_m, in_n;
    DType dtype;
    int in() const { return in_m * in_n; }
    int out() const { return out_l * out_k; }
};

std::string CaseName(const KronCase& c) {
    std::ostringstream s;
    s << "M" << c.M << "_w1_" << c.out_l << "x" << c.in_m << "_w2_" << c.out_k << "x" << c.in_n << "_"
      << parity::Suffix(c.dtype);
    return s.str();
}

std::vector<KronCase> AllCases() {
    const int factors[][4] = {{4, 4, 4, 4}, {3, 5, 7, 11}, {1, 13, 5, 1}, {11, 2, 6, 3}, {70, 3, 2, 65}, {2, 66, 65, 3}};
    std::vector<KronCase> cases;
    for (int M : {1, 7, 17, 33})
        for (const auto& f : factors)
            for (DType dtype : {DType::F32, DType::BF16}) cases.push_back({M, f[0], f[1], f[2], f[3], dtype});
    return cases;
}

struct Inputs {
    Buffer x, W0, bias, w1, w2, dy;
    explicit Inputs(const KronCase& c) {
        const uint32_t s = (uint32_t)(c.M * 1000003 + c.out_l * 1009 + c.out_k * 101 + c.in_m * 17 + c.in_n);
        x = Buffer(c.dtype, parity::RandomValues((size_t)c.M * c.in(), s + 1));
        W0 = Buffer(c.dtype, parity::RandomValues((size_t)c.out() * c.in(), s + 2));
        bias = Buffer(c.dtype, parity::RandomValues((size_t)c.out(), s + 3));
        w1 = Buffer(c.dtype, parity::RandomValues((size_t)c.out_l * c.in_m, s + 4));
        w2 = Buffer(c.dtype, parity::RandomValues((size_t)c.out_k * c.in_n, s + 5));
        dy = Buffer(c.dtype, parity::RandomValues((size_t)c.M * c.out(), s + 6));
    }
};

// parity::Near plus 2⁻⁸·bound[i] (the base's own bf16 rounding) when `bf16`.
::testing::AssertionResult NearRoundedTwice(const std::string& what, const std::vector<float>& got,
                                            const std::vector<float>& want, const std::vector<float>& bound, double K,
                                            bool bf16) {
    if (!bf16) return parity::Near(what, got, want, bound, K, 0.0);
    std::vector<float> widened = bound;  // Near's accumulation term is 2·K·2⁻²⁴·bound
    for (float& b : widened) b += (float)(parity::kBf16Rounding * b / (2.0 * K * parity::kF32Unit));
    return parity::Near(what, got, want, widened, K, parity::kBf16Rounding);
}

int TokensPerChunk(int M) { return std::max<int>(kKronTokensPerChunk, (int)parity::CeilDiv(M, kMaxGridZ)); }

class KronParity : public ::testing::TestWithParam<KronCase> {};

TEST_P(KronParity, ForwardMatchesCpu) {
    const KronCase c = GetParam();
    Inputs in(c);
    const float scale = 0.625f;
    auto cpu = [&](const std::vector<float>& x, const std::vector<float>& W0, const std::vector<float>& bias,
                   const std::vector<float>& w1, const std::vector<float>& w2) {
        std::vector<float> y((size_t)c.M * c.out()), workspace((size_t)c.M * c.in_m * c.out_k);
        EXPECT_EQ(LK_OK, lk_cpu_kron_forward(c.M, c.out_l, c.out_k, c.in_m, c.in_n, x.data(), W0.data(), bias.data(),
                                             w1.data(), w2.data(), scale, workspace.data(), y.data()));
        return y;
    };
    const std::vector<float> want = cpu(in.x.values(), in.W0.values(), in.bias.values(), in.w1.values(), in.w2.values());
    const std::vector<float> bound = cpu(parity::Abs(in.x.values()), parity::Abs(in.W0.values()),
                                         parity::Abs(in.bias.values()), parity::Abs(in.w1.values()),
                                         parity::Abs(in.w2.values()));

    // The base: decode when it fits (M <= 16), else the tiled forward, both with r = 0.
    Buffer y = Buffer::Poisoned(c.dtype, (size_t)c.M * c.out());
    const auto decode = parity::DecodeGeometryFor(c.M, c.in(), c.out(), 0, kEmulatedMultiprocessors,
                                                  LK_SIMT_MAX_DYNAMIC_SHARED_BYTES);
    if (decode.fits)
        ASSERT_TRUE(Launch(parity::KernelName("lk_lora_forward_decode", c.dtype).c_str(), {decode.blocks, 1},
                           parity::kDecodeThreads, decode.shared_bytes, in.x.data(), in.W0.data(), in.bias.data(),
                           (const void*)nullptr, (const void*)nullptr, y.data(), (float*)nullptr, c.M, c.in(), c.out(),
                           0, 0.0f, 0.0f, 0ull));
    else
        ASSERT_TRUE(Launch(parity::KernelName("lk_lora_forward_tiled", c.dtype).c_str(), parity::TileGrid(c.M, c.out()),
                           parity::kTileThreads, 0, in.x.data(), in.W0.data(), in.bias.data(), (const float*)nullptr,
                           (const void*)nullptr, y.data(), c.M, c.in(), c.out(), 0, 0.0f));
    const parity::Grid grid{(uint32_t)(c.M * parity::CeilDiv(c.out_k, parity::kTile)),
                            (uint32_t)parity::CeilDiv(c.out_l, parity::kTile)};
    ASSERT_TRUE(Launch(parity::KernelName("lk_kron_forward", c.dtype).c_str(), grid, parity::kTileThreads, 0,
                       in.x.data(), in.w1.data(), in.w2.data(), y.data(), c.out_l, c.out_k, c.in_m, c.in_n, scale));
    const bool bf16 = c.dtype == DType::BF16;
    EXPECT_TRUE(NearRoundedTwice("y", y.values(), want, bound, c.in() + c.in_m + c.in_n + 2, bf16));
}

TEST_P(KronParity, BackwardMatchesCpu) {
    const KronCase c = GetParam();
    Inputs in(c);
    const float scale = -0.75f;
    struct Grads {
        std::vector<float> dx, dw1, dw2;
    };
    auto cpu = [&](const std::vector<float>& x, const std::vector<float>& W0, const std::vector<float>& w1,
                   const std::vector<float>& w2, const std::vector<float>& dy, float s) {
        Grads g{std::vector<float>((size_t)c.M * c.in()), std::vector<float>((size_t)c.out_l * c.in_m),
                std::vector<float>((size_t)c.out_k * c.in_n)};
        std::vector<float> workspace((size_t)c.M * c.in_m * c.out_k);
        EXPECT_EQ(LK_OK, lk_cpu_kron_backward(c.M, c.out_l, c.out_k, c.in_m, c.in_n, x.data(), W0.data(), w1.data(),
                                              w2.data(), dy.data(), s, workspace.data(), g.dx.data(), g.dw1.data(),
                                              g.dw2.data()));
        return g;
    };
    const Grads want = cpu(in.x.values(), in.W0.values(), in.w1.values(), in.w2.values(), in.dy.values(), scale);
    const Grads bound = cpu(parity::Abs(in.x.values()), parity::Abs(in.W0.values()), parity::Abs(in.w1.values()),
                            parity::Abs(in.w2.values()), parity::Abs(in.dy.values()), std::fabs(scale));

    // dx: the base dy·W0 (grad_x with r = 0), then the Kronecker term added in place.
    Buffer dx = Buffer::Poisoned(c.dtype, (size_t)c.M * c.in());
    ASSERT_TRUE(Launch(parity::KernelName("lk_lora_grad_x", c.dtype).c_str(), parity::TileGrid(c.M, c.in()),
                       parity::kTileThreads, 0, in.dy.data(), in.W0.data(), (const float*)nullptr, (const void*)nullptr,
                       dx.data(), c.M, c.in(), c.out(), 0, 0.0f, 0ull));
    const parity::Grid grid_x{(uint32_t)(c.M * parity::CeilDiv(c.in_n, parity::kTile)),
                              (uint32_t)parity::CeilDiv(c.in_m, parity::kTile)};
    ASSERT_TRUE(Launch(parity::KernelName("lk_kron_grad_x", c.dtype).c_str(), grid_x, parity::kTileThreads, 0,
                       in.dy.data(), in.w1.data(), in.w2.data(), dx.data(), c.out_l, c.out_k, c.in_m, c.in_n, scale));

    // The factor gradients: chunk partials, then the ordered sum times scale.
    const int per_chunk = TokensPerChunk(c.M), chunks = (int)parity::CeilDiv(c.M, per_chunk);
    auto factor_gradient = [&](const char* kernel, Buffer& factor, int rows, int columns, parity::Grid grid) {
        Buffer partial = Buffer::Poisoned(DType::F32, (size_t)chunks * rows * columns);
        Buffer dw = Buffer::Poisoned(c.dtype, (size_t)rows * columns);
        grid.z = (uint32_t)chunks;
        EXPECT_TRUE(Launch(parity::KernelName(kernel, c.dtype).c_str(), grid, parity::kTileThreads, 0, in.x.data(),
                           in.dy.data(), factor.data(), (float*)partial.data(), c.M, c.out_l,
                           c.out_k, c.in_m, c.in_n, per_chunk));
        const long long n = (long long)rows * columns;
        EXPECT_TRUE(Launch(parity::KernelName("lk_kron_sum_chunks", c.dtype).c_str(),
                           parity::ElementwiseGrid(n, kEmulatedMultiprocessors), parity::kElementwiseThreads, 0,
                           (const float*)partial.data(), dw.data(), chunks, n, scale));
        return dw.values();
    };
    const std::vector<float> dw1 = factor_gradient(
        "lk_kron_grad_w1", in.w2, c.out_l, c.in_m,
        {(uint32_t)parity::CeilDiv(c.in_m, parity::kTile), (uint32_t)parity::CeilDiv(c.out_l, parity::kTile)});
    const std::vector<float> dw2 = factor_gradient(
        "lk_kron_grad_w2", in.w1, c.out_k, c.in_n,
        {(uint32_t)parity::CeilDiv(c.out_k, parity::kTile), (uint32_t)parity::CeilDiv(c.in_n, parity::kTile)});

    const bool bf16 = c.dtype == DType::BF16;
    const double rounding = bf16 ? parity::kBf16Rounding : 0.0;
    EXPECT_TRUE(NearRoundedTwice("dx", dx.values(), want.dx, bound.dx, c.out() + c.out_l + c.out_k + 2, bf16));
    EXPECT_TRUE(parity::Near("dw1", dw1, want.dw1, bound.dw1, (double)c.M * c.out_k + c.in_n + 2, rounding));
    EXPECT_TRUE(parity::Near("dw2", dw2, want.dw2, bound.dw2, (double)c.M * c.in_m + c.out_l + 2, rounding));
}

INSTANTIATE_TEST_SUITE_P(Shapes, KronParity, ::testing::ValuesIn(AllCases()),
                         [](const ::testing::TestParamInfo<KronCase>& info) { return CaseName(info.param); });

// Merge of a linear weight (spatial 1) and of a convolution weight [out, in, 2, 3] (spatial 6).
class KronMergeParity : public ::testing::TestWithParam<DType> {};

TEST_P(KronMergeParity, MergeMatchesCpuForLinearAndConvolutionWeights) {
    const DType dtype = GetParam();
    const int out_l = 3, out_k = 5, in_m = 7, in_n = 2;
    for (int spatial : {1, 6}) {
        const size_t count = (size_t)out_l * out_k * in_m * in_n * spatial;
        Buffer W(dtype, parity::RandomValues(count, 41 + spatial)), w1(dtype, parity::RandomValues((size_t)out_l * in_m, 42)),
            w2(dtype, parity::RandomValues((size_t)out_k * in_n * spatial, 43));
        const float scale = 1.25f;
        std::vector<float> want = W.values(), bound = parity::Abs(W.values());
        ASSERT_EQ(LK_OK, lk_cpu_kron_merge(out_l, out_k, in_m, in_n, spatial, want.data(), w1.values().data(),
                                           w2.values().data(), scale));
        ASSERT_EQ(LK_OK, lk_cpu_kron_merge(out_l, out_k, in_m, in_n, spatial, bound.data(), parity::Abs(w1.values()).data(),
                                           parity::Abs(w2.values()).data(), scale));
        ASSERT_TRUE(Launch(parity::KernelName("lk_kron_merge", dtype).c_str(),
                           parity::ElementwiseGrid((int64_t)count, kEmulatedMultiprocessors), parity::kElementwiseThreads,
                           0, W.data(), w1.data(), w2.data(), out_l, out_k, in_m, in_n, spatial, scale));
        EXPECT_TRUE(parity::Near("W, spatial " + std::to_string(spatial), W.values(), want, bound, 3,
                                 dtype == DType::BF16 ? parity::kBf16Rounding : 0.0));
    }
}

INSTANTIATE_TEST_SUITE_P(DTypes, KronMergeParity, ::testing::Values(DType::F32, DType::BF16),
                         [](const ::testing::TestParamInfo<DType>& info) { return std::string(parity::Suffix(info.param)); });

}  // namespace
