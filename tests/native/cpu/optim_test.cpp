// The optimizers' CPU kernels (lk_cpu_adamw, lk_cpu_adamw8bit, lk_cpu_grad_sumsq) against double
// references written here, and the properties the paged optimizers rely on: a parameter cut into
// several segments (at block boundaries for 8-bit) and any thread count give the same bits as one
// segment, and released pages of a shared file mapping keep their data (lk_cpu_pages_*). The exact 8-bit reference (bitsandbytes' blockwise algorithm with its own code tables)
// is the C# test AdamW8bitTests; here the 8-bit kernel is checked for invariances and bounds.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

#include "reference.h"

namespace {

using cpu_test::all_near;
using cpu_test::kUnitRoundoff;
using cpu_test::last_error;
using cpu_test::Rng;

constexpr float kLr = 1e-2f, kBeta1 = 0.9f, kBeta2 = 0.999f, kEps = 1e-8f, kWeightDecay = 0.1f;

// The coefficients the C# optimizers pass (Optim/OptimizerSegments.cs): double, rounded once.
struct Coefficients {
    float decay, step_size, bias_correction2_sqrt, eps;
};

Coefficients torch_coefficients(int step) {
    const double bc1 = 1.0 - std::pow((double)kBeta1, step), bc2 = 1.0 - std::pow((double)kBeta2, step);
    return {(float)(1.0 - (double)kLr * kWeightDecay), (float)(-(double)kLr / bc1), (float)std::sqrt(bc2), kEps};
}

Coefficients bnb_coefficients(int step) {
    const double bc1 = 1.0 - std::pow((double)kBeta1, step), c2 = std::sqrt(1.0 - std::pow((double)kBeta2, step));
    return {(float)(1.0 - (double)kLr * kWeightDecay), (float)(-(double)kLr * c2 / bc1), 1.0f, (float)(kEps * c2)};
}

lk_adamw_segment segment(float* p, unsigned short* p_bf16, const float* g, float* m, float* v, int64_t n,
                         const Coefficients& c) {
    return lk_adamw_segment{p, p_bf16, g, m, v, n, 0, c.decay, c.step_size, c.bias_correction2_sqrt, c.eps};
}

bool bit_equal(const float* a, const float* b, int64_t n) { return std::memcmp(a, b, (size_t)n * sizeof(float)) == 0; }

// ---- AdamW: several segments over several steps against double -----------------------------
// Each step rounds p, m and v a few times and divides by sqrt(v) + eps, so the fp32 state drifts
// from the double one by a few units of 2^-24 per step, relative to the quantities involved:
//   m: |got - ref| <= steps * 8 * 2^-24 * (|m_ref| + max|g|)
//   v: |got - ref| <= steps * 8 * 2^-24 * (|v_ref| + max g^2)
//   p: |got - ref| <= steps * 32 * 2^-24 * (|p_ref| + lr)
// grad_scale 0.5 scales every gradient exactly.
void check_adamw_against_double(int bnb_form) {
    const std::vector<int64_t> sizes = {1, 251, 4099};  // one, a prime below a GPU block run, one above
    const float grad_scale = 0.5f;
    Rng rng(40 + bnb_form);
    std::vector<std::vector<float>> p, m, v;
    std::vector<std::vector<double>> p_ref, m_ref, v_ref;
    for (int64_t n : sizes) {
        p.push_back(rng.vector(n));
        m.emplace_back((size_t)n, 0.0f);
        v.emplace_back((size_t)n, 0.0f);
        p_ref.emplace_back(p.back().begin(), p.back().end());
        m_ref.emplace_back((size_t)n, 0.0);
        v_ref.emplace_back((size_t)n, 0.0);
    }
    const int steps = 5;
    for (int step = 1; step <= steps; ++step) {
        SCOPED_TRACE("step=" + std::to_string(step));
        std::vector<std::vector<float>> g;
        std::vector<lk_adamw_segment> segments;
        const Coefficients c = bnb_form ? bnb_coefficients(step) : torch_coefficients(step);
        for (size_t t = 0; t < sizes.size(); ++t) {
            g.push_back(rng.vector(sizes[t]));
            segments.push_back(segment(p[t].data(), nullptr, g[t].data(), m[t].data(), v[t].data(), sizes[t], c));
        }
        ASSERT_EQ(lk_cpu_adamw(segments.data(), (int64_t)segments.size(), kBeta1, kBeta2, grad_scale, bnb_form), LK_OK)
            << last_error();
        const double bc1 = 1.0 - std::pow((double)kBeta1, step), bc2 = 1.0 - std::pow((double)kBeta2, step);
        for (size_t t = 0; t < sizes.size(); ++t) {
            const int64_t n = sizes[t];
            std::vector<double> p_mag((size_t)n), m_mag((size_t)n), v_mag((size_t)n);
            for (int64_t i = 0; i < n; ++i) {
                double& pr = p_ref[t][(size_t)i];
                double& mr = m_ref[t][(size_t)i];
                double& vr = v_ref[t][(size_t)i];
                const double gi = (double)g[t][(size_t)i] * grad_scale;
                if (!bnb_form) pr *= 1.0 - (double)kLr * kWeightDecay;
                mr = kBeta1 * mr + (1.0 - kBeta1) * gi;
                vr = kBeta2 * vr + (1.0 - kBeta2) * gi * gi;
                if (bnb_form) {
                    pr -= kLr * std::sqrt(bc2) / bc1 * mr / (std::sqrt(vr) + kEps * std::sqrt(bc2));
                    pr *= 1.0 - (double)kLr * kWeightDecay;
                } else {
                    pr -= kLr * (mr / bc1) / (std::sqrt(vr / bc2) + kEps);
                }
                p_mag[(size_t)i] = std::fabs(pr) + kLr;
                m_mag[(size_t)i] = std::fabs(mr) + 1.0;  // max |g| = 1
                v_mag[(size_t)i] = std::fabs(vr) + 1.0;  // max g^2 = 1
            }
            SCOPED_TRACE("n=" + std::to_string(n));
            EXPECT_TRUE(all_near(m[t].data(), n, 1, n, m_ref[t], m_mag, 0.0, step * 8.0 * kUnitRoundoff));
            EXPECT_TRUE(all_near(v[t].data(), n, 1, n, v_ref[t], v_mag, 0.0, step * 8.0 * kUnitRoundoff));
            EXPECT_TRUE(all_near(p[t].data(), n, 1, n, p_ref[t], p_mag, 0.0, step * 32.0 * kUnitRoundoff));
        }
    }
}

TEST(AdamW, TorchFormMatchesDoubleOverSeveralSegmentsAndSteps) { check_adamw_against_double(0); }

TEST(AdamW, BitsandbytesFormMatchesDoubleOverSeveralSegmentsAndSteps) { check_adamw_against_double(1); }

// A bf16 parameter: the fp32 master path writes exactly the master rounded to bf16, and the direct
// path (no master) computes from the widened bf16 value and rounds, bit for bit.
TEST(AdamW, Bf16ParametersAreTheFp32UpdateRounded) {
    const int64_t n = 1031;
    Rng rng(7);
    std::vector<float> p0 = rng.vector(n), g = rng.vector(n), m0 = rng.vector(n), v0 = rng.vector(n);
    for (float& e : v0) e = e * e;
    std::vector<unsigned short> p0_bf16((size_t)n);
    ASSERT_EQ(lk_cpu_f32_to_bf16(n, p0.data(), p0_bf16.data()), LK_OK);
    std::vector<float> widened((size_t)n);
    ASSERT_EQ(lk_cpu_bf16_to_f32(n, p0_bf16.data(), widened.data()), LK_OK);
    const Coefficients c = torch_coefficients(3);
    for (int bnb_form : {0, 1}) {
        SCOPED_TRACE("bnb_form=" + std::to_string(bnb_form));
        // Plain fp32 from the widened values: what both bf16 paths must reproduce.
        std::vector<float> want_p = widened, want_m = m0, want_v = v0;
        lk_adamw_segment plain = segment(want_p.data(), nullptr, g.data(), want_m.data(), want_v.data(), n, c);
        ASSERT_EQ(lk_cpu_adamw(&plain, 1, kBeta1, kBeta2, 1.0f, bnb_form), LK_OK) << last_error();
        std::vector<unsigned short> want_bf16((size_t)n);
        ASSERT_EQ(lk_cpu_f32_to_bf16(n, want_p.data(), want_bf16.data()), LK_OK);

        std::vector<float> master = widened, m = m0, v = v0;
        std::vector<unsigned short> copy((size_t)n, 0xffffu);
        lk_adamw_segment with_master = segment(master.data(), copy.data(), g.data(), m.data(), v.data(), n, c);
        ASSERT_EQ(lk_cpu_adamw(&with_master, 1, kBeta1, kBeta2, 1.0f, bnb_form), LK_OK) << last_error();
        EXPECT_TRUE(bit_equal(master.data(), want_p.data(), n));
        EXPECT_EQ(copy, want_bf16);

        std::vector<unsigned short> direct = p0_bf16;
        m = m0;
        v = v0;
        lk_adamw_segment bf16_only = segment(nullptr, direct.data(), g.data(), m.data(), v.data(), n, c);
        ASSERT_EQ(lk_cpu_adamw(&bf16_only, 1, kBeta1, kBeta2, 1.0f, bnb_form), LK_OK) << last_error();
        EXPECT_EQ(direct, want_bf16);
        EXPECT_TRUE(bit_equal(m.data(), want_m.data(), n));
        EXPECT_NE(direct, p0_bf16);
    }
}

// What paging relies on: the same parameter as one segment or cut anywhere into several, and one
// thread or all, give the same bits.
TEST(AdamW, SegmentCutsAndThreadCountsDoNotChangeTheBits) {
    const int64_t n = 100003;
    Rng rng(11);
    const std::vector<float> p0 = rng.vector(n), g = rng.vector(n), m0 = rng.vector(n);
    std::vector<float> v0 = rng.vector(n);
    for (float& e : v0) e = e * e;
    const Coefficients c = torch_coefficients(4);
    auto run = [&](const std::vector<int64_t>& cuts, int threads, std::vector<float>& p, std::vector<float>& m,
                   std::vector<float>& v) {
        p = p0, m = m0, v = v0;
        std::vector<lk_adamw_segment> segments;
        int64_t begin = 0;
        for (int64_t end : cuts) {
            segments.push_back(segment(p.data() + begin, nullptr, g.data() + begin, m.data() + begin, v.data() + begin,
                                       end - begin, c));
            begin = end;
        }
        EXPECT_EQ(lk_cpu_set_num_threads(threads), LK_OK);
        EXPECT_EQ(lk_cpu_adamw(segments.data(), (int64_t)segments.size(), kBeta1, kBeta2, 1.0f, 0), LK_OK) << last_error();
        EXPECT_EQ(lk_cpu_set_num_threads(0), LK_OK);
    };
    std::vector<float> p1, m1, v1, p2, m2, v2;
    run({n}, 0, p1, m1, v1);
    run({1, 4096, 4097, 70000, n}, 1, p2, m2, v2);
    EXPECT_TRUE(bit_equal(p1.data(), p2.data(), n));
    EXPECT_TRUE(bit_equal(m1.data(), m2.data(), n));
    EXPECT_TRUE(bit_equal(v1.data(), v2.data(), n));
    EXPECT_FALSE(bit_equal(p1.data(), p0.data(), n));
}

// ---- 8-bit AdamW ---------------------------------------------------------------------------------

struct State8bit {
    std::vector<float> p;
    std::vector<unsigned char> m_codes, v_codes;
    std::vector<float> m_absmax, v_absmax;
};

// A fresh 8-bit state: the codes of zero (signed map index 127, unsigned 0) and absmax 0. (bitsandbytes, and
// AdamW8bit, start from code 0 with absmax 0, which dequantizes to -0 and steps the same.)
State8bit fresh_8bit(const std::vector<float>& p) {
    const size_t blocks = (p.size() + 255) / 256;
    return State8bit{p, std::vector<unsigned char>(p.size(), 127), std::vector<unsigned char>(p.size(), 0),
                     std::vector<float>(blocks, 0.0f), std::vector<float>(blocks, 0.0f)};
}

// Steps `state` with gradients grads[t], the parameter cut into segments at `cuts` (block multiples).
void run_8bit(State8bit& state, const std::vector<std::vector<float>>& grads, const std::vector<int64_t>& cuts,
              float grad_scale = 1.0f) {
    for (size_t t = 0; t < grads.size(); ++t) {
        const Coefficients c = bnb_coefficients((int)t + 1);
        std::vector<lk_adamw8bit_segment> segments;
        int64_t begin = 0;
        for (int64_t end : cuts) {
            const int64_t block = begin / 256;
            segments.push_back(lk_adamw8bit_segment{state.p.data() + begin, nullptr, grads[t].data() + begin,
                                                    state.m_codes.data() + begin, state.v_codes.data() + begin,
                                                    state.m_absmax.data() + block, state.v_absmax.data() + block,
                                                    end - begin, 0, c.decay, c.step_size, c.eps, 0.0f});
            begin = end;
        }
        ASSERT_EQ(lk_cpu_adamw8bit(segments.data(), (int64_t)segments.size(), kBeta1, kBeta2, grad_scale), LK_OK)
            << last_error();
    }
}

TEST(AdamW8bit, BlockAlignedCutsAndThreadCountsDoNotChangeTheBits) {
    const int64_t n = 5000;  // 19 full blocks and a partial one
    Rng rng(21);
    const std::vector<float> p0 = rng.vector(n);
    std::vector<std::vector<float>> grads;
    for (int t = 0; t < 4; ++t) grads.push_back(rng.vector(n));
    State8bit one = fresh_8bit(p0), cut = fresh_8bit(p0);
    run_8bit(one, grads, {n});
    ASSERT_EQ(lk_cpu_set_num_threads(1), LK_OK);
    run_8bit(cut, grads, {256, 2560, 4864, n});
    ASSERT_EQ(lk_cpu_set_num_threads(0), LK_OK);
    EXPECT_TRUE(bit_equal(one.p.data(), cut.p.data(), n));
    EXPECT_EQ(one.m_codes, cut.m_codes);
    EXPECT_EQ(one.v_codes, cut.v_codes);
    EXPECT_EQ(one.m_absmax, cut.m_absmax);
    EXPECT_EQ(one.v_absmax, cut.v_absmax);
    EXPECT_FALSE(bit_equal(one.p.data(), p0.data(), n));
}

// 8-bit AdamW against the fp32 bitsandbytes form over 3 steps. Step 1 is exact (the update uses
// the fp32 moments; quantization follows it), so only steps 2 and 3 see dequantized moments. The
// dynamic maps space their codes at most 0.9/64 of a decade apart (the top decade: 64 linear steps
// from 0.1 to 1 of the block's absmax), i.e. at most about 14% of a moment a tenth of its block's
// absmax, and Adam's normalized update m/√v moves by at most about that fraction of lr:
// |Δp| <= 2 steps · lr · 0.15 = 3·lr·0.1. (Measured: 0.03·lr.)
TEST(AdamW8bit, FollowsTheFp32FormWithinTheQuantizationError) {
    const int64_t n = 4099;
    Rng rng(31);
    const std::vector<float> p0 = rng.vector(n);
    std::vector<std::vector<float>> grads;
    for (int t = 0; t < 3; ++t) grads.push_back(rng.vector(n));
    State8bit eight = fresh_8bit(p0);
    run_8bit(eight, grads, {n}, 0.5f);
    std::vector<float> p = p0, m((size_t)n, 0.0f), v((size_t)n, 0.0f);
    for (int t = 0; t < 3; ++t) {
        lk_adamw_segment s = segment(p.data(), nullptr, grads[(size_t)t].data(), m.data(), v.data(), n, bnb_coefficients(t + 1));
        ASSERT_EQ(lk_cpu_adamw(&s, 1, kBeta1, kBeta2, 0.5f, 1), LK_OK) << last_error();
    }
    std::vector<double> ref(p.begin(), p.end()), magnitude((size_t)n, 1.0);
    EXPECT_TRUE(all_near(eight.p.data(), n, 1, n, ref, magnitude, 3 * kLr * 0.1, 0.0));
    double moved = 0.0;
    for (int64_t i = 0; i < n; ++i) moved = std::max(moved, std::fabs((double)eight.p[(size_t)i] - p0[(size_t)i]));
    EXPECT_GT(moved, 2 * kLr);  // the parameters really moved
    for (float a : eight.m_absmax) EXPECT_GT(a, 0.0f);
}

// A block whose gradients are all zero keeps a zero state (absmax 0) and its parameters only decay.
TEST(AdamW8bit, AllZeroBlockStaysZero) {
    const int64_t n = 300;
    std::vector<float> p0((size_t)n, 0.5f);
    State8bit state = fresh_8bit(p0);
    run_8bit(state, {std::vector<float>((size_t)n, 0.0f)}, {n});
    const float decay = bnb_coefficients(1).decay;
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(state.p[(size_t)i], 0.5f * decay) << i;
    EXPECT_EQ(state.m_absmax, std::vector<float>(2, 0.0f));
    EXPECT_EQ(state.v_absmax, std::vector<float>(2, 0.0f));
}

// ---- the gradient norm pass ----------------------------------------------------------------------

TEST(GradSumsq, MatchesDoubleAndFlagsNonFiniteGradients) {
    Rng rng(51);
    std::vector<float> a = rng.vector(1), b = rng.vector(9001);
    double want = 0.0;
    for (float x : a) want += (double)x * x;
    for (float x : b) want += (double)x * x;
    std::vector<lk_grad_span> spans = {{a.data(), 1, 0}, {b.data(), 9001, 0}};
    double sum = 0.0;
    ASSERT_EQ(lk_cpu_grad_sumsq(spans.data(), 2, &sum), LK_OK) << last_error();
    // Double sums of 9002 terms in two orders: at most 9002 · 2^-53 · Σ g² apart.
    EXPECT_NEAR(sum, want, 9002 * std::ldexp(1.0, -53) * want);
    EXPECT_GT(want, 1000.0);
    ASSERT_EQ(lk_cpu_set_num_threads(1), LK_OK);
    double single = 0.0;
    ASSERT_EQ(lk_cpu_grad_sumsq(spans.data(), 2, &single), LK_OK);
    ASSERT_EQ(lk_cpu_set_num_threads(0), LK_OK);
    EXPECT_EQ(single, sum);
    for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
        b[4500] = bad;
        ASSERT_EQ(lk_cpu_grad_sumsq(spans.data(), 2, &sum), LK_OK);
        EXPECT_FALSE(std::isfinite(sum));
    }
    b[4500] = std::numeric_limits<float>::max();  // its square overflows a float, not a double
    ASSERT_EQ(lk_cpu_grad_sumsq(spans.data(), 2, &sum), LK_OK);
    EXPECT_TRUE(std::isfinite(sum));
}

// ---- page hints for mapped state -----------------------------------------------------------------

#if defined(__linux__)
// What the paged CPU optimizer relies on: a shared file mapping keeps its data through readahead and
// release (the pages come back from the file), on unaligned ranges too.
TEST(Pages, ReleasedSharedFilePagesKeepTheirData) {
    FILE* file = std::tmpfile();
    ASSERT_NE(file, nullptr);
    const int64_t bytes = 5 * 4096 + 123;
    ASSERT_EQ(ftruncate(fileno(file), bytes), 0);
    auto* mapping = (float*)mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fileno(file), 0);
    ASSERT_NE((void*)mapping, MAP_FAILED);
    const int64_t count = bytes / 4;
    char* middle = (char*)mapping + 1000;  // not page aligned: the hints widen to whole pages
    ASSERT_EQ(lk_cpu_pages_readahead(middle, bytes - 2000), LK_OK) << last_error();
    for (int64_t i = 0; i < count; ++i) mapping[i] = (float)i * 0.5f;
    ASSERT_EQ(lk_cpu_pages_release(middle, bytes - 2000), LK_OK) << last_error();
    for (int64_t i = 0; i < count; ++i) ASSERT_EQ(mapping[i], (float)i * 0.5f) << i;
    ASSERT_EQ(lk_cpu_pages_release(mapping, 0), LK_OK);
    munmap(mapping, bytes);
    std::fclose(file);
}

// The paged CPU optimizer's window: runs written to two files and read back land byte for byte, whatever
// the thread that takes each run; a read past a file's end and a bad descriptor fail naming the run.
TEST(FileRuns, WriteThenReadRoundTripsEveryRun) {
    FILE* first = std::tmpfile();
    FILE* second = std::tmpfile();
    ASSERT_NE(first, nullptr);
    ASSERT_NE(second, nullptr);
    const int64_t run_bytes = 3 * 4096 + 17;  // not page sized: the offsets below are not page aligned either
    const int runs_per_file = 5;
    std::vector<unsigned char> source(2 * runs_per_file * run_bytes), back(source.size(), 0);
    for (size_t i = 0; i < source.size(); ++i) source[i] = (unsigned char)(i * 131 + 7);
    std::vector<lk_file_run> writes, reads;
    for (int f = 0; f < 2; ++f)
        for (int k = 0; k < runs_per_file; ++k) {
            const int64_t at = (int64_t)(f * runs_per_file + k) * run_bytes;
            const int fd = fileno(f == 0 ? first : second);
            writes.push_back({k * run_bytes + 5, source.data() + at, run_bytes, fd, 0});
            reads.push_back({k * run_bytes + 5, back.data() + at, run_bytes, fd, 0});
        }
    ASSERT_EQ(lk_cpu_file_write(writes.data(), (int64_t)writes.size()), LK_OK) << last_error();
    ASSERT_EQ(lk_cpu_file_read(reads.data(), (int64_t)reads.size()), LK_OK) << last_error();
    EXPECT_EQ(back, source);
    ASSERT_EQ(lk_cpu_file_read(reads.data(), 0), LK_OK);

    lk_file_run past_end = {runs_per_file * run_bytes, back.data(), 100, fileno(first), 0};
    EXPECT_EQ(lk_cpu_file_read(&past_end, 1), LK_ERR_INTERNAL);
    EXPECT_NE(last_error().find("the file ends inside the run"), std::string::npos) << last_error();
    lk_file_run closed = {0, back.data(), 100, 1 << 20, 0};
    EXPECT_EQ(lk_cpu_file_write(&closed, 1), LK_ERR_INTERNAL);
    EXPECT_NE(last_error().find("run 0 (fd 1048576"), std::string::npos) << last_error();
    std::fclose(first);
    std::fclose(second);
}
#endif

// ---- arguments -----------------------------------------------------------------------------------

void expect_invalid(lk_status status, std::initializer_list<const char*> fragments) {
    EXPECT_EQ(status, LK_ERR_INVALID_ARGUMENT) << lk_status_name(status);
    const std::string message = last_error();
    for (const char* fragment : fragments)
        EXPECT_NE(message.find(fragment), std::string::npos) << "message: " << message << "\nmissing: " << fragment;
}

TEST(OptimArguments, BadListsAndCoefficientsAreNamed) {
    std::vector<float> p(4, 1.0f), g(4, 1.0f), m(4, 0.0f), v(4, 0.0f);
    lk_adamw_segment good = segment(p.data(), nullptr, g.data(), m.data(), v.data(), 4, torch_coefficients(1));
    ASSERT_EQ(lk_cpu_adamw(&good, 1, kBeta1, kBeta2, 1.0f, 0), LK_OK);
    expect_invalid(lk_cpu_adamw(&good, -1, kBeta1, kBeta2, 1.0f, 0), {"lk_cpu_adamw", "count", "-1"});
    expect_invalid(lk_cpu_adamw(nullptr, 1, kBeta1, kBeta2, 1.0f, 0), {"lk_cpu_adamw", "segments", "NULL"});
    expect_invalid(lk_cpu_adamw(&good, 1, 1.0f, kBeta2, 1.0f, 0), {"lk_cpu_adamw", "beta1", "1"});
    expect_invalid(lk_cpu_adamw(&good, 1, kBeta1, -0.5f, 1.0f, 0), {"lk_cpu_adamw", "beta2", "-0.5"});
    expect_invalid(lk_cpu_adamw(&good, 1, kBeta1, kBeta2, -1.0f, 0), {"lk_cpu_adamw", "grad_scale", "-1"});
    expect_invalid(lk_cpu_adamw(&good, 1, kBeta1, kBeta2, std::numeric_limits<float>::infinity(), 0),
                   {"lk_cpu_adamw", "grad_scale", "inf"});
    expect_invalid(lk_cpu_adamw(&good, 1, kBeta1, kBeta2, 1.0f, 2), {"lk_cpu_adamw", "bnb_form", "2"});
    lk_adamw_segment bad = good;
    bad.n = -3;
    expect_invalid(lk_cpu_adamw(&bad, 1, kBeta1, kBeta2, 1.0f, 0), {"lk_cpu_adamw", "segment n", "-3"});
    bad = good;
    bad.param = nullptr;
    expect_invalid(lk_cpu_adamw(&bad, 1, kBeta1, kBeta2, 1.0f, 0), {"lk_cpu_adamw", "param", "NULL"});
    bad = good;
    bad.v = nullptr;
    expect_invalid(lk_cpu_adamw(&bad, 1, kBeta1, kBeta2, 1.0f, 0), {"lk_cpu_adamw", "segment v", "NULL"});

    std::vector<unsigned char> codes(4, 0);
    std::vector<float> absmax(1, 0.0f);
    lk_adamw8bit_segment eight{p.data(), nullptr, g.data(), codes.data(), codes.data(), absmax.data(), absmax.data(),
                               4, 0, 1.0f, -1e-3f, 1e-8f, 0.0f};
    eight.v_absmax = nullptr;
    expect_invalid(lk_cpu_adamw8bit(&eight, 1, kBeta1, kBeta2, 1.0f), {"lk_cpu_adamw8bit", "v_absmax", "NULL"});

    lk_grad_span span{nullptr, 4, 0};
    double sum = 0.0;
    expect_invalid(lk_cpu_grad_sumsq(&span, 1, &sum), {"lk_cpu_grad_sumsq", "span grad", "NULL"});
    span.grad = g.data();
    expect_invalid(lk_cpu_grad_sumsq(&span, 1, nullptr), {"lk_cpu_grad_sumsq", "sum", "NULL"});

    expect_invalid(lk_cpu_pages_release(g.data(), -1), {"lk_cpu_pages_release", "bytes", "-1"});
    expect_invalid(lk_cpu_pages_readahead(nullptr, 1), {"lk_cpu_pages_readahead", "address", "NULL"});
    lk_file_run run = {0, g.data(), -4, 0, 0};
    expect_invalid(lk_cpu_file_read(&run, 1), {"lk_cpu_file_read", "run bytes", "-4"});
    run = {0, nullptr, 4, 0, 0};
    expect_invalid(lk_cpu_file_write(&run, 1), {"lk_cpu_file_write", "run memory", "NULL"});
    expect_invalid(lk_cpu_file_read(nullptr, 2), {"lk_cpu_file_read", "runs", "NULL"});
}

}  // namespace
