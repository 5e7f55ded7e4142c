// lk_cpu_dora_* against naive references written here: the weight norm against the materialised
// ‖W0 + s·B·A‖_row in long double, on random rows and on rows that cancel to 1e-2, 1e-3, 1e-5, 1e-7
// of ‖W0_i‖ and exactly, fp32 and bf16-rounded inputs (issue 14); QDoRA's norm over a 4-bit base;
// the forward and backward against y = (m/n) ⊙ (x W0ᵀ + s·x Aᵀ Bᵀ) + bias and its gradient with n
// detached; merge and unmerge (in double, also on cancelling rows); and the pieces the dropout path
// composes (the column-scale and dm/dz passes alone, the hashed dropout mask).
//
// Shapes: out/in/r from 1 to 1030 (in = 1030 passes every ISA's kc block and the norm projection's
// 1024-float chunk), primes and non-multiples of every micro-tile; M in {1, 33, 130}.
//
// Tolerances (u = 2^-24; "mag" = the sum of |terms| of the exact expression, evaluated by running
// the same reference on absolute values):
//   forward/backward element: 1e-6 + 4·(L + 2)·u·mag, L the longest fp32 reduction chain feeding it.
//   norm: relative to the true norm, norm_bound below (the kernel's certificate, derived there).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "dora_norm_cases.h"
#include "reference.h"

namespace cpu_test {
namespace {

using dora_cases::CancelCase;
using dora_cases::CancelData;
using dora_cases::NormReference;
using dora_cases::Storage;
using dora_cases::cancel_data;
using dora_cases::cancel_name;
using dora_cases::norm_bound;
using dora_cases::reference_norm;

constexpr double kAtol = 1e-6;
double rtol(int64_t longest_reduction) { return 4.0 * (double)(longest_reduction + 2) * kUnitRoundoff; }
const float kNaN = std::numeric_limits<float>::quiet_NaN();

std::vector<float> absolute(const std::vector<float>& v) {
    std::vector<float> a(v.size());
    for (size_t i = 0; i < v.size(); ++i) a[i] = std::fabs(v[i]);
    return a;
}

std::vector<float> positive(Rng& rng, int64_t n) {
    std::vector<float> v((size_t)n);
    for (float& e : v) e = std::fabs(rng.nonzero()) + 0.5f;
    return v;
}

struct NormCase {
    int64_t out, in, r;
};

std::string norm_name(const NormCase& c) {
    return "out" + std::to_string(c.out) + "_in" + std::to_string(c.in) + "_r" + std::to_string(c.r);
}

class DoraWeightNorm : public ::testing::TestWithParam<NormCase> {};

// Three passes over the same A: (1) W0 random and B scaled by 1/(4r), so |s|·Σ_a |B_ia·A_ak| <= 0.44
// while |w_ik| >= 0.25 (an adapter term below W0's, as in training): nothing cancels and the expansion must certify every row, recomputing none
// (the fast path is the common path); (2) B at full size, so s·B_i·A dominates w_i about 4-fold:
// only accuracy is required (where the fp32 partial sums' worst case cannot be certified against
// τ the rows are recomputed); (3) rows 0 (mod 3) of W0 replaced by -s·B_i·A·(1 + 1e-2·noise), row
// 0 without noise (cancelling to W0's rounding): those must take the direct path.
TEST_P(DoraWeightNorm, MatchesMaterialisedNormIncludingCancellation) {
    const NormCase c = GetParam();
    const int64_t out = c.out, in = c.in, r = c.r;
    const float scale = 1.75f;
    Rng rng(77 + (uint64_t)(out * 131 + in * 7 + r));
    std::vector<float> W0 = rng.vector(out * in);
    const std::vector<float> A = rng.vector(r * in), B_full = rng.vector(out * r);
    std::vector<float> B_small(B_full);
    for (float& b : B_small) b *= 0.25f / (float)r;
    for (int pass = 0; pass < 3; ++pass) {
        const bool cancel = pass == 2;
        const std::vector<float>& B = pass == 0 ? B_small : B_full;
        SCOPED_TRACE(norm_name(c) + (pass == 0 ? " small adapter" : pass == 1 ? " dominant adapter" : " cancelling rows"));
        if (cancel)
            for (int64_t i = 0; i < out; i += 3) {
                const double delta = i == 0 ? 0.0 : 1e-2;
                for (int64_t k = 0; k < in; ++k) {
                    double ba = 0.0;
                    for (int64_t a = 0; a < r; ++a) ba += (double)B[(size_t)(i * r + a)] * A[(size_t)(a * in + k)];
                    W0[(size_t)(i * in + k)] = (float)(-scale * ba * (1.0 + delta * rng.nonzero()));
                }
            }
        std::vector<float> sq((size_t)out, kNaN), norm((size_t)out, kNaN);
        ASSERT_EQ(lk_cpu_dora_row_sqnorm(out, in, W0.data(), sq.data()), LK_OK) << last_error();
        lk_dora_norm_report report{-1, -1};
        ASSERT_EQ(lk_cpu_dora_weight_norm(out, in, r, W0.data(), sq.data(), A.data(), B.data(), scale, norm.data(),
                                          &report),
                  LK_OK)
            << last_error();
        const NormReference ref = reference_norm(out, in, r, W0, A, B, scale);
        for (int64_t i = 0; i < out; ++i) {
            double sq_ref = 0.0;
            for (int64_t k = 0; k < in; ++k) sq_ref += (double)W0[(size_t)(i * in + k)] * W0[(size_t)(i * in + k)];
            EXPECT_NEAR(sq[(size_t)i], sq_ref, 1e-6 + 2 * kUnitRoundoff * sq_ref) << "row " << i;
            const double n_ref = ref.norm[(size_t)i];
            ASSERT_TRUE(std::isfinite(norm[(size_t)i]) && norm[(size_t)i] > 0.0f) << "row " << i;
            EXPECT_NEAR(norm[(size_t)i], n_ref, norm_bound(n_ref, ref.terms[(size_t)i], r)) << "row " << i;
        }
        EXPECT_EQ(report.zero_rows, 0);
        if (pass == 0) {
            EXPECT_EQ(report.recomputed_rows, 0) << "rows with a small adapter are certified";
        }
        if (cancel) {
            EXPECT_GE(report.recomputed_rows, (out + 2) / 3) << "every cancelling row is recomputed";
        }
    }
}

INSTANTIATE_TEST_SUITE_P(Shapes, DoraWeightNorm,
                         ::testing::Values(NormCase{1, 1, 1}, NormCase{7, 33, 3}, NormCase{67, 130, 16},
                                           NormCase{130, 1030, 8}, NormCase{37, 257, 64}),
                         [](const auto& info) { return norm_name(info.param); });

class DoraCancellingRows : public ::testing::TestWithParam<CancelCase> {};

// The norm of every row against the long double norm of the same (dtype-rounded) inputs, within
// norm_bound; on cancelling rows also the bar (relative error <= 1e-3, fp32 and bf16
// inputs alike) and, for exact cancellation, exactly 0 and counted as a zero row. Then the forward
// (m = ‖W0_i‖ as at initialisation, the exact rows left out: m/0 is refused upstream) stays finite.
TEST_P(DoraCancellingRows, NormIsAccurateRelativeToTheTrueNorm) {
    const CancelCase c = GetParam();
    for (int64_t r : {16, 5})
        for (bool structured : {false, true}) {
            if (!structured && c.storage == Storage::BF16) continue;  // bf16 W0 rounding caps the generic depth at ~2⁻⁹
            const CancelData d = cancel_data(c, r, structured);
            SCOPED_TRACE(cancel_name(c) + "_r" + std::to_string(r) + (structured ? " structured" : " generic"));
            const int64_t out = d.out, in = d.in;
            std::vector<float> sq((size_t)out), norm((size_t)out, kNaN);
            ASSERT_EQ(lk_cpu_dora_row_sqnorm(out, in, d.W0.data(), sq.data()), LK_OK) << last_error();
            lk_dora_norm_report report{-1, -1};
            ASSERT_EQ(lk_cpu_dora_weight_norm(out, in, r, d.W0.data(), sq.data(), d.A.data(), d.B.data(), d.scale,
                                              norm.data(), &report),
                      LK_OK)
                << last_error();
            const NormReference ref = reference_norm(out, in, r, d.W0, d.A, d.B, d.scale);
            double worst = 0.0;
            int64_t zeros = 0;
            for (int64_t i = 0; i < out; ++i) {
                const double n_ref = ref.norm[(size_t)i], got = norm[(size_t)i];
                ASSERT_TRUE(std::isfinite(got)) << "row " << i;
                EXPECT_NEAR(got, n_ref, norm_bound(n_ref, ref.terms[(size_t)i], r)) << "row " << i;
                if (i % 2 != 0) continue;
                if (c.depth == 0.0 && structured) {
                    EXPECT_EQ(n_ref, 0.0) << "row " << i << ": the construction cancels exactly";
                    EXPECT_EQ(got, 0.0) << "row " << i;
                    ++zeros;
                } else {
                    ASSERT_GT(n_ref, 0.0) << "row " << i;
                    const double relative = std::fabs(got - n_ref) / n_ref;
                    worst = std::max(worst, relative);
                    EXPECT_LE(relative, 1e-3) << "row " << i << " (the issue's bar)";
                }
            }
            // Deep enough: the cancelling rows reach the aimed depth (generic: within W0's rounding).
            const double depth = dora_cases::reached_depth(d, ref);
            if (c.depth > 0.0) {
                EXPECT_LE(depth, structured ? 1.01 * c.depth : c.depth + 1e-7);
            }
            EXPECT_EQ(report.zero_rows, zeros);
            EXPECT_GE(report.recomputed_rows, out / 2) << "the cancelling rows take the direct path";
            std::printf("[ norm ] cpu %s r=%lld %s: worst relative error %.3g on rows with n/|w| <= %.3g\n",
                        cancel_name(c).c_str(), (long long)r, structured ? "structured" : "generic", worst, depth);
            if (zeros > 0) continue;

            // The forward on these norms, m_i = ‖W0_i‖: finite everywhere (m/n is large, not infinite).
            const int64_t M = 3;
            Rng rng(91);
            const std::vector<float> x = rng.vector(M * in);
            std::vector<float> m((size_t)out), y((size_t)(M * out), kNaN), u((size_t)(M * r));
            for (int64_t i = 0; i < out; ++i) m[(size_t)i] = std::sqrt(sq[(size_t)i]);
            ASSERT_EQ(lk_cpu_dora_forward(M, in, out, r, x.data(), d.W0.data(), nullptr, d.A.data(), d.B.data(),
                                          d.scale, m.data(), norm.data(), y.data(), u.data(), nullptr),
                      LK_OK)
                << last_error();
            for (size_t e = 0; e < y.size(); ++e) ASSERT_TRUE(std::isfinite(y[e])) << "y[" << e << "]";
        }
}

INSTANTIATE_TEST_SUITE_P(Depths, DoraCancellingRows, ::testing::ValuesIn(dora_cases::all_cancel_cases()),
                         [](const auto& info) { return cancel_name(info.param); });

// ---- forward and backward --------------------------------------------------------------------

struct Case {
    int64_t M, in, out, r;
};

std::string case_name(const Case& c) {
    return "M" + std::to_string(c.M) + "_in" + std::to_string(c.in) + "_out" + std::to_string(c.out) + "_r" +
           std::to_string(c.r);
}

// Everything the double reference of one DoRA step produces.
struct Reference {
    std::vector<double> u, z, y, dm, dx, dA, dB;
};

// y = g ⊙ (x W0ᵀ + s·(x Aᵀ) Bᵀ) + bias, g = m / n; with dz = dy ⊙ g:
// dm = Σ_t dy ⊙ z / n, dx = dz W0 + s·(dz B) A, dA = s·(dz B)ᵀ x, dB = s·dzᵀ (x Aᵀ).
Reference reference(const Case& c, const std::vector<float>& x, const std::vector<float>& W0,
                    const std::vector<float>* bias, const std::vector<float>& A, const std::vector<float>& B,
                    double s, const std::vector<float>& m, const std::vector<float>& n,
                    const std::vector<float>& dy) {
    const int64_t M = c.M, in = c.in, out = c.out, r = c.r;
    Reference ref{std::vector<double>((size_t)(M * r)),   std::vector<double>((size_t)(M * out)),
                  std::vector<double>((size_t)(M * out)), std::vector<double>((size_t)out),
                  std::vector<double>((size_t)(M * in)),  std::vector<double>((size_t)(r * in)),
                  std::vector<double>((size_t)(out * r))};
    for (int64_t t = 0; t < M; ++t)
        for (int64_t a = 0; a < r; ++a) {
            double sum = 0.0;
            for (int64_t k = 0; k < in; ++k) sum += (double)x[(size_t)(t * in + k)] * A[(size_t)(a * in + k)];
            ref.u[(size_t)(t * r + a)] = sum;
        }
    std::vector<double> dz((size_t)(M * out)), du((size_t)(M * r));
    for (int64_t t = 0; t < M; ++t)
        for (int64_t j = 0; j < out; ++j) {
            double sum = 0.0;
            for (int64_t k = 0; k < in; ++k) sum += (double)x[(size_t)(t * in + k)] * W0[(size_t)(j * in + k)];
            for (int64_t a = 0; a < r; ++a) sum += s * ref.u[(size_t)(t * r + a)] * B[(size_t)(j * r + a)];
            const size_t e = (size_t)(t * out + j);
            const double g = (double)m[(size_t)j] / n[(size_t)j];
            ref.z[e] = sum;
            ref.y[e] = g * sum + (bias ? (double)(*bias)[(size_t)j] : 0.0);
            ref.dm[(size_t)j] += (double)dy[e] * sum / n[(size_t)j];
            dz[e] = (double)dy[e] * g;
        }
    for (int64_t t = 0; t < M; ++t)
        for (int64_t a = 0; a < r; ++a) {
            double sum = 0.0;
            for (int64_t j = 0; j < out; ++j) sum += dz[(size_t)(t * out + j)] * B[(size_t)(j * r + a)];
            du[(size_t)(t * r + a)] = s * sum;
        }
    for (int64_t t = 0; t < M; ++t)
        for (int64_t k = 0; k < in; ++k) {
            double sum = 0.0;
            for (int64_t j = 0; j < out; ++j) sum += dz[(size_t)(t * out + j)] * W0[(size_t)(j * in + k)];
            for (int64_t a = 0; a < r; ++a) sum += du[(size_t)(t * r + a)] * A[(size_t)(a * in + k)];
            ref.dx[(size_t)(t * in + k)] = sum;
        }
    for (int64_t a = 0; a < r; ++a)
        for (int64_t k = 0; k < in; ++k) {
            double sum = 0.0;
            for (int64_t t = 0; t < M; ++t) sum += du[(size_t)(t * r + a)] * x[(size_t)(t * in + k)];
            ref.dA[(size_t)(a * in + k)] = sum;
        }
    for (int64_t j = 0; j < out; ++j)
        for (int64_t a = 0; a < r; ++a) {
            double sum = 0.0;
            for (int64_t t = 0; t < M; ++t) sum += dz[(size_t)(t * out + j)] * ref.u[(size_t)(t * r + a)];
            ref.dB[(size_t)(j * r + a)] = s * sum;
        }
    return ref;
}

class DoraStep : public ::testing::TestWithParam<Case> {};

TEST_P(DoraStep, ForwardAndBackwardMatchReference) {
    const Case c = GetParam();
    const int64_t M = c.M, in = c.in, out = c.out, r = c.r;
    const float scale = 0.625f;
    Rng rng(4242 + (uint64_t)(M + in + out + r));
    const std::vector<float> x = rng.vector(M * in), W0 = rng.vector(out * in), bias = rng.vector(out),
                             A = rng.vector(r * in), B = rng.vector(out * r), dy = rng.vector(M * out);
    // The forward takes n as given (the weight norm is tested above): any positive values do.
    const std::vector<float> m = positive(rng, out), n = positive(rng, out);
    const std::vector<float> x_abs = absolute(x), W0_abs = absolute(W0), bias_abs = absolute(bias),
                             A_abs = absolute(A), B_abs = absolute(B), dy_abs = absolute(dy);
    for (bool with_bias : {false, true}) {
        SCOPED_TRACE(case_name(c) + (with_bias ? " bias" : " no-bias"));
        const Reference ref = reference(c, x, W0, with_bias ? &bias : nullptr, A, B, scale, m, n, dy);
        const Reference mag = reference(c, x_abs, W0_abs, with_bias ? &bias_abs : nullptr, A_abs, B_abs, scale, m, n,
                                        dy_abs);
        std::vector<float> y((size_t)(M * out), kNaN), u((size_t)(M * r), kNaN), z((size_t)(M * out), kNaN);
        ASSERT_EQ(lk_cpu_dora_forward(M, in, out, r, x.data(), W0.data(), with_bias ? bias.data() : nullptr,
                                      A.data(), B.data(), scale, m.data(), n.data(), y.data(), u.data(), z.data()),
                  LK_OK)
            << last_error();
        EXPECT_TRUE(all_near(u.data(), r, M, r, ref.u, mag.u, kAtol, rtol(in)));
        EXPECT_TRUE(all_near(z.data(), out, M, out, ref.z, mag.z, kAtol, rtol(in + r)));
        EXPECT_TRUE(all_near(y.data(), out, M, out, ref.y, mag.y, kAtol, rtol(in + r + 1)));

        // Inference form: z not kept, y identical.
        std::vector<float> y_only((size_t)(M * out), kNaN);
        ASSERT_EQ(lk_cpu_dora_forward(M, in, out, r, x.data(), W0.data(), with_bias ? bias.data() : nullptr,
                                      A.data(), B.data(), scale, m.data(), n.data(), y_only.data(), u.data(), nullptr),
                  LK_OK)
            << last_error();
        EXPECT_EQ(y_only, y);

        // The backward from the kernel's own u and z (their errors are inside the forward bounds).
        std::vector<float> dx((size_t)(M * in), kNaN), dA((size_t)(r * in), kNaN), dB((size_t)(out * r), kNaN),
            dm((size_t)out, kNaN);
        ASSERT_EQ(lk_cpu_dora_backward(M, in, out, r, x.data(), W0.data(), A.data(), B.data(), u.data(), z.data(),
                                       dy.data(), scale, m.data(), n.data(), dx.data(), dA.data(), dB.data(), dm.data()),
                  LK_OK)
            << last_error();
        // dm sums M products of dy and z (z carrying its forward error, L = in + r).
        EXPECT_TRUE(all_near(dm.data(), 1, out, 1, ref.dm, mag.dm, kAtol, rtol(M + in + r)));
        EXPECT_TRUE(all_near(dx.data(), in, M, in, ref.dx, mag.dx, kAtol, rtol(out + r + 2)));
        EXPECT_TRUE(all_near(dA.data(), in, r, in, ref.dA, mag.dA, kAtol, rtol(M + out + 2)));
        EXPECT_TRUE(all_near(dB.data(), r, out, r, ref.dB, mag.dB, kAtol, rtol(M + in + 2)));

        // Only dm requested: the LoRA gradients are neither needed nor written.
        std::vector<float> dm_only((size_t)out, kNaN);
        ASSERT_EQ(lk_cpu_dora_backward(M, in, out, r, nullptr, nullptr, nullptr, nullptr, nullptr, z.data(),
                                       dy.data(), scale, nullptr, n.data(), nullptr, nullptr, nullptr, dm_only.data()),
                  LK_OK)
            << last_error();
        EXPECT_EQ(dm_only, dm);
    }
}

INSTANTIATE_TEST_SUITE_P(Shapes, DoraStep,
                         ::testing::Values(Case{1, 1, 1, 1}, Case{1, 67, 33, 4}, Case{33, 130, 67, 16},
                                           Case{130, 67, 300, 8}, Case{7, 1030, 5, 3}),
                         [](const auto& info) { return case_name(info.param); });

// ---- merge and unmerge ------------------------------------------------------------------------

// Merge W_i <- (m_i/n_i)·(W0_i + s·B_i·A) and unmerge back, on random rows and on rows cancelling to
// 1e-5 (generic construction), where W0_i + s·B_i·A is tiny and m_i/n_i ~1e5 amplifies any error
// in it: merging in fp32 (W0 + s·B·A rounded, then scaled) would err by ~u·|W0|·m/n, here ~1 relative.
// Bounds: merged elements are (m/n)·v_k with v_k in double ((r + 2)·2⁻⁵³·μ_k) and one fp32
// rounding of the result: |W - ref| <= u·|ref| + (m/n)·(r + 2)·2⁻⁵²·μ_k + the factor's own
// rounding (2 fp32 inputs, 2⁻⁵² in double: inside u·|ref|). Unmerge: W·(n/m) errs by u·|v_k|
// (W's rounding, scaled back), minus s·B·A in double, one rounding: |W0 - W0_orig| <= u·|W0_orig| +
// u·|v_k| + (r + 3)·2⁻⁵²·μ_k.
TEST(DoraMerge, MergesCancellingRowsInDoubleAndUnmergesBack_out10_in1030) {
    for (int64_t r : {16, 5}) {
        SCOPED_TRACE("r" + std::to_string(r));
        const CancelData d = cancel_data(CancelCase{Storage::F32, 1e-5}, r, false);
        const int64_t out = d.out, in = d.in;
        std::vector<float> sq((size_t)out), norm((size_t)out);
        ASSERT_EQ(lk_cpu_dora_row_sqnorm(out, in, d.W0.data(), sq.data()), LK_OK) << last_error();
        ASSERT_EQ(lk_cpu_dora_weight_norm(out, in, r, d.W0.data(), sq.data(), d.A.data(), d.B.data(), d.scale,
                                          norm.data(), nullptr),
                  LK_OK)
            << last_error();
        std::vector<float> m((size_t)out);
        for (int64_t i = 0; i < out; ++i) m[(size_t)i] = std::sqrt(sq[(size_t)i]) * (i % 3 == 0 ? -0.5f : 1.5f);
        std::vector<float> W = d.W0;
        ASSERT_EQ(lk_cpu_dora_merge(out, in, r, W.data(), d.A.data(), d.B.data(), m.data(), norm.data(), d.scale, 0),
                  LK_OK)
            << last_error();
        double worst_merged = 0.0;
        for (int64_t i = 0; i < out; ++i) {
            const double g = (double)m[(size_t)i] / norm[(size_t)i];
            double row_norm2 = 0.0;
            for (int64_t k = 0; k < in; ++k) {
                long double v = d.W0[(size_t)(i * in + k)], mu = std::fabs(v);
                for (int64_t a = 0; a < r; ++a) {
                    const long double p = (long double)d.scale * d.B[(size_t)(i * r + a)] * d.A[(size_t)(a * in + k)];
                    v += p;
                    mu += std::fabs(p);
                }
                const double ref = (double)(g * v), got = W[(size_t)(i * in + k)];
                row_norm2 += got * got;
                EXPECT_NEAR(got, ref, kUnitRoundoff * std::fabs(ref) + std::fabs(g) * (double)(r + 2) * 0x1p-52 * (double)mu)
                    << "merged [" << i << ", " << k << "]";
            }
            // The merged row's norm is |m_i| (up to the norm's certified error): the direction is right.
            worst_merged = std::max(worst_merged, std::fabs(std::sqrt(row_norm2) - std::fabs(m[(size_t)i])) / std::fabs(m[(size_t)i]));
        }
        EXPECT_LE(worst_merged, LK_DORA_NORM_TOLERANCE + 1e-6) << "‖merged row‖ = |m|";
        ASSERT_EQ(lk_cpu_dora_merge(out, in, r, W.data(), d.A.data(), d.B.data(), m.data(), norm.data(), d.scale, 1),
                  LK_OK)
            << last_error();
        for (int64_t i = 0; i < out; ++i)
            for (int64_t k = 0; k < in; ++k) {
                const double w0 = d.W0[(size_t)(i * in + k)];
                double v = std::fabs(w0), mu = std::fabs(w0);
                long double exact = w0;
                for (int64_t a = 0; a < r; ++a) {
                    const long double p = (long double)d.scale * d.B[(size_t)(i * r + a)] * d.A[(size_t)(a * in + k)];
                    exact += p;
                    mu += std::fabs((double)p);
                }
                v = std::fabs((double)exact);
                EXPECT_NEAR(W[(size_t)(i * in + k)], w0,
                            kUnitRoundoff * (std::fabs(w0) + v) + (double)(r + 3) * 0x1p-52 * mu)
                    << "unmerged [" << i << ", " << k << "]";
            }
    }
    // A zero factor could not be unmerged: refused, naming the row, W untouched.
    float W[2] = {1, 2}, A[2] = {1, 1}, B[1] = {1}, m[1] = {0}, n[1] = {1};
    EXPECT_EQ(lk_cpu_dora_merge(1, 2, 1, W, A, B, m, n, 1.0f, 0), LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("row 0"), std::string::npos) << last_error();
    m[0] = 1;
    n[0] = 0;
    EXPECT_EQ(lk_cpu_dora_merge(1, 2, 1, W, A, B, m, n, 1.0f, 1), LK_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(W[0], 1.0f);
    EXPECT_EQ(W[1], 2.0f);
}

// ---- arguments -------------------------------------------------------------------------------

TEST(DoraArguments, BadArgumentsAreRejectedWithTheirName) {
    float v[4] = {1, 2, 3, 4};
    EXPECT_EQ(lk_cpu_dora_weight_norm(1, 1, 0, v, v, v, v, 1.0f, v, nullptr), LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("r = 0"), std::string::npos) << last_error();
    EXPECT_EQ(lk_cpu_dora_weight_norm(1, 1, 1, v, v, v, v, INFINITY, v, nullptr), LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("scale"), std::string::npos) << last_error();
    EXPECT_EQ(lk_cpu_dora_forward(1, 1, 1, 1, v, v, nullptr, v, v, 1.0f, v, nullptr, v, v, v),
              LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("norm is NULL"), std::string::npos) << last_error();
    EXPECT_EQ(lk_cpu_dora_backward(1, 1, 1, 1, v, v, v, v, v, nullptr, v, 1.0f, v, v, nullptr, nullptr, nullptr, v),
              LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("z is NULL"), std::string::npos) << last_error();
    EXPECT_EQ(lk_cpu_dora_row_sqnorm(-1, 1, v, v), LK_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(lk_cpu_dora_merge(1, 1, 1, v, v, v, v, v, 1.0f, 2), LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("invert = 2"), std::string::npos) << last_error();
}

// ---- the pieces QDoRA and the dropout path compose ---------------------------------------------

// QDoRA's norm over a 4-bit W: against the long double norm of deq(W) (lk_cpu_dequantize_4bit)
// with norm_bound, and rows made to cancel through A's row space: A_0 = deq(W)_0 and
// B_0 = (-1/s, 0, 0), so s·B_0·A = -deq(W)_0 exactly (s a power of two): n_0 = 0, counted as a zero
// row; A_1 = deq(W)_2 and B_2 = (0, -(1 + 2⁻¹²)/s, 0): n_2 = 2⁻¹²·‖deq(W)_2‖. The other rows are random.
// in = 96 is not a multiple of the blocksize (64): blocks straddle rows, as decode_range allows.
TEST(DoraPieces, WeightNormOverA4BitBase_out9_in96_r3) {
    const int64_t out = 9, in = 96, r = 3, blocksize = 64, n = out * in;
    const float s = 2.0f;
    Rng rng(21);
    const std::vector<float> w = rng.vector(n);
    std::vector<uint8_t> codes((size_t)((n + 1) / 2));
    std::vector<float> absmax((size_t)((n + blocksize - 1) / blocksize)), deq((size_t)n);
    ASSERT_EQ(lk_cpu_quantize_4bit(LK_QUANT_NF4, n, blocksize, w.data(), codes.data(), absmax.data()), LK_OK)
        << last_error();
    const lk_quant_stats stats{LK_QUANT_NF4, 0, blocksize, absmax.data(), nullptr, nullptr, 0.0f, 0};
    ASSERT_EQ(lk_cpu_dequantize_4bit(n, codes.data(), &stats, deq.data()), LK_OK) << last_error();
    std::vector<float> A = rng.vector(r * in), B = rng.vector(out * r);
    for (int64_t k = 0; k < in; ++k) {
        A[(size_t)k] = deq[(size_t)k];
        A[(size_t)(in + k)] = deq[(size_t)(2 * in + k)];
    }
    B[0] = -1.0f / s;
    B[1] = B[2] = 0.0f;
    B[6] = B[8] = 0.0f;
    B[7] = -(1.0f + 0x1p-12f) / s;
    std::vector<float> sq((size_t)out), norm((size_t)out, kNaN);
    ASSERT_EQ(lk_cpu_dora_row_sqnorm(out, in, deq.data(), sq.data()), LK_OK) << last_error();
    lk_dora_norm_report report{-1, -1};
    ASSERT_EQ(lk_cpu_dora_weight_norm_4bit(out, in, r, codes.data(), &stats, sq.data(), A.data(), B.data(), s,
                                           norm.data(), &report),
              LK_OK)
        << last_error();
    const NormReference ref = reference_norm(out, in, r, deq, A, B, s);
    EXPECT_EQ(ref.norm[0], 0.0) << "s·B_0·A = -deq(W)_0 exactly";
    EXPECT_EQ(norm[0], 0.0f);
    EXPECT_EQ(report.zero_rows, 1);
    EXPECT_GE(report.recomputed_rows, 2) << "rows 0 and 2 take the direct path";
    EXPECT_LE(std::fabs(norm[2] - ref.norm[2]) / ref.norm[2], 1e-6) << "row 2 cancels to 2⁻¹²";
    for (int64_t i = 0; i < out; ++i)
        EXPECT_NEAR(norm[(size_t)i], ref.norm[(size_t)i], norm_bound(ref.norm[(size_t)i], ref.terms[(size_t)i], r))
            << "row " << i;
    // The same norm as the dense path on deq(W) itself.
    std::vector<float> dense((size_t)out);
    ASSERT_EQ(lk_cpu_dora_weight_norm(out, in, r, deq.data(), sq.data(), A.data(), B.data(), s, dense.data(), nullptr),
              LK_OK)
        << last_error();
    EXPECT_EQ(dense, norm);
}

// The exported column-scale and dm/dz passes are the dense forward's and backward's own.
TEST(DoraPieces, ScaleColumnsAndScaleGradAreTheDensePasses_M33_in20_out70_r3) {
    const int64_t M = 33, in = 20, out = 70, r = 3;
    Rng rng(22);
    const std::vector<float> x = rng.vector(M * in), W0 = rng.vector(out * in), A = rng.vector(r * in),
                             B = rng.vector(out * r), bias = rng.vector(out), dy = rng.vector(M * out);
    const std::vector<float> m = positive(rng, out), n = positive(rng, out);
    std::vector<float> y((size_t)(M * out)), u((size_t)(M * r)), z((size_t)(M * out)), y2((size_t)(M * out));
    ASSERT_EQ(lk_cpu_dora_forward(M, in, out, r, x.data(), W0.data(), bias.data(), A.data(), B.data(), 0.5f, m.data(),
                                  n.data(), y.data(), u.data(), z.data()),
              LK_OK) << last_error();
    ASSERT_EQ(lk_cpu_dora_scale_columns(M, out, z.data(), m.data(), n.data(), bias.data(), y2.data()), LK_OK) << last_error();
    EXPECT_EQ(y2, y);
    std::vector<float> dm((size_t)out), dm2((size_t)out), dz((size_t)(M * out));
    ASSERT_EQ(lk_cpu_dora_backward(M, in, out, r, x.data(), W0.data(), A.data(), B.data(), u.data(), z.data(), dy.data(),
                                   0.5f, m.data(), n.data(), nullptr, nullptr, nullptr, dm.data()),
              LK_OK) << last_error();
    ASSERT_EQ(lk_cpu_dora_scale_grad(M, out, dy.data(), z.data(), m.data(), n.data(), dm2.data(), dz.data()), LK_OK)
        << last_error();
    EXPECT_EQ(dm2, dm);
    std::vector<double> dz_ref((size_t)(M * out)), dz_mag((size_t)(M * out));
    for (int64_t t = 0; t < M; ++t)
        for (int64_t j = 0; j < out; ++j) {
            const size_t e = (size_t)(t * out + j);
            dz_ref[e] = (double)dy[e] * m[(size_t)j] / n[(size_t)j];
            dz_mag[e] = std::fabs(dz_ref[e]);
        }
    // Two roundings (the factor m/n, the product).
    EXPECT_TRUE(all_near(dz.data(), out, M, out, dz_ref, dz_mag, 0.0, 2.0 * kUnitRoundoff));
}

TEST(DoraPieces, DropoutIsTheHashedMask_n1001) {
    const int64_t n = 1001;
    Rng rng(23);
    const std::vector<float> x = rng.vector(n);
    std::vector<float> y((size_t)n);
    ASSERT_EQ(lk_cpu_dora_dropout(n, x.data(), 0.3f, 99, y.data()), LK_OK) << last_error();
    int dropped = 0;
    for (int64_t i = 0; i < n; ++i) {
        const double factor = dropout_factor(99, (uint64_t)i, 0.3f);
        dropped += factor == 0.0;
        EXPECT_EQ(y[(size_t)i], (float)((double)x[(size_t)i] * factor)) << "element " << i;
    }
    EXPECT_GT(dropped, 200);
    EXPECT_LT(dropped, 400);
    float v[1] = {1};
    EXPECT_EQ(lk_cpu_dora_dropout(1, v, 1.0f, 0, v), LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("p = 1"), std::string::npos) << last_error();
    EXPECT_EQ(lk_cpu_dora_scale_grad(1, 1, v, nullptr, v, v, v, nullptr), LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("z is NULL"), std::string::npos) << last_error();
}

}  // namespace
}  // namespace cpu_test
