// dora_norm_cases.h: what the CPU and the emulator-parity DoRA tests share about the weight norm
// (issue 14): the long double reference norm, the bound every row's norm must meet, and rows that
// cancel to a chosen depth, in fp32 and bf16.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "lora_kernels.h"

namespace dora_cases {

// Materialised ‖W0 + s·B·A‖_row (what the kernels must not do) in long double (x86's 64-bit
// significand), so the reference's own rounding, about 2⁻⁶⁴·(r + 2)·‖μ‖, is 2¹¹ below the kernels'
// direct-path error; and ‖μ_i‖ with μ_ik = |w_ik| + |s|·Σ_a |B_ia·A_ak| (the norm's term magnitude).
struct NormReference {
    std::vector<double> norm, terms;
};

inline NormReference reference_norm(int64_t out, int64_t in, int64_t r, const std::vector<float>& W0,
                                    const std::vector<float>& A, const std::vector<float>& B, double s) {
    NormReference ref{std::vector<double>((size_t)out), std::vector<double>((size_t)out)};
    for (int64_t i = 0; i < out; ++i) {
        long double sum = 0.0L, terms = 0.0L;
        for (int64_t k = 0; k < in; ++k) {
            long double ba = 0.0L, ba_abs = 0.0L;
            for (int64_t a = 0; a < r; ++a) {
                const long double p = (long double)B[(size_t)(i * r + a)] * A[(size_t)(a * in + k)];
                ba += p;
                ba_abs += std::fabs(p);
            }
            const long double w = W0[(size_t)(i * in + k)];
            const long double v = w + (long double)s * ba, mu = std::fabs(w) + std::fabs(s) * ba_abs;
            sum += v * v;
            terms += mu * mu;
        }
        ref.norm[(size_t)i] = (double)std::sqrt(sum);
        ref.terms[(size_t)i] = (double)std::sqrt(terms);
    }
    return ref;
}

// The bound every row must meet, relative to the true norm n (lora_kernels_dora.h's claim, the
// same for the CPU and the GPU kernels):
//   a row the expansion keeps is certified within τ·n; a recomputed row errs by at most
//   (r + 2)·2⁻⁵³·‖μ‖ (v_k's r + 2 double roundings) + in·2⁻⁵³·n (the double sum of squares);
//   the result is rounded to fp32 (u·n); the long double reference adds (r + 2)·2⁻⁶⁴·‖μ‖.
// So |n_got - n| <= (τ + 2u)·n + (r + 2)·2⁻⁵²·‖μ‖. For n > 0 this is a relative bound until
// n / ‖μ‖ drops near 2⁻⁴⁸; for n = 0 (exact cancellation) it demands a result below 1e-14·‖μ‖.
inline double norm_bound(double n, double terms, int64_t r) {
    return (LK_DORA_NORM_TOLERANCE + 2.0 / 16777216.0) * n + (double)(r + 2) * 0x1p-52 * terms;
}

inline std::vector<float> rounded_bf16(const std::vector<float>& v) {
    std::vector<uint16_t> bits(v.size());
    std::vector<float> out(v.size());
    lk_cpu_f32_to_bf16((int64_t)v.size(), v.data(), bits.data());
    lk_cpu_bf16_to_f32((int64_t)v.size(), bits.data(), out.data());
    return out;
}

// ---- rows that cancel to a chosen depth -------------------------------------------------------

enum class Storage { F32, BF16 };

struct CancelCase {
    Storage storage;
    double depth;  // n_i / ‖W0_i‖ aimed at on the cancelling rows; 0 = exact cancellation
};

inline std::string cancel_name(const CancelCase& c) {
    const std::string dtype = c.storage == Storage::F32 ? "f32" : "bf16";
    if (c.depth == 0.0) return dtype + "_exact";
    return dtype + "_1em" + std::to_string(-(int)std::lround(std::log10(c.depth)));
}

// The depths, each in fp32 and bf16.
inline std::vector<CancelCase> all_cancel_cases() {
    std::vector<CancelCase> cases;
    for (Storage storage : {Storage::F32, Storage::BF16})
        for (double depth : {1e-3, 1e-5, 1e-7, 0.0}) cases.push_back({storage, depth});
    return cases;
}

// out = 10 rows of which rows 0 (mod 2) cancel; in = 1030 (two of the CPU projection's 1024-float
// chunks, a masked tail; 33 passes of a GPU warp), r as given (16 and 5: whole and ragged tiles).
//   F32, generic: A, B random, W0_i = fl32(-s·B_i·A·(1 + δ·noise)), so n_i / ‖W0_i‖ is about δ/√3
//     (plus W0's own rounding, ~2⁻²⁴/√3, which is the whole of it at δ = 0).
//   Both dtypes, structured: A takes values in {-2, ..., 2} with every 8th column 0, B in
//     {-2, ..., 2}/4 and s = 1/2, so s·B_i·A is an integer multiple of 1/8 below 2⁷ in magnitude:
//     exact in bf16 and fp32. W0_i = -s·B_i·A + e_i with e_i non-zero only on A's zero columns,
//     scaled so that ‖e_i‖ = δ·‖s·B_i·A‖: n_i = ‖e_i‖ exactly, at any depth and in bf16 too (e_i is
//     rounded to the dtype with the rest of W0; the reference uses the rounded values). δ = 0 gives
//     n_i = 0 exactly.
// The odd rows are random. Every input is rounded to the storage dtype.
struct CancelData {
    int64_t out, in, r;
    float scale;
    std::vector<float> W0, A, B;
};

inline CancelData cancel_data(const CancelCase& c, int64_t r, bool structured) {
    const int64_t out = 10, in = 1030;
    CancelData d{out, in, r, structured ? 0.5f : 1.25f, {}, {}, {}};
    std::mt19937 rng(1400u + (uint32_t)r + (structured ? 7u : 0u) + (uint32_t)(c.depth * 1e9));
    std::uniform_real_distribution<float> magnitude(0.25f, 1.0f);
    std::bernoulli_distribution negative(0.5);
    std::uniform_int_distribution<int> small(-2, 2);
    auto nonzero = [&] { return negative(rng) ? -magnitude(rng) : magnitude(rng); };
    auto random = [&](int64_t n) {
        std::vector<float> v((size_t)n);
        for (float& e : v) e = nonzero();
        return v;
    };
    if (structured) {
        d.A.resize((size_t)(r * in));
        d.B.resize((size_t)(out * r));
        for (int64_t a = 0; a < r; ++a)
            for (int64_t k = 0; k < in; ++k) d.A[(size_t)(a * in + k)] = k % 8 == 0 ? 0.0f : (float)small(rng);
        for (float& b : d.B) b = (float)small(rng) / 4.0f;
        d.B[0] = 1.0f;  // row 0's B is never all zero, so it does cancel something
    } else {
        d.A = random(r * in);
        d.B = random(out * r);
    }
    d.W0 = random(out * in);
    for (int64_t i = 0; i < out; i += 2) {
        std::vector<double> sba((size_t)in);
        double sba_norm2 = 0.0;
        for (int64_t k = 0; k < in; ++k) {
            double ba = 0.0;
            for (int64_t a = 0; a < r; ++a) ba += (double)d.B[(size_t)(i * r + a)] * d.A[(size_t)(a * in + k)];
            sba[(size_t)k] = d.scale * ba;
            sba_norm2 += sba[(size_t)k] * sba[(size_t)k];
        }
        if (structured) {
            std::vector<double> e((size_t)in, 0.0);
            double e_norm2 = 0.0;
            for (int64_t k = 0; k < in; k += 8) {
                e[(size_t)k] = nonzero();
                e_norm2 += e[(size_t)k] * e[(size_t)k];
            }
            const double e_scale = c.depth * std::sqrt(sba_norm2 / e_norm2);
            for (int64_t k = 0; k < in; ++k)
                d.W0[(size_t)(i * in + k)] = (float)(-sba[(size_t)k] + e_scale * e[(size_t)k]);
        } else {
            for (int64_t k = 0; k < in; ++k)
                d.W0[(size_t)(i * in + k)] = (float)(-sba[(size_t)k] * (1.0 + c.depth * nonzero()));
        }
    }
    if (c.storage == Storage::BF16) {
        d.W0 = rounded_bf16(d.W0);
        d.A = rounded_bf16(d.A);
        d.B = rounded_bf16(d.B);
    }
    return d;
}

// n_i / ‖W0_i‖ of the reference on the cancelling rows (the depth a case actually reaches).
inline double reached_depth(const CancelData& d, const NormReference& ref) {
    double depth = 0.0;
    for (int64_t i = 0; i < d.out; i += 2) {
        double w2 = 0.0;
        for (int64_t k = 0; k < d.in; ++k) w2 += (double)d.W0[(size_t)(i * d.in + k)] * d.W0[(size_t)(i * d.in + k)];
        depth = std::max(depth, ref.norm[(size_t)i] / std::sqrt(w2));
    }
    return depth;
}

}  // namespace dora_cases
