// Every lk_dora_* entry point of kernels/dora.cu (fp32 and bf16) under the SIMT emulator, launched
// with GpuBackend.Dora.cs's geometry and composed with lora.cu's GEMMs exactly as the launcher
// composes them: the weight norm against a materialised double-precision ‖W0 + s·B·A‖_row
// (random and near-cancelling rows), the forward, backward and merge row scaling against
// lk_cpu_dora_* on the same (dtype-rounded) inputs. The LoRA GEMMs' own paths (decode, tiled)
// are covered by lora_parity_test.cpp; here the forward uses project + tiled for every M. QDoRA's
// transposed norm (lk_dora_weight_norm_pt_f32) and the training dropout (lk_dora_dropout_f32,
// bit-exact) are compared with lk_cpu_dora_weight_norm_pt and lk_cpu_dora_dropout.
//
// Tolerances: parity::Near's formula (K = the longest fp32 chain behind an output; bound = the
// CPU computation on absolute values), plus, for bf16, one bf16 rounding (2^-8 relative) per
// intermediate the GPU stores in bf16 and the CPU keeps in fp32 (z before the column scale, dz
// before the LoRA backward): it errs by up to 2^-8·bound, i.e. as 2^15 extra chain steps would.
// Norm: |n_got - n_ref| <= min(sqrt(E), E / n_ref) + 2u·n_ref + 1e-6 with
// E = 4·(in + 2r + 2)·u·mag², mag² = Σ_k (|w_k| + s·Σ_a |B_a||A_ak|)² (see tests/native/cpu/test_dora.cpp).
#include "parity.h"

namespace {

using parity::Buffer;
using parity::DType;
using parity::Launch;
using parity::Near;

constexpr uint32_t kDoraThreads = 256;  // kernels/dora.cu kDoraThreads
constexpr int kDoraWarps = 8;
constexpr int kGradColumns = 32;
constexpr int kMultiprocessors = 4;  // what SimtKernelDevice reports
constexpr double kBf16StoredIntermediate = 1.0 / (256.0 * 2.0 * parity::kF32Unit);  // 2^15

struct DoraCase {
    int M, in, out, r;
    DType dtype;
};

std::string CaseName(const DoraCase& c) {
    std::ostringstream s;
    s << "M" << c.M << "_in" << c.in << "_out" << c.out << "_r" << c.r << "_" << parity::Suffix(c.dtype);
    return s.str();
}

std::vector<DoraCase> AllCases() {
    struct Shape {
        int M, in, out, r;
    };
    const Shape shapes[] = {{1, 1, 1, 1}, {7, 97, 33, 8}, {33, 130, 67, 16}, {17, 33, 300, 3}};
    std::vector<DoraCase> cases;
    for (const Shape& s : shapes)
        for (DType dtype : {DType::F32, DType::BF16}) cases.push_back({s.M, s.in, s.out, s.r, dtype});
    return cases;
}

std::vector<float> Positive(size_t n, uint32_t seed) {
    std::vector<float> v = parity::Abs(parity::RandomValues(n, seed));
    for (float& e : v) e += 0.5f;
    return v;
}

// GpuBackend.DoraElementwiseGrid: grid-stride kernels over n elements.
parity::Grid ElementwiseGrid(int64_t n) { return parity::ElementwiseGrid(n, kMultiprocessors); }

// The launcher's weight norm: ‖w‖² (row_sqnorm), P = W0 Aᵀ and G = A Aᵀ (lora.cu's project), then weight_norm.
::testing::AssertionResult GpuWeightNorm(DType dtype, int out, int in, int r, Buffer& W0, Buffer& A, Buffer& B,
                                         float scale, Buffer& norm) {
    Buffer sq = Buffer::Poisoned(DType::F32, (size_t)out), P = Buffer::Poisoned(DType::F32, (size_t)out * r),
           G = Buffer::Poisoned(DType::F32, (size_t)r * r);
    norm = Buffer::Poisoned(DType::F32, (size_t)out);
    const float no_dropout = 0.0f;
    const unsigned long long no_seed = 0;
    ::testing::AssertionResult ok =
        Launch(parity::KernelName("lk_dora_row_sqnorm", dtype).c_str(),
               {(uint32_t)parity::CeilDiv(out, kDoraWarps), 1}, kDoraThreads, 0, W0.data(), (float*)sq.data(), out, in);
    if (!ok) return ok;
    ok = Launch(parity::KernelName("lk_lora_project", dtype).c_str(), parity::TileGrid(out, r), parity::kTileThreads, 0,
                W0.data(), A.data(), (float*)P.data(), out, in, r, no_dropout, no_seed);
    if (!ok) return ok;
    ok = Launch(parity::KernelName("lk_lora_project", dtype).c_str(), parity::TileGrid(r, r), parity::kTileThreads, 0,
                A.data(), A.data(), (float*)G.data(), r, in, r, no_dropout, no_seed);
    if (!ok) return ok;
    return Launch(parity::KernelName("lk_dora_weight_norm", dtype).c_str(),
                  {(uint32_t)parity::CeilDiv(out, kDoraThreads), 1}, kDoraThreads, 0, (const float*)sq.data(),
                  (const float*)P.data(), (const float*)G.data(), B.data(), (float*)norm.data(), out, r, scale);
}

// Materialised ‖W0 + s·B·A‖_row in double.
std::vector<double> MaterialisedNorm(int out, int in, int r, const std::vector<float>& W0, const std::vector<float>& A,
                                     const std::vector<float>& B, double s) {
    std::vector<double> n((size_t)out);
    for (int i = 0; i < out; ++i) {
        double sum = 0.0;
        for (int k = 0; k < in; ++k) {
            double w = W0[(size_t)i * in + k];
            for (int a = 0; a < r; ++a) w += s * B[(size_t)i * r + a] * A[(size_t)a * in + k];
            sum += w * w;
        }
        n[(size_t)i] = std::sqrt(sum);
    }
    return n;
}

// Rows 0 (mod 3) of w become -s·B_i·A scaled by (1 + 1 % noise); row 0 exactly -s·B_0·A (before rounding to float).
void CancelEveryThirdRow(const DoraCase& c, const std::vector<float>& a, const std::vector<float>& b,
                         const std::vector<float>& noise, float scale, std::vector<float>& w) {
    for (int i = 0; i < c.out; i += 3)
        for (int k = 0; k < c.in; ++k) {
            double ba = 0.0;
            for (int t = 0; t < c.r; ++t) ba += (double)b[(size_t)i * c.r + t] * a[(size_t)t * c.in + k];
            const double delta = i == 0 ? 0.0 : 1e-2;
            w[(size_t)i * c.in + k] = (float)(-scale * ba * (1.0 + delta * noise[(size_t)i * c.in + k]));
        }
}

class DoraParity : public ::testing::TestWithParam<DoraCase> {};

// Rows 0 (mod 3) of W0 are -s·B_i·A (rounded to the dtype) plus 1 % noise; row 0 without noise.
TEST_P(DoraParity, WeightNormMatchesMaterialisedNorm) {
    const DoraCase c = GetParam();
    const float scale = 1.25f;
    const uint32_t seed = (uint32_t)(c.out * 7919 + c.in * 31 + c.r);
    Buffer A(c.dtype, parity::RandomValues((size_t)c.r * c.in, seed + 1));
    Buffer B(c.dtype, parity::RandomValues((size_t)c.out * c.r, seed + 2));
    const std::vector<float> a = A.values(), b = B.values();
    std::vector<float> w = parity::RandomValues((size_t)c.out * c.in, seed + 3);
    const std::vector<float> noise = parity::RandomValues((size_t)c.out * c.in, seed + 4);
    for (bool cancel : {false, true}) {
        SCOPED_TRACE(CaseName(c) + (cancel ? " near-cancelling rows" : " random rows"));
        if (cancel) CancelEveryThirdRow(c, a, b, noise, scale, w);
        Buffer W0(c.dtype, w);
        Buffer norm;
        ASSERT_TRUE(GpuWeightNorm(c.dtype, c.out, c.in, c.r, W0, A, B, scale, norm));
        const std::vector<float> w0 = W0.values(), got = norm.values();
        const std::vector<double> want = MaterialisedNorm(c.out, c.in, c.r, w0, a, b, scale);
        const std::vector<double> mag = MaterialisedNorm(c.out, c.in, c.r, parity::Abs(w0), parity::Abs(a),
                                                         parity::Abs(b), scale);
        for (int i = 0; i < c.out; ++i) {
            const double E = 4.0 * (c.in + 2.0 * c.r + 2.0) * parity::kF32Unit * mag[(size_t)i] * mag[(size_t)i];
            const double n_ref = want[(size_t)i];
            const double tol = std::min(std::sqrt(E), n_ref > 0 ? E / n_ref : INFINITY) +
                               2 * parity::kF32Unit * n_ref + parity::kAtol;
            ASSERT_TRUE(std::isfinite(got[(size_t)i]) && got[(size_t)i] >= 0.0f) << "row " << i;
            EXPECT_NEAR(got[(size_t)i], n_ref, tol) << "row " << i << " (E = " << E << ")";
        }
    }
}

TEST_P(DoraParity, ForwardMatchesCpu) {
    const DoraCase c = GetParam();
    const uint32_t seed = (uint32_t)(c.M * 1000003 + c.in * 1009 + c.out * 17 + c.r);
    const float scale = 0.75f;
    Buffer x(c.dtype, parity::RandomValues((size_t)c.M * c.in, seed + 1));
    Buffer W0(c.dtype, parity::RandomValues((size_t)c.out * c.in, seed + 2));
    Buffer bias(c.dtype, parity::RandomValues((size_t)c.out, seed + 3));
    Buffer A(c.dtype, parity::RandomValues((size_t)c.r * c.in, seed + 4));
    Buffer B(c.dtype, parity::RandomValues((size_t)c.out * c.r, seed + 5));
    Buffer m(c.dtype, Positive((size_t)c.out, seed + 6));
    Buffer norm(DType::F32, Positive((size_t)c.out, seed + 7));
    const std::vector<float> mv = m.values(), nv = norm.values();

    auto cpu = [&](const std::vector<float>& xv, const std::vector<float>& wv, const std::vector<float>& bv,
                   const std::vector<float>& av, const std::vector<float>& bbv, std::vector<float>& y,
                   std::vector<float>& z) {
        std::vector<float> u((size_t)c.M * c.r);
        y.assign((size_t)c.M * c.out, 0.0f);
        z.assign((size_t)c.M * c.out, 0.0f);
        EXPECT_EQ(LK_OK, lk_cpu_dora_forward(c.M, c.in, c.out, c.r, xv.data(), wv.data(), bv.data(), av.data(),
                                             bbv.data(), scale, mv.data(), nv.data(), y.data(), u.data(), z.data()));
    };
    std::vector<float> want_y, want_z, bound_y, bound_z;
    cpu(x.values(), W0.values(), bias.values(), A.values(), B.values(), want_y, want_z);
    cpu(parity::Abs(x.values()), parity::Abs(W0.values()), parity::Abs(bias.values()), parity::Abs(A.values()),
        parity::Abs(B.values()), bound_y, bound_z);

    Buffer u = Buffer::Poisoned(DType::F32, (size_t)c.M * c.r);
    Buffer z = Buffer::Poisoned(c.dtype, (size_t)c.M * c.out);
    Buffer y = Buffer::Poisoned(c.dtype, (size_t)c.M * c.out);
    const void* no_bias = nullptr;
    ASSERT_TRUE(Launch(parity::KernelName("lk_lora_project", c.dtype).c_str(), parity::TileGrid(c.M, c.r),
                       parity::kTileThreads, 0, x.data(), A.data(), (float*)u.data(), c.M, c.in, c.r, 0.0f, 0ull));
    ASSERT_TRUE(Launch(parity::KernelName("lk_lora_forward_tiled", c.dtype).c_str(), parity::TileGrid(c.M, c.out),
                       parity::kTileThreads, 0, x.data(), W0.data(), no_bias, (const float*)u.data(), B.data(),
                       z.data(), c.M, c.in, c.out, c.r, scale));
    ASSERT_TRUE(Launch(parity::KernelName("lk_dora_scale_columns", c.dtype).c_str(), ElementwiseGrid((int64_t)c.M * c.out),
                       kDoraThreads, 0, z.data(), m.data(), (const float*)norm.data(), bias.data(), y.data(), c.M,
                       c.out));
    const double rounding = c.dtype == DType::BF16 ? parity::kBf16Rounding : 0.0;
    const double chain = c.in + c.r + 3;  // x W0ᵀ, the LoRA term over r, the scale and the bias
    EXPECT_TRUE(Near("z", z.values(), want_z, bound_z, chain, rounding));
    // bf16: z is stored rounded before the column scale, an error up to 2^-8·g·|z| <= 2^-8·bound
    // (not 2^-8·|y|: the bias may cancel g·z).
    const double z_rounding = c.dtype == DType::BF16 ? kBf16StoredIntermediate : 0.0;
    EXPECT_TRUE(Near("y", y.values(), want_y, bound_y, chain + z_rounding, rounding));

    // In place (inference: z not kept): y = g ⊙ y + bias on the same buffer.
    ASSERT_TRUE(Launch(parity::KernelName("lk_dora_scale_columns", c.dtype).c_str(), ElementwiseGrid((int64_t)c.M * c.out),
                       kDoraThreads, 0, z.data(), m.data(), (const float*)norm.data(), bias.data(), z.data(), c.M,
                       c.out));
    EXPECT_EQ(z.values(), y.values());
}

TEST_P(DoraParity, BackwardMatchesCpu) {
    const DoraCase c = GetParam();
    const uint32_t seed = (uint32_t)(c.M * 7 + c.in * 131 + c.out * 1013 + c.r * 3);
    const float scale = 0.75f;
    Buffer x(c.dtype, parity::RandomValues((size_t)c.M * c.in, seed + 1));
    Buffer W0(c.dtype, parity::RandomValues((size_t)c.out * c.in, seed + 2));
    Buffer A(c.dtype, parity::RandomValues((size_t)c.r * c.in, seed + 4));
    Buffer B(c.dtype, parity::RandomValues((size_t)c.out * c.r, seed + 5));
    Buffer m(c.dtype, Positive((size_t)c.out, seed + 6));
    Buffer norm(DType::F32, Positive((size_t)c.out, seed + 7));
    // u and z are the backward's inputs (saved by a forward): independent values test it alone.
    Buffer u(DType::F32, parity::RandomValues((size_t)c.M * c.r, seed + 8));
    Buffer z(c.dtype, parity::RandomValues((size_t)c.M * c.out, seed + 9));
    Buffer dy(c.dtype, parity::RandomValues((size_t)c.M * c.out, seed + 10));
    const std::vector<float> mv = m.values(), nv = norm.values();

    struct Grads {
        std::vector<float> dx, dA, dB, dm;
    };
    auto cpu = [&](bool absolute) {
        auto v = [&](const Buffer& b) { return absolute ? parity::Abs(b.values()) : b.values(); };
        Grads g{std::vector<float>((size_t)c.M * c.in), std::vector<float>((size_t)c.r * c.in),
                std::vector<float>((size_t)c.out * c.r), std::vector<float>((size_t)c.out)};
        EXPECT_EQ(LK_OK, lk_cpu_dora_backward(c.M, c.in, c.out, c.r, v(x).data(), v(W0).data(), v(A).data(),
                                              v(B).data(), v(u).data(), v(z).data(), v(dy).data(), scale, mv.data(),
                                              nv.data(), g.dx.data(), g.dA.data(), g.dB.data(), g.dm.data()));
        return g;
    };
    const Grads want = cpu(false), bound = cpu(true);

    Buffer dm = Buffer::Poisoned(c.dtype, (size_t)c.out), dz = Buffer::Poisoned(c.dtype, (size_t)c.M * c.out);
    ASSERT_TRUE(Launch(parity::KernelName("lk_dora_magnitude_grad", c.dtype).c_str(),
                       {(uint32_t)parity::CeilDiv(c.out, kGradColumns), 1}, kDoraThreads, 0, dy.data(), z.data(),
                       (const float*)norm.data(), dm.data(), c.M, c.out));
    ASSERT_TRUE(Launch(parity::KernelName("lk_dora_scale_grad", c.dtype).c_str(), ElementwiseGrid((int64_t)c.M * c.out),
                       kDoraThreads, 0, dy.data(), m.data(), (const float*)norm.data(), dz.data(), c.M, c.out));
    Buffer du = Buffer::Poisoned(DType::F32, (size_t)c.M * c.r);
    Buffer dx = Buffer::Poisoned(c.dtype, (size_t)c.M * c.in), dA = Buffer::Poisoned(c.dtype, (size_t)c.r * c.in),
           dB = Buffer::Poisoned(c.dtype, (size_t)c.out * c.r);
    ASSERT_TRUE(Launch(parity::KernelName("lk_lora_grad_u", c.dtype).c_str(), parity::TileGrid(c.M, c.r),
                       parity::kTileThreads, 0, dz.data(), B.data(), (float*)du.data(), c.M, c.out, c.r, scale));
    ASSERT_TRUE(Launch(parity::KernelName("lk_lora_grad_b", c.dtype).c_str(), parity::TileGrid(c.out, c.r),
                       parity::kTileThreads, 0, dz.data(), (const float*)u.data(), dB.data(), c.M, c.out, c.r, scale));
    ASSERT_TRUE(Launch(parity::KernelName("lk_lora_grad_a", c.dtype).c_str(), parity::TileGrid(c.r, c.in),
                       parity::kTileThreads, 0, (const float*)du.data(), x.data(), dA.data(), c.M, c.in, c.r, 0.0f,
                       0ull));
    ASSERT_TRUE(Launch(parity::KernelName("lk_lora_grad_x", c.dtype).c_str(), parity::TileGrid(c.M, c.in),
                       parity::kTileThreads, 0, dz.data(), W0.data(), (const float*)du.data(), A.data(), dx.data(), c.M,
                       c.in, c.out, c.r, 0.0f, 0ull));

    const bool bf16 = c.dtype == DType::BF16;
    const double rounding = bf16 ? parity::kBf16Rounding : 0.0;
    const double dz_rounding = bf16 ? kBf16StoredIntermediate : 0.0;
    EXPECT_TRUE(Near("dm", dm.values(), want.dm, bound.dm, c.M + 1, rounding));
    EXPECT_TRUE(Near("dx", dx.values(), want.dx, bound.dx, c.out + c.r + 2 + dz_rounding, rounding));
    EXPECT_TRUE(Near("dA", dA.values(), want.dA, bound.dA, c.M + c.out + 2 + dz_rounding, rounding));
    EXPECT_TRUE(Near("dB", dB.values(), want.dB, bound.dB, c.M + 2 + dz_rounding, rounding));
}

TEST_P(DoraParity, ScaleRowsMatchesCpuBothWays) {
    const DoraCase c = GetParam();
    const uint32_t seed = (uint32_t)(c.out * 17 + c.in);
    Buffer W(c.dtype, parity::RandomValues((size_t)c.out * c.in, seed + 1));
    Buffer m(c.dtype, Positive((size_t)c.out, seed + 2));
    Buffer norm(DType::F32, Positive((size_t)c.out, seed + 3));
    const std::vector<float> mv = m.values(), nv = norm.values();
    for (int invert : {0, 1}) {
        std::vector<float> want = W.values();
        ASSERT_EQ(LK_OK, lk_cpu_dora_scale_rows(c.out, c.in, want.data(), mv.data(), nv.data(), invert));
        const std::vector<float> bound = parity::Abs(want);
        Buffer got = W;
        ASSERT_TRUE(Launch(parity::KernelName("lk_dora_scale_rows", c.dtype).c_str(),
                           ElementwiseGrid((int64_t)c.out * c.in), kDoraThreads, 0, got.data(), m.data(),
                           (const float*)norm.data(), c.out, c.in, invert));
        EXPECT_TRUE(Near(invert ? "unscaled" : "scaled", got.values(), want, bound, 1,
                         c.dtype == DType::BF16 ? parity::kBf16Rounding : 0.0));
    }
}

// QDoRA's norm: G = A Aᵀ (lk_lora_project_f32) and lk_dora_weight_norm_pt_f32 on Pt [r, out], as
// GpuBackend.DoraWeightNormTransposed launches them, against lk_cpu_dora_weight_norm_pt on the same
// ‖w‖² and Pt (both from a W0 in double, rounded once). Rows 0 (mod 3) are near-cancelling as in
// WeightNormMatchesMaterialisedNorm. Tolerance: that test's formula with
// mag² = ‖w‖² + 2s·Σ_a |Pt_ai||B_ia| + s²·Σ_ac |B_ia|·(|A||A|ᵀ)_ac·|B_ic| (the absolute terms of each side's sum).
// f32 only: the kernel exists for F32 layers alone (QDoRA).
class DoraTransposedNormParity : public ::testing::TestWithParam<DoraCase> {};

TEST_P(DoraTransposedNormParity, MatchesCpu) {
    const DoraCase c = GetParam();
    const float scale = 1.25f;
    const uint32_t seed = (uint32_t)(c.out * 104729 + c.in * 7 + c.r * 13);
    const std::vector<float> a = parity::RandomValues((size_t)c.r * c.in, seed + 1);
    const std::vector<float> b = parity::RandomValues((size_t)c.out * c.r, seed + 2);
    std::vector<float> w = parity::RandomValues((size_t)c.out * c.in, seed + 3);
    const std::vector<float> noise = parity::RandomValues((size_t)c.out * c.in, seed + 4);
    CancelEveryThirdRow(c, a, b, noise, scale, w);
    std::vector<float> sq((size_t)c.out), pt((size_t)c.r * c.out);
    for (int i = 0; i < c.out; ++i) {
        double sum = 0.0;
        for (int k = 0; k < c.in; ++k) sum += (double)w[(size_t)i * c.in + k] * w[(size_t)i * c.in + k];
        sq[(size_t)i] = (float)sum;
        for (int t = 0; t < c.r; ++t) {
            double p = 0.0;
            for (int k = 0; k < c.in; ++k) p += (double)w[(size_t)i * c.in + k] * a[(size_t)t * c.in + k];
            pt[(size_t)t * c.out + i] = (float)p;
        }
    }
    std::vector<float> want((size_t)c.out);
    ASSERT_EQ(LK_OK, lk_cpu_dora_weight_norm_pt(c.out, c.in, c.r, sq.data(), pt.data(), a.data(), b.data(), scale,
                                                want.data()));

    Buffer A(DType::F32, a), B(DType::F32, b), Sq(DType::F32, sq), Pt(DType::F32, pt);
    Buffer G = Buffer::Poisoned(DType::F32, (size_t)c.r * c.r), norm = Buffer::Poisoned(DType::F32, (size_t)c.out);
    ASSERT_TRUE(Launch("lk_lora_project_f32", parity::TileGrid(c.r, c.r), parity::kTileThreads, 0, A.data(), A.data(),
                       (float*)G.data(), c.r, c.in, c.r, 0.0f, 0ull));
    ASSERT_TRUE(Launch("lk_dora_weight_norm_pt_f32", {(uint32_t)parity::CeilDiv(c.out, kDoraThreads), 1},
                       kDoraThreads, 0, (const float*)Sq.data(), (const float*)Pt.data(), (const float*)G.data(),
                       (const float*)B.data(), (float*)norm.data(), c.out, c.r, scale));
    const std::vector<float> got = norm.values();
    for (int i = 0; i < c.out; ++i) {
        double mag2 = sq[(size_t)i];
        for (int t = 0; t < c.r; ++t) {
            mag2 += 2.0 * scale * std::fabs((double)pt[(size_t)t * c.out + i]) * std::fabs((double)b[(size_t)i * c.r + t]);
            for (int u = 0; u < c.r; ++u) {
                double g_abs = 0.0;
                for (int k = 0; k < c.in; ++k)
                    g_abs += std::fabs((double)a[(size_t)t * c.in + k]) * std::fabs((double)a[(size_t)u * c.in + k]);
                mag2 += (double)scale * scale * std::fabs((double)b[(size_t)i * c.r + t]) * g_abs *
                        std::fabs((double)b[(size_t)i * c.r + u]);
            }
        }
        const double E = 4.0 * (c.in + 2.0 * c.r + 2.0) * parity::kF32Unit * mag2;
        const double n_ref = want[(size_t)i];
        const double tol =
            std::min(std::sqrt(E), n_ref > 0 ? E / n_ref : INFINITY) + 2 * parity::kF32Unit * n_ref + parity::kAtol;
        ASSERT_TRUE(std::isfinite(got[(size_t)i]) && got[(size_t)i] >= 0.0f) << "row " << i;
        EXPECT_NEAR(got[(size_t)i], n_ref, tol) << "row " << i << " (E = " << E << ")";
    }
}

INSTANTIATE_TEST_SUITE_P(Shapes, DoraParity, ::testing::ValuesIn(AllCases()),
                         [](const auto& info) { return CaseName(info.param); });

std::vector<DoraCase> F32Cases() {
    std::vector<DoraCase> cases;
    for (const DoraCase& c : AllCases())
        if (c.dtype == DType::F32) cases.push_back(c);
    return cases;
}
INSTANTIATE_TEST_SUITE_P(Shapes, DoraTransposedNormParity, ::testing::ValuesIn(F32Cases()),
                         [](const auto& info) { return CaseName(info.param); });

// lk_dora_dropout_f32 with GpuBackend.DoraDropout's grid against lk_cpu_dora_dropout: both apply
// lk_dropout_factor (common.cuh) to the same element index with one multiply, so y (and with it the
// mask) must match bit for bit. n includes 1, primes and more elements than the grid has threads
// (8·4 blocks × 256), so the grid-stride loop wraps. A kept element is x·(1/(1 - p)), a dropped one 0.
class DoraDropoutParity : public ::testing::TestWithParam<int> {};

TEST_P(DoraDropoutParity, MatchesCpuBitExact) {
    const int n = GetParam();
    const unsigned long long seed = 0x9E3779B97F4A7C15ull;  // high bits set: the 64-bit argument passes whole
    for (float p : {0.0f, 0.1f, 0.5f, 0.9f}) {
        SCOPED_TRACE("p = " + std::to_string(p));
        const std::vector<float> xv = Positive((size_t)n, (uint32_t)n * 31u + 7u);
        std::vector<float> want((size_t)n);
        ASSERT_EQ(LK_OK, lk_cpu_dora_dropout(n, xv.data(), p, seed, want.data()));
        Buffer x(DType::F32, xv), y = Buffer::Poisoned(DType::F32, (size_t)n);
        ASSERT_TRUE(Launch("lk_dora_dropout_f32", ElementwiseGrid(n), kDoraThreads, 0, (const float*)x.data(),
                           (float*)y.data(), n, p, seed));
        const std::vector<float> got = y.values();
        ASSERT_EQ(0, std::memcmp(got.data(), want.data(), sizeof(float) * (size_t)n));
        const float keep = p > 0.0f ? 1.0f / (1.0f - p) : 1.0f;
        int dropped = 0;
        for (int i = 0; i < n; ++i) {
            if (got[(size_t)i] == 0.0f) {
                ++dropped;
            } else {
                ASSERT_EQ(got[(size_t)i], xv[(size_t)i] * keep) << "element " << i;
            }
        }
        if (p == 0.0f) EXPECT_EQ(dropped, 0);
        if (n >= 8193) {  // the drop count is Binomial(n, p): within 6 standard deviations
            const double sigma = std::sqrt(n * (double)p * (1.0 - p));
            EXPECT_NEAR(dropped, n * (double)p, 6.0 * sigma + 1.0);
        }
        // x may be y (the header's contract): in place gives the same bits.
        ASSERT_TRUE(Launch("lk_dora_dropout_f32", ElementwiseGrid(n), kDoraThreads, 0, (const float*)x.data(),
                           (float*)x.data(), n, p, seed));
        EXPECT_EQ(0, std::memcmp(x.values().data(), want.data(), sizeof(float) * (size_t)n));
    }
}

INSTANTIATE_TEST_SUITE_P(Sizes, DoraDropoutParity, ::testing::Values(1, 97, 256, 8193, 10007),
                         [](const auto& info) { return "n" + std::to_string(info.param); });

}  // namespace
