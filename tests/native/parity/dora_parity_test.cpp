// Every lk_dora_* entry point of kernels/dora.cu (fp32 and bf16) and lk_nf4_project_f32 under the
// SIMT emulator, launched with GpuBackend.Dora.cs's geometry and composed as the launcher composes
// them: the weight norm (row_sqnorm, project for P, G and H, weight_norm, row_norm on the rows it
// lists) against the long double ‖W0 + s·B·A‖_row and against lk_cpu_dora_weight_norm, on random
// rows and on rows that cancel to 1e-2, 1e-3, 1e-5, 1e-7 of ‖W0_i‖ and exactly (issue 14); QDoRA's
// norm (lk_nf4_project_f32, then the same kernels on a dequantized W for listed rows) against
// lk_cpu_dora_weight_norm_4bit; merge/unmerge against lk_cpu_dora_merge; the forward and backward
// against lk_cpu_dora_* on the same (dtype-rounded) inputs. The LoRA GEMMs' own paths (decode,
// tiled) are covered by lora_parity_test.cpp; here the forward uses project + tiled for every M.
// The training dropout (lk_dora_dropout_f32, bit-exact) is compared with lk_cpu_dora_dropout.
//
// Tolerances: parity::Near's formula (K = the longest fp32 chain behind an output; bound = the
// CPU computation on absolute values), plus, for bf16, one bf16 rounding (2^-8 relative) per
// intermediate the GPU stores in bf16 and the CPU keeps in fp32 (z before the column scale, dz
// before the LoRA backward): it errs by up to 2^-8·bound, i.e. as 2^15 extra chain steps would.
// Norm: dora_norm_cases.h's norm_bound, relative to the true norm (derived there); the GPU and CPU
// norms must each lie within it.
#include "dora_norm_cases.h"
#include "parity.h"

namespace {

using parity::Buffer;
using parity::DType;
using parity::Launch;
using parity::Near;
using dora_cases::CancelCase;
using dora_cases::CancelData;
using dora_cases::NormReference;
using dora_cases::norm_bound;
using dora_cases::reference_norm;

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

// What the launcher's weight norm did: the counts it reads back (rows recomputed, rows at 0).
struct NormCounts {
    int recomputed = -1, zero = -1;
};

// GpuBackend.DoraWeightNorm's sequence from P on: G = A Aᵀ and H = |A||A|ᵀ (lk_dora_project on A),
// weight_norm over out rows, then, if it listed any rows, row_norm on them reading `source` (W0
// itself, or QDoRA's dequantized W) with one block per listed row.
::testing::AssertionResult NormFromProjection(DType dtype, int out, int in, int r, std::vector<double>& P,
                                              Buffer& sqnorm, Buffer& source, Buffer& A, Buffer& B, float scale,
                                              Buffer& norm, NormCounts& counts) {
    std::vector<double> G((size_t)r * r, NAN), H((size_t)r * r, NAN);
    std::vector<int> rows((size_t)out, -1), count(2, 0);
    norm = Buffer::Poisoned(DType::F32, (size_t)out);
    const parity::Grid project_grid{(uint32_t)parity::CeilDiv(r, kDoraWarps), 1};
    const std::string project = parity::KernelName("lk_dora_project", dtype);
    ::testing::AssertionResult ok =
        Launch(project.c_str(), project_grid, kDoraThreads, 0, A.data(), A.data(), G.data(), r, in, r, 0);
    if (!ok) return ok;
    ok = Launch(project.c_str(), project_grid, kDoraThreads, 0, A.data(), A.data(), H.data(), r, in, r, 1);
    if (!ok) return ok;
    ok = Launch(parity::KernelName("lk_dora_weight_norm", dtype).c_str(),
                {(uint32_t)parity::CeilDiv(out, kDoraThreads), 1}, kDoraThreads, 0, (const float*)sqnorm.data(),
                (const double*)P.data(), (const double*)G.data(), (const double*)H.data(), B.data(),
                (float*)norm.data(), rows.data(), count.data(), out, in, r, scale);
    if (!ok) return ok;
    if (count[0] > 0) {
        ok = Launch(parity::KernelName("lk_dora_row_norm", source.dtype()).c_str(), {(uint32_t)count[0], 1},
                    kDoraThreads, 0, source.data(), A.data(), B.data(), (const int*)rows.data(), count.data(),
                    (float*)norm.data(), in, r, scale);
        if (!ok) return ok;
    }
    counts = {count[0], count[1]};
    return ::testing::AssertionSuccess();
}

// The launcher's dense weight norm: ‖w‖² (row_sqnorm), P = W0 Aᵀ (project), then the rest above.
::testing::AssertionResult GpuWeightNorm(DType dtype, int out, int in, int r, Buffer& W0, Buffer& A, Buffer& B,
                                         float scale, Buffer& norm, NormCounts& counts) {
    Buffer sq = Buffer::Poisoned(DType::F32, (size_t)out);
    std::vector<double> P((size_t)out * r, NAN);
    const parity::Grid grid{(uint32_t)parity::CeilDiv(out, kDoraWarps), 1};
    ::testing::AssertionResult ok = Launch(parity::KernelName("lk_dora_row_sqnorm", dtype).c_str(), grid,
                                           kDoraThreads, 0, W0.data(), (float*)sq.data(), out, in);
    if (!ok) return ok;
    ok = Launch(parity::KernelName("lk_dora_project", dtype).c_str(), grid, kDoraThreads, 0, W0.data(), A.data(),
                P.data(), out, in, r, 0);
    if (!ok) return ok;
    return NormFromProjection(dtype, out, in, r, P, sq, W0, A, B, scale, norm, counts);
}

// The CPU norm of the same (rounded) values, with its report.
std::vector<float> CpuWeightNorm(int out, int in, int r, const std::vector<float>& w0, const std::vector<float>& a,
                                 const std::vector<float>& b, float scale, lk_dora_norm_report& report) {
    std::vector<float> sq((size_t)out), norm((size_t)out);
    EXPECT_EQ(LK_OK, lk_cpu_dora_row_sqnorm(out, in, w0.data(), sq.data()));
    EXPECT_EQ(LK_OK, lk_cpu_dora_weight_norm(out, in, r, w0.data(), sq.data(), a.data(), b.data(), scale, norm.data(),
                                             &report));
    return norm;
}

// Every row within norm_bound of the long double norm, on the GPU and on the CPU.
::testing::AssertionResult NormsMatch(const std::vector<float>& gpu, const std::vector<float>& cpu,
                                      const NormReference& ref, int r) {
    std::ostringstream report;
    int failures = 0;
    for (size_t i = 0; i < gpu.size(); ++i) {
        const double bound = norm_bound(ref.norm[i], ref.terms[i], r);
        const double gpu_err = std::fabs(gpu[i] - ref.norm[i]), cpu_err = std::fabs(cpu[i] - ref.norm[i]);
        if (!(gpu_err <= bound && cpu_err <= bound)) {  // NaN fails
            if (failures++ < 8)
                report << "\n  row " << i << ": gpu " << gpu[i] << ", cpu " << cpu[i] << ", reference " << ref.norm[i]
                       << ", bound " << bound;
        }
    }
    if (failures > 0) return ::testing::AssertionFailure() << failures << " rows outside the bound:" << report.str();
    return ::testing::AssertionSuccess();
}

// Rows 0 (mod 3) of w become -s·B·A scaled by (1 + 1 % noise); row 0 exactly -s·B_0·A (before rounding to float).
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

// Random rows (B at 1/(4r) of full size: certified by the expansion, none recomputed), then
// rows 0 (mod 3) of W0 made -s·B_i·A (rounded to the dtype) plus 1 % noise, row 0 without noise
// (those are recomputed).
TEST_P(DoraParity, WeightNormMatchesMaterialisedNorm) {
    const DoraCase c = GetParam();
    const float scale = 1.25f;
    const uint32_t seed = (uint32_t)(c.out * 7919 + c.in * 31 + c.r);
    std::vector<float> b_values = parity::RandomValues((size_t)c.out * c.r, seed + 2);
    for (float& v : b_values) v *= 0.25f / (float)c.r;
    Buffer A(c.dtype, parity::RandomValues((size_t)c.r * c.in, seed + 1));
    Buffer B(c.dtype, b_values);
    const std::vector<float> a = A.values(), b = B.values();
    std::vector<float> w = parity::RandomValues((size_t)c.out * c.in, seed + 3);
    const std::vector<float> noise = parity::RandomValues((size_t)c.out * c.in, seed + 4);
    for (bool cancel : {false, true}) {
        SCOPED_TRACE(CaseName(c) + (cancel ? " near-cancelling rows" : " random rows"));
        if (cancel) CancelEveryThirdRow(c, a, b, noise, scale, w);
        Buffer W0(c.dtype, w);
        Buffer norm;
        NormCounts counts;
        ASSERT_TRUE(GpuWeightNorm(c.dtype, c.out, c.in, c.r, W0, A, B, scale, norm, counts));
        const std::vector<float> w0 = W0.values(), got = norm.values();
        lk_dora_norm_report cpu_report{};
        const std::vector<float> cpu = CpuWeightNorm(c.out, c.in, c.r, w0, a, b, scale, cpu_report);
        const NormReference ref = reference_norm(c.out, c.in, c.r, w0, a, b, scale);
        for (int i = 0; i < c.out; ++i) ASSERT_TRUE(std::isfinite(got[(size_t)i]) && got[(size_t)i] > 0.0f) << "row " << i;
        EXPECT_TRUE(NormsMatch(got, cpu, ref, c.r));
        EXPECT_EQ(counts.zero, 0);
        if (cancel) {
            EXPECT_GE(counts.recomputed, (c.out + 2) / 3) << "every cancelling row is recomputed";
        } else {
            EXPECT_EQ(counts.recomputed, 0) << "random rows with a small adapter are certified";
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

// lk_dora_merge (invert 0, then 1 on its result) against lk_cpu_dora_merge on the same values: both
// form each element in double and round it once, to fp32 (so they agree within one fp32 rounding
// of |want|: parity::Near with K = 1) or, for bf16 storage, to bf16 on the GPU (2^-8 more).
TEST_P(DoraParity, MergeMatchesCpuBothWays) {
    const DoraCase c = GetParam();
    const uint32_t seed = (uint32_t)(c.out * 17 + c.in);
    const float scale = 0.75f;
    Buffer W(c.dtype, parity::RandomValues((size_t)c.out * c.in, seed + 1));
    Buffer A(c.dtype, parity::RandomValues((size_t)c.r * c.in, seed + 4));
    Buffer B(c.dtype, parity::RandomValues((size_t)c.out * c.r, seed + 5));
    Buffer m(c.dtype, Positive((size_t)c.out, seed + 2));
    Buffer norm(DType::F32, Positive((size_t)c.out, seed + 3));
    const std::vector<float> mv = m.values(), nv = norm.values(), av = A.values(), bv = B.values();
    std::vector<float> want = W.values();
    Buffer got = W;
    for (int invert : {0, 1}) {
        SCOPED_TRACE(invert ? "unmerge" : "merge");
        ASSERT_EQ(LK_OK, lk_cpu_dora_merge(c.out, c.in, c.r, want.data(), av.data(), bv.data(), mv.data(), nv.data(),
                                           scale, invert));
        ASSERT_TRUE(Launch(parity::KernelName("lk_dora_merge", c.dtype).c_str(), ElementwiseGrid((int64_t)c.out * c.in),
                           kDoraThreads, 0, got.data(), A.data(), B.data(), m.data(), (const float*)norm.data(), c.out,
                           c.in, c.r, scale, invert));
        EXPECT_TRUE(Near(invert ? "unmerged" : "merged", got.values(), want, parity::Abs(want), 1,
                         c.dtype == DType::BF16 ? parity::kBf16Rounding : 0.0));
        want = got.values();  // unmerge the same (dtype-rounded) merged values on both sides
    }
}

// QDoRA's norm as GpuBackend.DoraWeightNormQuantized runs it: ‖deq(W)‖² once (lk_nf4_dequantize_f32
// into a temporary, lk_dora_row_sqnorm_f32), P = deq(W) Aᵀ by lk_nf4_project_f32, then the dense
// kernels, row_norm reading the dequantized W for the listed rows; against
// lk_cpu_dora_weight_norm_4bit and the long double norm of deq(W). Cancellation through A's row
// space: A_0 = deq(W)_0 and B_0 = (-1/s, 0, ...), so s·B_0·A = -deq(W)_0 exactly (s a power of two):
// n_0 = 0, a zero row; rows 3, 6, ... take B_i = (-(1 + 1e-3)·c_i, 0, ...) with c_i·A_0 deq(W)_i's
// projection on A_0 (large cross and quadratic terms that cancel their A_0 component). F32 only
// (QDoRA layers are F32); plain and nested statistics.
class DoraQuantizedNormParity : public ::testing::TestWithParam<DoraCase> {};

TEST_P(DoraQuantizedNormParity, MatchesCpu) {
    const DoraCase c = GetParam();
    const float scale = 2.0f;
    const int blocksize = 64;
    const int64_t n = (int64_t)c.out * c.in, nblocks = parity::CeilDiv(n, blocksize);
    const uint32_t seed = (uint32_t)(c.out * 104729 + c.in * 7 + c.r * 13);
    const std::vector<float> w = parity::RandomValues((size_t)n, seed + 3);
    for (bool nested : {false, true}) {
        SCOPED_TRACE(CaseName(c) + (nested ? " nested" : " plain"));
        std::vector<uint8_t> codes((size_t)((n + 1) / 2)), qabsmax((size_t)nblocks);
        std::vector<float> absmax((size_t)nblocks), absmax2((size_t)parity::CeilDiv(nblocks, 256));
        float offset = 0.0f;
        ASSERT_EQ(LK_OK, lk_cpu_quantize_4bit(LK_QUANT_NF4, n, blocksize, w.data(), codes.data(), absmax.data()));
        if (nested) {
            ASSERT_EQ(LK_OK, lk_cpu_double_quantize(nblocks, absmax.data(), qabsmax.data(), absmax2.data(), &offset));
        }
        const float* plain_absmax = nested ? nullptr : absmax.data();
        const uint8_t* nested_codes = nested ? qabsmax.data() : nullptr;
        const float* nested_absmax2 = nested ? absmax2.data() : nullptr;
        const lk_quant_stats stats{LK_QUANT_NF4, 0, blocksize, plain_absmax, nested_codes, nested_absmax2, offset, 0};
        std::vector<float> deq((size_t)n);
        ASSERT_EQ(LK_OK, lk_cpu_dequantize_4bit(n, codes.data(), &stats, deq.data()));
        std::vector<float> a = parity::RandomValues((size_t)c.r * c.in, seed + 1);
        std::vector<float> b = parity::RandomValues((size_t)c.out * c.r, seed + 2);
        for (int k = 0; k < c.in; ++k) a[(size_t)k] = deq[(size_t)k];  // A_0 = deq(W)_0
        double a0_norm2 = 0.0;
        for (int k = 0; k < c.in; ++k) a0_norm2 += (double)a[(size_t)k] * a[(size_t)k];
        for (int i = 0; i < c.out; i += 3) {
            double dot = 0.0;
            for (int k = 0; k < c.in; ++k) dot += (double)deq[(size_t)i * c.in + k] * a[(size_t)k];
            for (int t = 0; t < c.r; ++t) b[(size_t)i * c.r + t] = 0.0f;
            b[(size_t)i * c.r] = i == 0 ? -1.0f / scale : (float)(-(1.0 + 1e-3) * dot / (scale * a0_norm2));
        }

        // The CPU's QDoRA norm, and the reference, on deq(W).
        std::vector<float> sq((size_t)c.out), want((size_t)c.out);
        ASSERT_EQ(LK_OK, lk_cpu_dora_row_sqnorm(c.out, c.in, deq.data(), sq.data()));
        lk_dora_norm_report cpu_report{};
        ASSERT_EQ(LK_OK, lk_cpu_dora_weight_norm_4bit(c.out, c.in, c.r, codes.data(), &stats, sq.data(), a.data(),
                                                      b.data(), scale, want.data(), &cpu_report));
        const NormReference ref = reference_norm(c.out, c.in, c.r, deq, a, b, scale);
        EXPECT_EQ(ref.norm[0], 0.0);

        // The GPU's: deq(W) once for ‖deq(W)‖², P from the codes, deq(W) again for the listed rows.
        Buffer dense = Buffer::Poisoned(DType::F32, (size_t)n), Sq = Buffer::Poisoned(DType::F32, (size_t)c.out);
        ASSERT_TRUE(Launch("lk_nf4_dequantize_f32", ElementwiseGrid((n + 1) / 2), parity::kElementwiseThreads, 0,
                           (const unsigned char*)codes.data(), plain_absmax, (const unsigned char*)nested_codes,
                           nested_absmax2, offset, (float*)dense.data(), (long long)n, blocksize, (int)LK_QUANT_NF4));
        EXPECT_EQ(dense.values(), deq) << "the GPU dequantizes as the CPU";
        const parity::Grid grid{(uint32_t)parity::CeilDiv(c.out, kDoraWarps), 1};
        ASSERT_TRUE(Launch("lk_dora_row_sqnorm_f32", grid, kDoraThreads, 0, (const float*)dense.data(),
                           (float*)Sq.data(), c.out, c.in));
        std::vector<double> P((size_t)c.out * c.r, NAN);
        ASSERT_TRUE(Launch("lk_nf4_project_f32", grid, kDoraThreads, 0, (const unsigned char*)codes.data(), plain_absmax,
                           (const unsigned char*)nested_codes, nested_absmax2, offset, (const float*)a.data(), P.data(),
                           c.out, c.in, c.r, blocksize, (int)LK_QUANT_NF4));
        Buffer A(DType::F32, a), B(DType::F32, b), norm;
        NormCounts counts;
        ASSERT_TRUE(NormFromProjection(DType::F32, c.out, c.in, c.r, P, Sq, dense, A, B, scale, norm, counts));
        const std::vector<float> got = norm.values();
        EXPECT_TRUE(NormsMatch(got, want, ref, c.r));
        EXPECT_EQ(got[0], 0.0f);
        EXPECT_EQ(counts.zero, 1);
        EXPECT_EQ(cpu_report.zero_rows, 1);
        EXPECT_GE(counts.recomputed, 1);
    }
}

// The cases under the emulator (dora_norm_cases.h: rows cancelling to 1e-3, 1e-5, 1e-7 of
// ‖W0_i‖ and exactly, fp32 and bf16 storage, r = 16 and 5), the bf16 ones through the bf16 kernels:
// every row within norm_bound of the long double norm on the GPU and on the CPU, the cancelling rows
// within the bar (relative error <= 1e-3), exact rows exactly 0 and counted.
class DoraCancellingParity : public ::testing::TestWithParam<CancelCase> {};

TEST_P(DoraCancellingParity, GpuAndCpuNormsAreAccurate) {
    const CancelCase c = GetParam();
    const DType dtype = c.storage == dora_cases::Storage::F32 ? DType::F32 : DType::BF16;
    for (int r : {16, 5})
        for (bool structured : {false, true}) {
            if (!structured && dtype == DType::BF16) continue;  // bf16 W0 rounding caps the generic depth at ~2⁻⁹
            const CancelData d = dora_cases::cancel_data(c, r, structured);
            SCOPED_TRACE(dora_cases::cancel_name(c) + "_r" + std::to_string(r) + (structured ? " structured" : " generic"));
            const int out = (int)d.out, in = (int)d.in;
            Buffer W0(dtype, d.W0), A(dtype, d.A), B(dtype, d.B), norm;
            NormCounts counts;
            ASSERT_TRUE(GpuWeightNorm(dtype, out, in, r, W0, A, B, d.scale, norm, counts));
            lk_dora_norm_report cpu_report{};
            const std::vector<float> got = norm.values(),
                                     cpu = CpuWeightNorm(out, in, r, d.W0, d.A, d.B, d.scale, cpu_report);
            const NormReference ref = reference_norm(out, in, r, d.W0, d.A, d.B, d.scale);
            EXPECT_TRUE(NormsMatch(got, cpu, ref, r));
            const bool exact = c.depth == 0.0 && structured;
            double worst_gpu = 0.0, worst_cpu = 0.0;
            for (int i = 0; i < out; i += 2) {
                if (exact) {
                    EXPECT_EQ(got[(size_t)i], 0.0f) << "row " << i;
                    continue;
                }
                const double n_ref = ref.norm[(size_t)i];
                ASSERT_GT(n_ref, 0.0) << "row " << i;
                worst_gpu = std::max(worst_gpu, std::fabs(got[(size_t)i] - n_ref) / n_ref);
                worst_cpu = std::max(worst_cpu, std::fabs(cpu[(size_t)i] - n_ref) / n_ref);
            }
            EXPECT_LE(worst_gpu, 1e-3) << "the issue's bar";
            EXPECT_LE(worst_cpu, 1e-3) << "the issue's bar";
            EXPECT_EQ(counts.zero, exact ? out / 2 : 0);
            EXPECT_EQ(cpu_report.zero_rows, counts.zero);
            EXPECT_GE(counts.recomputed, out / 2) << "the cancelling rows take the direct path";
            std::printf("[ norm ] simt %s r=%d %s: worst relative error %.3g (cpu %.3g) on rows with n/|w| <= %.3g\n",
                        dora_cases::cancel_name(c).c_str(), r, structured ? "structured" : "generic", worst_gpu,
                        worst_cpu, dora_cases::reached_depth(d, ref));
        }
}

INSTANTIATE_TEST_SUITE_P(Depths, DoraCancellingParity, ::testing::ValuesIn(dora_cases::all_cancel_cases()),
                         [](const auto& info) { return dora_cases::cancel_name(info.param); });

INSTANTIATE_TEST_SUITE_P(Shapes, DoraParity, ::testing::ValuesIn(AllCases()),
                         [](const auto& info) { return CaseName(info.param); });

std::vector<DoraCase> F32Cases() {
    std::vector<DoraCase> cases;
    for (const DoraCase& c : AllCases())
        if (c.dtype == DType::F32) cases.push_back(c);
    return cases;
}
INSTANTIATE_TEST_SUITE_P(Shapes, DoraQuantizedNormParity, ::testing::ValuesIn(F32Cases()),
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
        if (p == 0.0f) {
            EXPECT_EQ(dropped, 0);
        }
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
