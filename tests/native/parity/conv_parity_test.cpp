// Every lk_conv2d_* entry point of kernels/conv.cu under the SIMT emulator, with the C# launcher's
// geometry (Families/Conv/GpuConvKernels.cs), against lk_cpu_conv2d_forward / _backward_data /
// _backward_weight on the same inputs (fp32).
//
// Shapes: pointwise, 3x3 padded, strided (2, 3), dilated (2, 3), rectangular kernels, one output
// row, a 1x1 image under a padded 3x3 window, C·KH·KW and O·KH·KW past one 16-deep slice and one
// 64 tile, and a batch whose N·HO·WO (5,000) crosses a weight-gradient chunk (4,096 pixels); alpha
// and beta both exercised (beta 0 poisons the output, so reading it fails).
// Tolerance: parity::Near, K = the reduction length (C·KH·KW, O·KH·KW, N·HO·WO plus the chunk sum).
#include <tuple>

#include "parity.h"

namespace {

using parity::Buffer;
using parity::DType;
using parity::Launch;

constexpr int kEmulatedMultiprocessors = 4;
constexpr int kConvPixelsPerChunk = 4096;  // kernels/conv.cu, GpuConvKernels.PixelsPerChunk

struct ConvCase {
    lk_conv2d_shape s;
    float alpha, beta;
    int HO() const { return (int)((s.H + 2 * s.pad_h - s.dilation_h * (s.KH - 1) - 1) / s.stride_h + 1); }
    int WO() const { return (int)((s.W + 2 * s.pad_w - s.dilation_w * (s.KW - 1) - 1) / s.stride_w + 1); }
};

std::string CaseName(const ConvCase& c) {
    const lk_conv2d_shape& s = c.s;
    std::ostringstream o;
    o << "N" << s.N << "_C" << s.C << "_" << s.H << "x" << s.W << "_O" << s.O << "_k" << s.KH << "x" << s.KW << "_s"
      << s.stride_h << s.stride_w << "_p" << s.pad_h << s.pad_w << "_d" << s.dilation_h << s.dilation_w
      << (c.beta != 0.0f ? "_beta" : "");
    return o.str();
}

const ConvCase kCases[] = {
    {{1, 3, 5, 7, 4, 1, 1, 1, 1, 0, 0, 1, 1}, 1.0f, 0.0f},    {{3, 70, 6, 5, 66, 1, 1, 1, 1, 0, 0, 1, 1}, 0.5f, 1.0f},
    {{3, 3, 7, 5, 5, 3, 3, 1, 1, 1, 1, 1, 1}, 1.0f, 0.0f},    {{2, 2, 9, 8, 3, 3, 2, 2, 3, 1, 0, 1, 1}, -0.75f, 0.5f},
    {{2, 3, 11, 10, 2, 3, 3, 1, 2, 2, 1, 2, 3}, 1.0f, 0.0f},  {{1, 1, 3, 13, 1, 3, 3, 1, 1, 0, 0, 1, 1}, 1.0f, 0.5f},
    {{2, 7, 1, 1, 5, 3, 3, 1, 1, 1, 1, 1, 1}, 1.0f, 0.0f},    {{2, 9, 8, 8, 70, 3, 3, 1, 1, 1, 1, 1, 1}, 1.0f, 0.0f},
    {{2, 2, 50, 50, 3, 3, 3, 1, 1, 1, 1, 1, 1}, 1.0f, 0.0f},
};

struct Inputs {
    ConvCase c;
    int HO, WO;
    Buffer x, w, bias, dy;
    explicit Inputs(const ConvCase& cc) : c(cc), HO(cc.HO()), WO(cc.WO()) {
        const lk_conv2d_shape& s = c.s;
        const uint32_t seed = (uint32_t)(s.N * 7919 + s.C * 104729 + s.H * 131 + s.O * 17 + s.KH);
        x = Buffer(DType::F32, parity::RandomValues((size_t)(s.N * s.C * s.H * s.W), seed + 1));
        w = Buffer(DType::F32, parity::RandomValues((size_t)(s.O * s.C * s.KH * s.KW), seed + 2));
        bias = Buffer(DType::F32, parity::RandomValues((size_t)s.O, seed + 3));
        dy = Buffer(DType::F32, parity::RandomValues((size_t)(s.N * s.O * HO * WO), seed + 4));
    }
    // Launches `kernel` with the given leading pointers, then the 15 shape ints, then the trailing arguments.
    template <class... Leading, class... Trailing>
    ::testing::AssertionResult Run(const char* kernel, parity::Grid grid, uint32_t threads, std::tuple<Leading...> leading,
                                   Trailing... trailing) {
        const lk_conv2d_shape& s = c.s;
        return std::apply(
            [&](auto... pointers) {
                return Launch(kernel, grid, threads, 0, pointers..., (int)s.N, (int)s.C, (int)s.H, (int)s.W, (int)s.O,
                              (int)s.KH, (int)s.KW, (int)s.stride_h, (int)s.stride_w, (int)s.pad_h, (int)s.pad_w,
                              (int)s.dilation_h, (int)s.dilation_w, HO, WO, trailing...);
            },
            leading);
    }
};

// A buffer holding `initial` where beta reads it, else poison.
Buffer Output(float beta, size_t n, uint32_t seed) {
    return beta == 0.0f ? Buffer::Poisoned(DType::F32, n) : Buffer(DType::F32, parity::RandomValues(n, seed));
}

class ConvParity : public ::testing::TestWithParam<ConvCase> {};

TEST_P(ConvParity, ForwardMatchesCpu) {
    Inputs in(GetParam());
    const ConvCase& c = in.c;
    const lk_conv2d_shape& s = c.s;
    const size_t count = (size_t)(s.N * s.O * in.HO * in.WO);
    Buffer y = Output(c.beta, count, 7);
    std::vector<float> want = y.values(), bound = parity::Abs(y.values());
    ASSERT_EQ(LK_OK, lk_cpu_conv2d_forward(&s, in.x.values().data(), in.w.values().data(), in.bias.values().data(), c.alpha,
                                           c.beta, want.data()));
    ASSERT_EQ(LK_OK, lk_cpu_conv2d_forward(&s, parity::Abs(in.x.values()).data(), parity::Abs(in.w.values()).data(),
                                           parity::Abs(in.bias.values()).data(), std::fabs(c.alpha), std::fabs(c.beta),
                                           bound.data()));
    const parity::Grid grid{(uint32_t)parity::CeilDiv(s.N * in.HO * in.WO, parity::kTile),
                            (uint32_t)parity::CeilDiv(s.O, parity::kTile)};
    ASSERT_TRUE(in.Run("lk_conv2d_forward_f32", grid, parity::kTileThreads,
                       std::make_tuple((const float*)in.x.data(), (const float*)in.w.data(), (const float*)in.bias.data(),
                                       (float*)y.data()),
                       c.alpha, c.beta));
    EXPECT_TRUE(parity::Near("y", y.values(), want, bound, (double)(s.C * s.KH * s.KW) + 3, 0.0));
}

TEST_P(ConvParity, GradXMatchesCpu) {
    Inputs in(GetParam());
    const ConvCase& c = in.c;
    const lk_conv2d_shape& s = c.s;
    const size_t count = (size_t)(s.N * s.C * s.H * s.W);
    Buffer dx = Output(c.beta, count, 8);
    std::vector<float> want = dx.values(), bound = parity::Abs(dx.values());
    ASSERT_EQ(LK_OK, lk_cpu_conv2d_backward_data(&s, in.dy.values().data(), in.w.values().data(), c.alpha, c.beta, want.data()));
    ASSERT_EQ(LK_OK, lk_cpu_conv2d_backward_data(&s, parity::Abs(in.dy.values()).data(), parity::Abs(in.w.values()).data(),
                                                 std::fabs(c.alpha), std::fabs(c.beta), bound.data()));
    const parity::Grid grid{(uint32_t)parity::CeilDiv(s.N * s.H * s.W, parity::kTile),
                            (uint32_t)parity::CeilDiv(s.C, parity::kTile)};
    ASSERT_TRUE(in.Run("lk_conv2d_grad_x_f32", grid, parity::kTileThreads,
                       std::make_tuple((const float*)in.dy.data(), (const float*)in.w.data(), (float*)dx.data()), c.alpha,
                       c.beta));
    EXPECT_TRUE(parity::Near("dx", dx.values(), want, bound, (double)(s.O * s.KH * s.KW) + 3, 0.0));
}

TEST_P(ConvParity, GradWMatchesCpu) {
    Inputs in(GetParam());
    const ConvCase& c = in.c;
    const lk_conv2d_shape& s = c.s;
    const int taps = (int)(s.C * s.KH * s.KW), pixels = (int)(s.N * in.HO * in.WO);
    const size_t count = (size_t)(s.O * taps);
    Buffer dw = Output(c.beta, count, 9);
    std::vector<float> want = dw.values(), bound = parity::Abs(dw.values());
    ASSERT_EQ(LK_OK, lk_cpu_conv2d_backward_weight(&s, in.x.values().data(), in.dy.values().data(), c.alpha, c.beta,
                                                   want.data()));
    ASSERT_EQ(LK_OK, lk_cpu_conv2d_backward_weight(&s, parity::Abs(in.x.values()).data(), parity::Abs(in.dy.values()).data(),
                                                   std::fabs(c.alpha), std::fabs(c.beta), bound.data()));
    const int chunks = (int)parity::CeilDiv(pixels, kConvPixelsPerChunk);
    Buffer partial = Buffer::Poisoned(DType::F32, (size_t)chunks * count);
    const parity::Grid grid{(uint32_t)parity::CeilDiv(taps, parity::kTile), (uint32_t)parity::CeilDiv(s.O, parity::kTile),
                            (uint32_t)chunks};
    ASSERT_TRUE(in.Run("lk_conv2d_grad_w_f32", grid, parity::kTileThreads,
                       std::make_tuple((const float*)in.x.data(), (const float*)in.dy.data(), (float*)partial.data())));
    ASSERT_TRUE(Launch("lk_conv2d_sum_chunks_f32", parity::ElementwiseGrid((int64_t)count, kEmulatedMultiprocessors),
                       parity::kElementwiseThreads, 0, (const float*)partial.data(), (float*)dw.data(), chunks,
                       (long long)count, c.alpha, c.beta));
    EXPECT_TRUE(parity::Near("dw", dw.values(), want, bound, (double)pixels + chunks + 3, 0.0));
}

INSTANTIATE_TEST_SUITE_P(Shapes, ConvParity, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<ConvCase>& info) { return CaseName(info.param); });

}  // namespace
