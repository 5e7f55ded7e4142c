// Emulator parity for kernels/cross_entropy.cu: lk_loss_cross_entropy_f32 launched with the C#
// launcher's row grid against lk_cpu_cross_entropy on the same logits and targets. Both evaluate
// the same fp32 exp(x - max) and sum in double, in different orders, so:
//   loss:    |got - want| <= 2·2^-24·|want| + 1e-7          (each side rounds the mean once)
//   dlogits: |got - want| <= 2^-24·|want| + C·2^-52 / count  (the double sums differ by C·2^-53)
// Ignored rows get exact zeros on both. Shapes: one row, rows above the capped grid (the row loop
// wraps), a row longer than a block, a vocabulary-sized row.
#include <cmath>
#include <cstring>

#include "parity.h"

namespace {

using parity::Buffer;
using parity::DType;
using parity::Launch;

constexpr int kMultiprocessors = 4;  // SimtKernelDevice's count
constexpr int kIgnore = -100;

struct Shape {
    int M, C;
    float smoothing;
};

class CrossEntropyParity : public ::testing::TestWithParam<Shape> {};

TEST_P(CrossEntropyParity, LossAndGradientMatchTheCpu) {
    const Shape s = GetParam();
    std::vector<float> logits = parity::RandomValues((size_t)s.M * s.C, 71);
    for (float& v : logits) v *= 6.0f;
    std::vector<int> targets((size_t)s.M);
    for (int i = 0; i < s.M; ++i) targets[(size_t)i] = (i * 7919 + 3) % s.C;
    if (s.M > 3) targets[2] = kIgnore;
    int count = 0;
    for (int t : targets) count += t != kIgnore;

    float want_loss = NAN;
    std::vector<float> want_grad((size_t)s.M * s.C);
    ASSERT_EQ(LK_OK, lk_cpu_cross_entropy(s.M, s.C, logits.data(), targets.data(), kIgnore, s.smoothing, &want_loss,
                                          want_grad.data()));

    const parity::Grid grid = parity::RowGrid(s.M, kMultiprocessors);
    std::vector<double> partials(grid.x, NAN);
    Buffer grad = Buffer::Poisoned(DType::F32, (size_t)s.M * s.C);
    ASSERT_TRUE(Launch("lk_loss_cross_entropy_f32", grid, parity::kElementwiseThreads, 0, (const float*)logits.data(),
                       (const int*)targets.data(), s.M, s.C, kIgnore, s.smoothing, count, partials.data(),
                       (float*)grad.data()));
    double sum = 0.0;
    for (double partial : partials) sum += partial;
    const float loss = (float)(sum / (double)count);
    EXPECT_NEAR(loss, want_loss, 2.0 * parity::kF32Unit * std::fabs(want_loss) + 1e-7);

    const std::vector<float> got = grad.values();
    int failures = 0;
    for (size_t i = 0; i < got.size() && failures < 5; ++i) {
        const double tol = parity::kF32Unit * std::fabs((double)want_grad[i]) + s.C * std::ldexp(1.0, -52) / count;
        if (!(std::fabs((double)got[i] - (double)want_grad[i]) <= tol)) {
            ADD_FAILURE() << "dlogits[" << i << "] got " << got[i] << " want " << want_grad[i] << " tol " << tol;
            ++failures;
        }
    }
    if (s.M > 3) {
        for (int j = 0; j < s.C; ++j) ASSERT_EQ(got[(size_t)(2 * s.C + j)], 0.0f) << "ignored row, column " << j;
    }

    std::vector<double> again(grid.x, NAN);  // no gradient: the same partials, bit for bit
    float* no_grad = nullptr;
    ASSERT_TRUE(Launch("lk_loss_cross_entropy_f32", grid, parity::kElementwiseThreads, 0, (const float*)logits.data(),
                       (const int*)targets.data(), s.M, s.C, kIgnore, s.smoothing, count, again.data(), no_grad));
    EXPECT_EQ(0, std::memcmp(again.data(), partials.data(), grid.x * sizeof(double)));
}

INSTANTIATE_TEST_SUITE_P(Shapes, CrossEntropyParity,
                         ::testing::Values(Shape{1, 2, 0.0f}, Shape{5, 7, 0.1f}, Shape{41, 257, 0.0f},
                                           Shape{3, 50257, 0.2f}));

}  // namespace
