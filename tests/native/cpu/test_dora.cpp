// lk_cpu_dora_* against naive double-precision references written here: the weight norm against
// the materialised ‖W0 + s·B·A‖_row (including rows where s·B·A nearly or exactly cancels W0),
// the forward and backward against y = (m/n) ⊙ (x W0ᵀ + s·x Aᵀ Bᵀ) + bias and its gradient with
// n detached, and the merge row scaling; and the pieces QDoRA and the dropout path compose (the norm
// from a transposed projection, the column-scale and dm/dz passes alone, the hashed dropout mask).
//
// Shapes: out/in/r from 1 to 1030 (in = 1030 passes every ISA's kc block), primes and
// non-multiples of every micro-tile; M in {1, 33, 130} (the dot-product path and the packed GEMM).
//
// Tolerances (u = 2^-24; "mag" = the sum of |terms| of the exact expression, evaluated by running
// the same reference on absolute values):
//   forward/backward element: 1e-6 + 4·(L + 2)·u·mag, L the longest fp32 reduction chain feeding it.
//   norm: the kernel's n² carries an error E_i <= c·u·mag_i² with mag_i² = Σ_k (|w_ik| +
//   s·Σ_a |B_ia||A_ak|)² (it bounds ‖w_i‖², 2s|P_i·B_i| and s²·B_i G B_iᵀ), c = 4·(in + r + 2)
//   (fp32 GEMMs of length in for P and G, fp32 storage of ‖w_i‖²). Since |a - b| = |a² - b²| / (a + b)
//   for a, b >= 0, |n_got - n_ref| <= min(sqrt(E), E / n_ref) + 2u·n_ref + 1e-6: near-cancelling
//   rows get the sqrt(E) bound the cancellation makes unavoidable, ordinary rows E / n.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "reference.h"

namespace cpu_test {
namespace {

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

// Materialised ‖W0 + s·B·A‖_row in double (what the kernel must not do).
std::vector<double> reference_norm(int64_t out, int64_t in, int64_t r, const std::vector<float>& W0,
                                   const std::vector<float>& A, const std::vector<float>& B, double s) {
    std::vector<double> n((size_t)out);
    for (int64_t i = 0; i < out; ++i) {
        double sum = 0.0;
        for (int64_t k = 0; k < in; ++k) {
            double w = W0[(size_t)(i * in + k)];
            for (int64_t a = 0; a < r; ++a) w += s * B[(size_t)(i * r + a)] * A[(size_t)(a * in + k)];
            sum += w * w;
        }
        n[(size_t)i] = std::sqrt(sum);
    }
    return n;
}

struct NormCase {
    int64_t out, in, r;
};

std::string norm_name(const NormCase& c) {
    return "out" + std::to_string(c.out) + "_in" + std::to_string(c.in) + "_r" + std::to_string(c.r);
}

class DoraWeightNorm : public ::testing::TestWithParam<NormCase> {};

// Rows 0 (mod 3) of W0 are replaced by -s·B_i·A + δ·noise: δ = 0 (exact cancellation up to the
// fp32 rounding of W0) on row 0, δ = 1e-2 on the others, so the norm of W0 + s·B·A there is about
// 1 % of its terms.
TEST_P(DoraWeightNorm, MatchesMaterialisedNormIncludingCancellation) {
    const NormCase c = GetParam();
    const int64_t out = c.out, in = c.in, r = c.r;
    const float scale = 1.75f;
    Rng rng(77 + (uint64_t)(out * 131 + in * 7 + r));
    std::vector<float> W0 = rng.vector(out * in);
    const std::vector<float> A = rng.vector(r * in), B = rng.vector(out * r);
    for (bool cancel : {false, true}) {
        SCOPED_TRACE(norm_name(c) + (cancel ? " near-cancelling rows" : " random"));
        if (cancel)
            for (int64_t i = 0; i < out; i += 3) {
                const double delta = i == 0 ? 0.0 : 1e-2;
                for (int64_t k = 0; k < in; ++k) {
                    double ba = 0.0;
                    for (int64_t a = 0; a < r; ++a) ba += (double)B[(size_t)(i * r + a)] * A[(size_t)(a * in + k)];
                    W0[(size_t)(i * in + k)] = (float)(-scale * ba + delta * rng.nonzero() * std::fabs(scale * ba));
                }
            }
        std::vector<float> sq((size_t)out, kNaN), norm((size_t)out, kNaN);
        ASSERT_EQ(lk_cpu_dora_row_sqnorm(out, in, W0.data(), sq.data()), LK_OK) << last_error();
        ASSERT_EQ(lk_cpu_dora_weight_norm(out, in, r, W0.data(), sq.data(), A.data(), B.data(), scale, norm.data()),
                  LK_OK)
            << last_error();
        const std::vector<double> ref = reference_norm(out, in, r, W0, A, B, scale);
        const std::vector<float> W0_abs = absolute(W0), A_abs = absolute(A), B_abs = absolute(B);
        const std::vector<double> mag = reference_norm(out, in, r, W0_abs, A_abs, B_abs, scale);
        int64_t ordinary_rows_checked = 0;
        for (int64_t i = 0; i < out; ++i) {
            double sq_ref = 0.0;
            for (int64_t k = 0; k < in; ++k) sq_ref += (double)W0[(size_t)(i * in + k)] * W0[(size_t)(i * in + k)];
            EXPECT_NEAR(sq[(size_t)i], sq_ref, 1e-6 + 2 * kUnitRoundoff * sq_ref) << "row " << i;
            const double E = 4.0 * (double)(in + r + 2) * kUnitRoundoff * mag[(size_t)i] * mag[(size_t)i];
            const double n_ref = ref[(size_t)i];
            const double tolerance =
                std::min(std::sqrt(E), n_ref > 0 ? E / n_ref : INFINITY) + 2 * kUnitRoundoff * n_ref + kAtol;
            ASSERT_TRUE(std::isfinite(norm[(size_t)i]) && norm[(size_t)i] >= 0.0f) << "row " << i;
            EXPECT_NEAR(norm[(size_t)i], n_ref, tolerance) << "row " << i << " (E = " << E << ")";
            if (n_ref > 0.01 * mag[(size_t)i]) ++ordinary_rows_checked;
        }
        if (!cancel) {
            EXPECT_EQ(ordinary_rows_checked, out) << "random rows must not cancel";
        }
    }
}

INSTANTIATE_TEST_SUITE_P(Shapes, DoraWeightNorm,
                         ::testing::Values(NormCase{1, 1, 1}, NormCase{7, 33, 3}, NormCase{67, 130, 16},
                                           NormCase{130, 1030, 8}, NormCase{37, 257, 64}),
                         [](const auto& info) { return norm_name(info.param); });

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

// ---- merge row scaling -----------------------------------------------------------------------

TEST(DoraScaleRows, ScalesByMagnitudeOverNormAndBack_out7_in33) {
    const int64_t out = 7, in = 33;
    Rng rng(9);
    const std::vector<float> W = rng.vector(out * in), m = positive(rng, out), n = positive(rng, out);
    std::vector<float> scaled = W;
    ASSERT_EQ(lk_cpu_dora_scale_rows(out, in, scaled.data(), m.data(), n.data(), 0), LK_OK) << last_error();
    std::vector<double> ref((size_t)(out * in)), mag((size_t)(out * in));
    for (int64_t i = 0; i < out; ++i)
        for (int64_t k = 0; k < in; ++k) {
            ref[(size_t)(i * in + k)] = (double)W[(size_t)(i * in + k)] * m[(size_t)i] / n[(size_t)i];
            mag[(size_t)(i * in + k)] = std::fabs(ref[(size_t)(i * in + k)]);
        }
    // Two roundings (the factor, the product).
    EXPECT_TRUE(all_near(scaled.data(), in, out, in, ref, mag, 0.0, 2.0 * kUnitRoundoff));
    ASSERT_EQ(lk_cpu_dora_scale_rows(out, in, scaled.data(), m.data(), n.data(), 1), LK_OK) << last_error();
    std::vector<double> original(W.begin(), W.end()), original_mag((size_t)(out * in));
    for (size_t i = 0; i < original.size(); ++i) original_mag[i] = std::fabs(original[i]);
    EXPECT_TRUE(all_near(scaled.data(), in, out, in, original, original_mag, 0.0, 4.0 * kUnitRoundoff));
}

// ---- arguments -------------------------------------------------------------------------------

TEST(DoraArguments, BadArgumentsAreRejectedWithTheirName) {
    float v[4] = {1, 2, 3, 4};
    EXPECT_EQ(lk_cpu_dora_weight_norm(1, 1, 0, v, v, v, v, 1.0f, v), LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("r = 0"), std::string::npos) << last_error();
    EXPECT_EQ(lk_cpu_dora_weight_norm(1, 1, 1, v, v, v, v, INFINITY, v), LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("scale"), std::string::npos) << last_error();
    EXPECT_EQ(lk_cpu_dora_forward(1, 1, 1, 1, v, v, nullptr, v, v, 1.0f, v, nullptr, v, v, v),
              LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("norm is NULL"), std::string::npos) << last_error();
    EXPECT_EQ(lk_cpu_dora_backward(1, 1, 1, 1, v, v, v, v, v, nullptr, v, 1.0f, v, v, nullptr, nullptr, nullptr, v),
              LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("z is NULL"), std::string::npos) << last_error();
    EXPECT_EQ(lk_cpu_dora_row_sqnorm(-1, 1, v, v), LK_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(lk_cpu_dora_scale_rows(1, 1, v, v, v, 2), LK_ERR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("invert = 2"), std::string::npos) << last_error();
}

// ---- the pieces QDoRA and the dropout path compose ---------------------------------------------

// lk_cpu_dora_weight_norm_pt with Pt = (W0 Aᵀ)ᵀ formed here in double: the same bound as the norm test
// (no cancelling rows here, so E / n_ref applies).
TEST(DoraPieces, WeightNormFromTransposedProjection_out13_in67_r5) {
    const int64_t out = 13, in = 67, r = 5;
    const float s = 1.25f;
    Rng rng(21);
    const std::vector<float> W0 = rng.vector(out * in), A = rng.vector(r * in), B = rng.vector(out * r);
    std::vector<float> sqnorm((size_t)out), Pt((size_t)(r * out)), norm((size_t)out);
    ASSERT_EQ(lk_cpu_dora_row_sqnorm(out, in, W0.data(), sqnorm.data()), LK_OK) << last_error();
    for (int64_t a = 0; a < r; ++a)
        for (int64_t i = 0; i < out; ++i) {
            double p = 0.0;
            for (int64_t k = 0; k < in; ++k) p += (double)W0[(size_t)(i * in + k)] * A[(size_t)(a * in + k)];
            Pt[(size_t)(a * out + i)] = (float)p;
        }
    ASSERT_EQ(lk_cpu_dora_weight_norm_pt(out, in, r, sqnorm.data(), Pt.data(), A.data(), B.data(), s, norm.data()), LK_OK)
        << last_error();
    const std::vector<double> ref = reference_norm(out, in, r, W0, A, B, s);
    for (int64_t i = 0; i < out; ++i) {
        double mag2 = 0.0;
        for (int64_t k = 0; k < in; ++k) {
            double m = std::fabs(W0[(size_t)(i * in + k)]);
            for (int64_t a = 0; a < r; ++a) m += s * std::fabs(B[(size_t)(i * r + a)] * A[(size_t)(a * in + k)]);
            mag2 += m * m;
        }
        const double e = 4.0 * (double)(in + r + 2) * kUnitRoundoff * mag2;
        const double bound = std::min(std::sqrt(e), e / ref[(size_t)i]) + 2.0 * kUnitRoundoff * ref[(size_t)i] + kAtol;
        EXPECT_NEAR(norm[(size_t)i], ref[(size_t)i], bound) << "row " << i;
    }
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
