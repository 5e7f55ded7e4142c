// kernels/elementwise.cu under the SIMT emulator, launched with the C# launcher's geometry,
// against the CPU kernels on the same inputs. Sizes: 1, a prime below a
// block, a prime above it, and a prime large enough that the capped grid's stride loop runs
// several times. Element-wise ops that do the same fp32 operations as the CPU must match bit
// for bit; the MSE sum has its tolerance written beside it.
#include "parity.h"

namespace {

using parity::Buffer;
using parity::DType;
using parity::Launch;

// SimtKernelDevice reports 4 multiprocessors, so the grid is capped at 32 blocks.
constexpr int kMultiprocessors = 4;

class ElementwiseParity : public ::testing::TestWithParam<long long> {};

::testing::AssertionResult BitEqual(const char* what, const std::vector<float>& got, const std::vector<float>& want) {
    if (got.size() != want.size()) return ::testing::AssertionFailure() << what << ": sizes differ";
    for (size_t i = 0; i < got.size(); ++i)
        if (std::memcmp(&got[i], &want[i], sizeof(float)) != 0)
            return ::testing::AssertionFailure() << what << "[" << i << "]: got " << got[i] << ", want " << want[i];
    return ::testing::AssertionSuccess();
}

TEST_P(ElementwiseParity, ReluForwardAndBackward) {
    const long long n = GetParam();
    std::vector<float> x = parity::RandomValues((size_t)n, 11), dy = parity::RandomValues((size_t)n, 12);
    x[0] = std::fabs(x[0]);  // at least one positive element, whatever n
    if (n > 2) x[2] = NAN;   // NaN propagates through relu and blocks the gradient, as on the CPU
    std::vector<float> want_y(n), want_dx(n);
    ASSERT_EQ(LK_OK, lk_cpu_relu_forward(n, x.data(), want_y.data()));
    ASSERT_EQ(LK_OK, lk_cpu_relu_backward(n, x.data(), dy.data(), want_dx.data()));
    Buffer y = Buffer::Poisoned(DType::F32, (size_t)n), dx = Buffer::Poisoned(DType::F32, (size_t)n);
    const auto grid = parity::ElementwiseGrid(n, kMultiprocessors);
    ASSERT_TRUE(Launch("lk_ew_relu_forward_f32", grid, parity::kElementwiseThreads, 0, (const float*)x.data(),
                       (float*)y.data(), n));
    ASSERT_TRUE(Launch("lk_ew_relu_backward_f32", grid, parity::kElementwiseThreads, 0, (const float*)x.data(),
                       (const float*)dy.data(), (float*)dx.data(), n));
    EXPECT_TRUE(BitEqual("relu y", y.values(), want_y));
    EXPECT_TRUE(BitEqual("relu dx", dx.values(), want_dx));
    EXPECT_GT(std::count_if(want_y.begin(), want_y.end(), [](float v) { return v > 0.0f; }), 0);
}

TEST_P(ElementwiseParity, Axpy) {
    const long long n = GetParam();
    const std::vector<float> x = parity::RandomValues((size_t)n, 21), y0 = parity::RandomValues((size_t)n, 22);
    const float alpha = -0.375f;
    std::vector<float> want = y0;
    ASSERT_EQ(LK_OK, lk_cpu_axpy(n, alpha, x.data(), want.data()));
    std::vector<float> y = y0;
    ASSERT_TRUE(Launch("lk_ew_axpy_f32", parity::ElementwiseGrid(n, kMultiprocessors), parity::kElementwiseThreads, 0,
                       alpha, (const float*)x.data(), y.data(), n));
    EXPECT_TRUE(BitEqual("axpy y", y, want));
}

TEST_P(ElementwiseParity, MseLoss) {
    const long long n = GetParam();
    const std::vector<float> pred = parity::RandomValues((size_t)n, 31), target = parity::RandomValues((size_t)n, 32);
    float want_loss = 0.0f;
    std::vector<float> want_dpred(n);
    ASSERT_EQ(LK_OK, lk_cpu_mse_loss(n, pred.data(), target.data(), &want_loss, want_dpred.data()));
    // The launcher's sequence: one double partial per block, added on the host in block order.
    const auto grid = parity::ElementwiseGrid(n, kMultiprocessors);
    const unsigned blocks = grid.x;
    std::vector<double> partials(blocks, NAN);
    Buffer dpred = Buffer::Poisoned(DType::F32, (size_t)n);
    ASSERT_TRUE(Launch("lk_ew_mse_loss_f32", grid, parity::kElementwiseThreads, 0, pred.data(), target.data(),
                       partials.data(), (float*)dpred.data(), n));
    double sum = 0.0;
    for (double partial : partials) sum += partial;
    // Both sum d² in double (in different orders) and round the mean once: at most a few 2^-24 of the loss.
    const double loss = (double)(float)(sum / (double)n);
    EXPECT_NEAR(loss, want_loss, parity::kF32Unit * 2.0 * want_loss);
    EXPECT_GT(want_loss, 0.1f);
    EXPECT_TRUE(BitEqual("mse dpred", dpred.values(), want_dpred));  // both compute 2·d/n in double, round once

    // dpred may be null: the loss alone, the same partials bit for bit (a fixed order, no atomics).
    std::vector<double> again(blocks, NAN);
    float* no_dpred = nullptr;
    ASSERT_TRUE(Launch("lk_ew_mse_loss_f32", grid, parity::kElementwiseThreads, 0, pred.data(), target.data(),
                       again.data(), no_dpred, n));
    EXPECT_EQ(0, std::memcmp(again.data(), partials.data(), blocks * sizeof(double)));
}

// The first NaN/±Inf index: per-block minima whose minimum is the CPU's answer, in f32 and bf16.
TEST_P(ElementwiseParity, FirstNonFinite) {
    const long long n = GetParam();
    std::vector<float> x = parity::RandomValues((size_t)n, 61);
    const auto grid = parity::ElementwiseGrid(n, kMultiprocessors);
    auto device_first = [&](const std::vector<float>& values, bool bf16) {
        std::vector<long long> block_first(grid.x, -7);
        Buffer stored(bf16 ? DType::BF16 : DType::F32, values);
        const bool launched = bf16 ? Launch("lk_ew_first_nonfinite_bf16", grid, parity::kElementwiseThreads, 0,
                                            (const uint16_t*)stored.data(), n, block_first.data())
                                   : Launch("lk_ew_first_nonfinite_f32", grid, parity::kElementwiseThreads, 0,
                                            (const float*)stored.data(), n, block_first.data());
        EXPECT_TRUE(launched);
        long long first = n;
        for (long long b : block_first) first = std::min(first, b);
        return first < n ? first : -1LL;
    };
    for (long long at : {-1LL, 0LL, n / 2, n - 1}) {
        for (float bad : {NAN, INFINITY, -INFINITY}) {
            std::vector<float> y = x;
            if (at >= 0) y[(size_t)at] = bad;
            if (at >= 0 && at + 3 < n) y[(size_t)(at + 3)] = NAN;  // a later one must not win
            int64_t want = 0;
            ASSERT_EQ(LK_OK, lk_cpu_first_nonfinite(n, y.data(), &want));
            EXPECT_EQ(want, at);
            EXPECT_EQ(device_first(y, false), want) << "f32, bad " << bad << " at " << at;
            EXPECT_EQ(device_first(y, true), want) << "bf16, bad " << bad << " at " << at;
            if (at < 0) break;
        }
    }
}

TEST_P(ElementwiseParity, CastsRoundLikeTheCpu) {
    const long long n = GetParam();
    std::vector<float> src = parity::RandomValues((size_t)n, 41);
    for (long long i = 0; i < n; ++i) src[i] *= 1.0f + 1e-3f * (float)(i % 97);  // bits below bf16's precision
    std::vector<uint16_t> want_bf16(n), got_bf16(n, 0xffffu);
    ASSERT_EQ(LK_OK, lk_cpu_f32_to_bf16(n, src.data(), want_bf16.data()));
    const auto grid = parity::ElementwiseGrid(n, kMultiprocessors);
    ASSERT_TRUE(Launch("lk_ew_cast_f32_to_bf16", grid, parity::kElementwiseThreads, 0, (const float*)src.data(),
                       got_bf16.data(), n));
    EXPECT_EQ(got_bf16, want_bf16);
    std::vector<float> want_f32(n);
    ASSERT_EQ(LK_OK, lk_cpu_bf16_to_f32(n, want_bf16.data(), want_f32.data()));
    Buffer back = Buffer::Poisoned(DType::F32, (size_t)n);
    ASSERT_TRUE(Launch("lk_ew_cast_bf16_to_f32", grid, parity::kElementwiseThreads, 0, (const uint16_t*)got_bf16.data(),
                       (float*)back.data(), n));
    EXPECT_TRUE(BitEqual("bf16 -> f32", back.values(), want_f32));
}

TEST_P(ElementwiseParity, FillsEveryElement) {
    const long long n = GetParam();
    const float value = 1.2345678f;
    const auto grid = parity::ElementwiseGrid(n, kMultiprocessors);
    Buffer f32 = Buffer::Poisoned(DType::F32, (size_t)n);
    ASSERT_TRUE(Launch("lk_ew_fill_f32", grid, parity::kElementwiseThreads, 0, (float*)f32.data(), value, n));
    EXPECT_TRUE(BitEqual("fill f32", f32.values(), std::vector<float>((size_t)n, value)));
    Buffer bf16 = Buffer::Poisoned(DType::BF16, (size_t)n);
    ASSERT_TRUE(Launch("lk_ew_fill_bf16", grid, parity::kElementwiseThreads, 0, (uint16_t*)bf16.data(), value, n));
    const float rounded = Buffer(DType::BF16, {value}).values()[0];
    EXPECT_NE(rounded, value);  // the fill really rounds
    EXPECT_TRUE(BitEqual("fill bf16", bf16.values(), std::vector<float>((size_t)n, rounded)));
}

INSTANTIATE_TEST_SUITE_P(Sizes, ElementwiseParity, ::testing::Values(1LL, 251LL, 257LL, 100003LL),
                         [](const ::testing::TestParamInfo<long long>& info) {
                             return "n" + std::to_string(info.param);
                         });

}  // namespace
