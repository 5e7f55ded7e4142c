// Every export rejects each bad argument with LK_ERR_INVALID_ARGUMENT and a last-error message
// naming the function, the argument and its value; the library-wide queries behave as documented.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "reference.h"

namespace cpu_test {
namespace {

// Expects `status` to be LK_ERR_INVALID_ARGUMENT with a message containing every fragment.
void expect_invalid(lk_status status, std::initializer_list<const char*> fragments) {
    EXPECT_EQ(status, LK_ERR_INVALID_ARGUMENT) << lk_status_name(status);
    const std::string message = last_error();
    for (const char* fragment : fragments)
        EXPECT_NE(message.find(fragment), std::string::npos)
            << "message \"" << message << "\" does not mention \"" << fragment << "\"";
}

const float kNaN = std::numeric_limits<float>::quiet_NaN();

// Valid buffers large enough for every call below.
struct Buffers {
    std::vector<float> a = std::vector<float>(64, 1.0f), b = std::vector<float>(64, 1.0f),
                       c = std::vector<float>(64, 1.0f), d = std::vector<float>(64, 1.0f),
                       e = std::vector<float>(64, 1.0f), f = std::vector<float>(64, 1.0f),
                       g = std::vector<float>(64, 1.0f), h = std::vector<float>(64, 1.0f);
    std::vector<uint16_t> half = std::vector<uint16_t>(64, 0);
};

TEST(InvalidArguments, Sgemm) {
    Buffers m;
    const float *A = m.a.data(), *B = m.b.data();
    float* C = m.c.data();
    // A valid call (M=N=K=2, dense) for reference.
    ASSERT_EQ(lk_cpu_sgemm(0, 0, 2, 2, 2, 1.0f, A, 2, B, 2, 0.0f, C, 2), LK_OK);
    expect_invalid(lk_cpu_sgemm(2, 0, 2, 2, 2, 1.0f, A, 2, B, 2, 0.0f, C, 2),
                   {"lk_cpu_sgemm", "trans_a", "2"});
    expect_invalid(lk_cpu_sgemm(0, -1, 2, 2, 2, 1.0f, A, 2, B, 2, 0.0f, C, 2),
                   {"lk_cpu_sgemm", "trans_b", "-1"});
    expect_invalid(lk_cpu_sgemm(0, 0, -1, 2, 2, 1.0f, A, 2, B, 2, 0.0f, C, 2),
                   {"lk_cpu_sgemm", "M", "-1"});
    expect_invalid(lk_cpu_sgemm(0, 0, 2, -3, 2, 1.0f, A, 2, B, 2, 0.0f, C, 2),
                   {"lk_cpu_sgemm", "N", "-3"});
    expect_invalid(lk_cpu_sgemm(0, 0, 2, 2, -5, 1.0f, A, 2, B, 2, 0.0f, C, 2),
                   {"lk_cpu_sgemm", "K", "-5"});
    expect_invalid(lk_cpu_sgemm(0, 0, 2, 3, 4, 1.0f, A, 3, B, 3, 0.0f, C, 3),
                   {"lk_cpu_sgemm", "lda", "3", "4"});
    expect_invalid(lk_cpu_sgemm(1, 0, 5, 2, 2, 1.0f, A, 4, B, 2, 0.0f, C, 2),
                   {"lk_cpu_sgemm", "lda", "4", "5"});
    expect_invalid(lk_cpu_sgemm(0, 0, 2, 3, 2, 1.0f, A, 2, B, 2, 0.0f, C, 3),
                   {"lk_cpu_sgemm", "ldb", "2", "3"});
    expect_invalid(lk_cpu_sgemm(0, 1, 2, 3, 4, 1.0f, A, 4, B, 3, 0.0f, C, 3),
                   {"lk_cpu_sgemm", "ldb", "3", "4"});
    expect_invalid(lk_cpu_sgemm(0, 0, 2, 3, 2, 1.0f, A, 2, B, 3, 0.0f, C, 2),
                   {"lk_cpu_sgemm", "ldc", "2", "3"});
    expect_invalid(lk_cpu_sgemm(0, 0, 2, 2, 2, 1.0f, nullptr, 2, B, 2, 0.0f, C, 2),
                   {"lk_cpu_sgemm", "A", "NULL"});
    expect_invalid(lk_cpu_sgemm(0, 0, 2, 2, 2, 1.0f, A, 2, nullptr, 2, 0.0f, C, 2),
                   {"lk_cpu_sgemm", "B", "NULL"});
    expect_invalid(lk_cpu_sgemm(0, 0, 2, 2, 2, 1.0f, A, 2, B, 2, 0.0f, nullptr, 2),
                   {"lk_cpu_sgemm", "C", "NULL"});
}

TEST(InvalidArguments, LoraForward) {
    Buffers m;
    const float *x = m.a.data(), *W0 = m.b.data(), *A = m.c.data(), *B = m.d.data();
    float *y = m.e.data(), *u = m.f.data();
    auto call = [&](int64_t M, int64_t in, int64_t out, int64_t r, const float* xp, const float* Wp,
                    const float* Ap, const float* Bp, float p, float* yp, float* up) {
        return lk_cpu_lora_forward(M, in, out, r, xp, Wp, nullptr, Ap, Bp, 1.0f, p, 0, yp, up);
    };
    ASSERT_EQ(call(2, 3, 4, 2, x, W0, A, B, 0.0f, y, u), LK_OK) << last_error();
    const char* fn = "lk_cpu_lora_forward";
    expect_invalid(call(-1, 3, 4, 2, x, W0, A, B, 0.0f, y, u), {fn, "M", "-1"});
    expect_invalid(call(2, -3, 4, 2, x, W0, A, B, 0.0f, y, u), {fn, "in", "-3"});
    expect_invalid(call(2, 3, -4, 2, x, W0, A, B, 0.0f, y, u), {fn, "out", "-4"});
    expect_invalid(call(2, 3, 4, -2, x, W0, A, B, 0.0f, y, u), {fn, "r", "-2"});
    expect_invalid(call(2, 3, 4, 2, nullptr, W0, A, B, 0.0f, y, u), {fn, "x", "NULL"});
    expect_invalid(call(2, 3, 4, 2, x, nullptr, A, B, 0.0f, y, u), {fn, "W0", "NULL"});
    expect_invalid(call(2, 3, 4, 2, x, W0, nullptr, B, 0.0f, y, u), {fn, "A", "NULL"});
    expect_invalid(call(2, 3, 4, 2, x, W0, A, nullptr, 0.0f, y, u), {fn, "B", "NULL"});
    expect_invalid(call(2, 3, 4, 2, x, W0, A, B, 0.0f, nullptr, u), {fn, "y", "NULL"});
    expect_invalid(call(2, 3, 4, 2, x, W0, A, B, 0.0f, y, nullptr), {fn, "u", "NULL"});
    expect_invalid(call(2, 3, 4, 2, x, W0, A, B, 1.0f, y, u), {fn, "dropout_p", "1"});
    expect_invalid(call(2, 3, 4, 2, x, W0, A, B, -0.25f, y, u), {fn, "dropout_p", "-0.25"});
    expect_invalid(call(2, 3, 4, 2, x, W0, A, B, kNaN, y, u), {fn, "dropout_p", "nan"});
    // r == 0: A, B and u may be NULL.
    EXPECT_EQ(call(2, 3, 4, 0, x, W0, nullptr, nullptr, 0.0f, y, nullptr), LK_OK) << last_error();
}

TEST(InvalidArguments, LoraBackward) {
    Buffers m;
    const float *x = m.a.data(), *W0 = m.b.data(), *A = m.c.data(), *B = m.d.data(),
                *u = m.e.data(), *dy = m.f.data();
    float *dx = m.g.data(), *dA = m.h.data(), *dB = m.c.data() + 32;
    const char* fn = "lk_cpu_lora_backward";
    auto call = [&](int64_t M, int64_t in, int64_t out, int64_t r, const float* xp, const float* Wp,
                    const float* Ap, const float* Bp, const float* up, const float* dyp, float p) {
        return lk_cpu_lora_backward(M, in, out, r, xp, Wp, Ap, Bp, up, dyp, 1.0f, p, 0, dx, dA, dB);
    };
    ASSERT_EQ(call(2, 3, 4, 2, x, W0, A, B, u, dy, 0.0f), LK_OK) << last_error();
    expect_invalid(call(-2, 3, 4, 2, x, W0, A, B, u, dy, 0.0f), {fn, "M", "-2"});
    expect_invalid(call(2, -1, 4, 2, x, W0, A, B, u, dy, 0.0f), {fn, "in", "-1"});
    expect_invalid(call(2, 3, -7, 2, x, W0, A, B, u, dy, 0.0f), {fn, "out", "-7"});
    expect_invalid(call(2, 3, 4, -9, x, W0, A, B, u, dy, 0.0f), {fn, "r", "-9"});
    expect_invalid(call(2, 3, 4, 2, nullptr, W0, A, B, u, dy, 0.0f), {fn, "x", "NULL"});
    expect_invalid(call(2, 3, 4, 2, x, nullptr, A, B, u, dy, 0.0f), {fn, "W0", "NULL"});
    expect_invalid(call(2, 3, 4, 2, x, W0, nullptr, B, u, dy, 0.0f), {fn, "A", "NULL"});
    expect_invalid(call(2, 3, 4, 2, x, W0, A, nullptr, u, dy, 0.0f), {fn, "B", "NULL"});
    expect_invalid(call(2, 3, 4, 2, x, W0, A, B, nullptr, dy, 0.0f), {fn, "u", "NULL"});
    expect_invalid(call(2, 3, 4, 2, x, W0, A, B, u, nullptr, 0.0f), {fn, "dy", "NULL"});
    expect_invalid(call(2, 3, 4, 2, x, W0, A, B, u, dy, 1.5f), {fn, "dropout_p", "1.5"});
    // Only what the requested outputs need is required: dB alone needs dy and u.
    EXPECT_EQ(lk_cpu_lora_backward(2, 3, 4, 2, nullptr, nullptr, nullptr, nullptr, u, dy, 1.0f,
                                   0.0f, 0, nullptr, nullptr, dB),
              LK_OK)
        << last_error();
}

TEST(InvalidArguments, LoraMerge) {
    Buffers m;
    float* W = m.a.data();
    const float *A = m.b.data(), *B = m.c.data();
    const char* fn = "lk_cpu_lora_merge";
    ASSERT_EQ(lk_cpu_lora_merge(4, 3, 2, W, A, B, 1.0f), LK_OK);
    expect_invalid(lk_cpu_lora_merge(-4, 3, 2, W, A, B, 1.0f), {fn, "out", "-4"});
    expect_invalid(lk_cpu_lora_merge(4, -3, 2, W, A, B, 1.0f), {fn, "in", "-3"});
    expect_invalid(lk_cpu_lora_merge(4, 3, -2, W, A, B, 1.0f), {fn, "r", "-2"});
    expect_invalid(lk_cpu_lora_merge(4, 3, 2, nullptr, A, B, 1.0f), {fn, "W", "NULL"});
    expect_invalid(lk_cpu_lora_merge(4, 3, 2, W, nullptr, B, 1.0f), {fn, "A", "NULL"});
    expect_invalid(lk_cpu_lora_merge(4, 3, 2, W, A, nullptr, 1.0f), {fn, "B", "NULL"});
}

TEST(InvalidArguments, ElementWise) {
    Buffers m;
    const float *x = m.a.data(), *dy = m.b.data();
    float *y = m.c.data(), loss = 0.0f;
    expect_invalid(lk_cpu_relu_forward(-1, x, y), {"lk_cpu_relu_forward", "n", "-1"});
    expect_invalid(lk_cpu_relu_forward(4, nullptr, y), {"lk_cpu_relu_forward", "x", "NULL"});
    expect_invalid(lk_cpu_relu_forward(4, x, nullptr), {"lk_cpu_relu_forward", "y", "NULL"});
    expect_invalid(lk_cpu_relu_backward(-8, x, dy, y), {"lk_cpu_relu_backward", "n", "-8"});
    expect_invalid(lk_cpu_relu_backward(4, nullptr, dy, y), {"lk_cpu_relu_backward", "x", "NULL"});
    expect_invalid(lk_cpu_relu_backward(4, x, nullptr, y), {"lk_cpu_relu_backward", "dy", "NULL"});
    expect_invalid(lk_cpu_relu_backward(4, x, dy, nullptr), {"lk_cpu_relu_backward", "dx", "NULL"});
    expect_invalid(lk_cpu_axpy(-2, 1.0f, x, y), {"lk_cpu_axpy", "n", "-2"});
    expect_invalid(lk_cpu_axpy(4, 1.0f, nullptr, y), {"lk_cpu_axpy", "x", "NULL"});
    expect_invalid(lk_cpu_axpy(4, 1.0f, x, nullptr), {"lk_cpu_axpy", "y", "NULL"});
    expect_invalid(lk_cpu_mse_loss(-3, x, dy, &loss, y), {"lk_cpu_mse_loss", "n", "-3"});
    expect_invalid(lk_cpu_mse_loss(4, nullptr, dy, &loss, y), {"lk_cpu_mse_loss", "pred", "NULL"});
    expect_invalid(lk_cpu_mse_loss(4, x, nullptr, &loss, y), {"lk_cpu_mse_loss", "target", "NULL"});
    expect_invalid(lk_cpu_mse_loss(4, x, dy, nullptr, y), {"lk_cpu_mse_loss", "loss", "NULL"});
    expect_invalid(lk_cpu_bf16_to_f32(-1, m.half.data(), y), {"lk_cpu_bf16_to_f32", "n", "-1"});
    expect_invalid(lk_cpu_bf16_to_f32(4, nullptr, y), {"lk_cpu_bf16_to_f32", "src", "NULL"});
    expect_invalid(lk_cpu_bf16_to_f32(4, m.half.data(), nullptr),
                   {"lk_cpu_bf16_to_f32", "dst", "NULL"});
    expect_invalid(lk_cpu_f32_to_bf16(-1, x, m.half.data()), {"lk_cpu_f32_to_bf16", "n", "-1"});
    expect_invalid(lk_cpu_f32_to_bf16(4, nullptr, m.half.data()),
                   {"lk_cpu_f32_to_bf16", "src", "NULL"});
    expect_invalid(lk_cpu_f32_to_bf16(4, x, nullptr), {"lk_cpu_f32_to_bf16", "dst", "NULL"});
}

// ---- library-wide behaviour --------------------------------------------------------------------

TEST(Library, StatusNames) {
    EXPECT_STREQ(lk_status_name(LK_OK), "LK_OK");
    EXPECT_STREQ(lk_status_name(LK_ERR_INVALID_ARGUMENT), "LK_ERR_INVALID_ARGUMENT");
    EXPECT_STREQ(lk_status_name(LK_ERR_OUT_OF_MEMORY), "LK_ERR_OUT_OF_MEMORY");
    EXPECT_STREQ(lk_status_name(12345), "LK_ERR_UNKNOWN");
}

TEST(Library, LastErrorIsTruncatedToTheBufferAndReportsItsFullLength) {
    expect_invalid(lk_cpu_axpy(-2, 1.0f, nullptr, nullptr), {"lk_cpu_axpy"});
    const int64_t full = lk_cpu_last_error(nullptr, 0);
    char small[8];
    std::memset(small, 'x', sizeof small);
    EXPECT_EQ(lk_cpu_last_error(small, sizeof small), full);
    EXPECT_GT(full, (int64_t)sizeof small);
    EXPECT_EQ(std::strlen(small), sizeof small - 1);
    EXPECT_EQ(std::string(small), last_error().substr(0, sizeof small - 1));
}

// The ISA reported is the widest the CPU supports, lowered by LORAKERNELS_CPU_ISA (which CTest
// sets to run this suite once per kernel flavour).
TEST(Library, IsaMatchesTheCpuAndTheOverride) {
    __builtin_cpu_init();
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    const bool avx512 = avx2 && __builtin_cpu_supports("avx512f");
    int32_t expected = avx512 ? 2 : avx2 ? 1 : 0;
    if (const char* requested = std::getenv("LORAKERNELS_CPU_ISA")) {
        if (std::strcmp(requested, "avx2") == 0 && expected > 1) expected = 1;
        if (std::strcmp(requested, "portable") == 0) expected = 0;
    }
    EXPECT_EQ(lk_cpu_isa(), expected);
}

TEST(Library, ThreadCountCanBeSetAndRestored) {
    const int32_t initial = lk_cpu_get_num_threads();
    EXPECT_GE(initial, 1);
    EXPECT_EQ(lk_cpu_set_num_threads(3), LK_OK);
    EXPECT_EQ(lk_cpu_get_num_threads(), 3);
    EXPECT_EQ(lk_cpu_set_num_threads(-1), LK_OK);
    EXPECT_EQ(lk_cpu_get_num_threads(), initial);
    EXPECT_EQ(lk_cpu_set_num_threads(LK_CPU_MAX_THREADS + 1), LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("at most 1024"), std::string::npos) << last_error();
    EXPECT_EQ(lk_cpu_get_num_threads(), initial);
}

// An allocation that cannot succeed becomes LK_ERR_OUT_OF_MEMORY, not an exception: the
// backward pass keeps du [M, r] in a temporary, and M * r = 2^60 floats exceeds any address
// space (in = out = 0, so no user buffer has an element).
TEST(Library, ImpossibleAllocationReturnsOutOfMemory) {
#if defined(__SANITIZE_ADDRESS__)
    GTEST_SKIP()
        << "AddressSanitizer aborts on an impossible allocation instead of throwing bad_alloc";
#endif
    float dx_placeholder = 0.0f;
    const lk_status status = lk_cpu_lora_backward(int64_t{1} << 40, 0, 0, int64_t{1} << 20, nullptr,
                                                  nullptr, nullptr, nullptr, nullptr, nullptr, 1.0f,
                                                  0.0f, 0, &dx_placeholder, nullptr, nullptr);
    EXPECT_EQ(status, LK_ERR_OUT_OF_MEMORY) << lk_status_name(status);
    EXPECT_NE(last_error().find("lk_cpu_lora_backward"), std::string::npos) << last_error();
}

}  // namespace
}  // namespace cpu_test
