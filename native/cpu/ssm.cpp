// ssm.cpp: the selective scan (Mamba's S6) and the block's causal depthwise convolution on the CPU, the
// counterpart of kernels/ssm.cu (lora_kernels_ssm.h fixes the math).
//
// Scan forward: each (sequence, channel) pair runs the recurrence over its L steps with its N states in a
//   small array (a CPU core has no use for the GPU's chunked scan: one pass, no recomputation); pairs are
//   spread over the library's threads. FLOP ~(5N + 4)·L·D per sequence plus N exponentials per step and
//   channel; bytes 4·L·(3·D + 2·N) per sequence.
// Scan backward: per pair, a forward pass keeps h_t for every step (L·N floats of thread-local scratch),
//   then the adjoint runs backwards. dBm and dCm sum over the channels; channels are taken in fixed groups
//   of kSsmGroup, each group's sums kept apart and the groups added in order afterwards, so the result is
//   the same whatever the thread count (and the GPU kernels use the same groups). FLOP ~3× the forward.
// Convolution: K taps per output, every (row, channel) independent; the backward recomputes the
//   pre-activation for SiLU's derivative rather than keeping it.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "activations.cuh"
#include "check.h"
#include "parallel.h"

namespace lk::cpu {
namespace {

// Channels per partial sum of dBm and dCm (kernels/ssm.cu reduces one warp's channels the same way).
constexpr int64_t kSsmGroup = 32;

struct Scan {
    int64_t batch, L, D, N;
    const float *u, *delta, *delta_bias, *A, *Bm, *Cm, *Dskip, *z, *h0;
    int64_t ld_u, ld_delta, ld_bc, ld_z;

    int64_t row(int64_t b, int64_t t) const { return b * L + t; }
    float step_size(int64_t r, int64_t d) const {
        return lk_softplus(delta[r * ld_delta + d] + (delta_bias != nullptr ? delta_bias[d] : 0.0f));
    }
    // h[n] <- exp(Δ·A[d,n])·h[n] + Δ·Bm[n]·u for row r; returns Σ_n Cm[n]·h[n] + Dskip·u (before the gate).
    float advance(int64_t r, int64_t d, float* h) const {
        const float dt = step_size(r, d), x = u[r * ld_u + d];
        const float* b = Bm + r * ld_bc;
        const float* c = Cm + r * ld_bc;
        float y = 0.0f;
        for (int64_t n = 0; n < N; ++n) {
            h[n] = expf(dt * A[d * N + n]) * h[n] + dt * b[n] * x;
            y += c[n] * h[n];
        }
        return y + Dskip[d] * x;
    }
    float gate(int64_t r, int64_t d) const { return z != nullptr ? lk_silu(z[r * ld_z + d]) : 1.0f; }
};

void scan_forward(const Scan& s, float* y, int64_t ld_y, float* h_last) {
    const int threads = (int)std::max<int64_t>(1, std::min<int64_t>(thread_count(), s.batch * s.D));
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t pair = 0; pair < s.batch * s.D; ++pair) {
        const int64_t b = pair / s.D, d = pair % s.D;
        float h[LK_SSM_MAX_STATE];
        for (int64_t n = 0; n < s.N; ++n) h[n] = s.h0 != nullptr ? s.h0[(b * s.D + d) * s.N + n] : 0.0f;
        for (int64_t t = 0; t < s.L; ++t) {
            const int64_t r = s.row(b, t);
            y[r * ld_y + d] = s.advance(r, d, h) * s.gate(r, d);
        }
        if (h_last != nullptr)
            for (int64_t n = 0; n < s.N; ++n) h_last[(b * s.D + d) * s.N + n] = h[n];
    }
}

struct ScanGradients {
    const float* dy;
    int64_t ld_dy;
    float *du, *ddelta, *dBm, *dCm, *dz;
    int64_t ld_du, ld_ddelta, ld_dbc, ld_dz;
};

// One channel's backward; adds its dBm, dCm terms into the group's partial sums [L, N] (pb, pc).
void channel_backward(const Scan& s, const ScanGradients& g, int64_t b, int64_t d, std::vector<float>& history, float* pb,
                      float* pc) {
    const int64_t L = s.L, N = s.N;
    float h[LK_SSM_MAX_STATE];
    for (int64_t n = 0; n < N; ++n) h[n] = s.h0 != nullptr ? s.h0[(b * s.D + d) * N + n] : 0.0f;
    std::vector<float> pre((size_t)L);  // y before the gate, for dz
    for (int64_t t = 0; t < L; ++t) {
        pre[(size_t)t] = s.advance(s.row(b, t), d, h);
        std::copy(h, h + N, history.begin() + t * N);
    }
    float adjoint[LK_SSM_MAX_STATE] = {};  // exp(Δ_{t+1}·A)·g_{t+1}: what flows into step t from later steps
    for (int64_t t = L - 1; t >= 0; --t) {
        const int64_t r = s.row(b, t);
        const float x = s.u[r * s.ld_u + d], raw = s.delta[r * s.ld_delta + d] + (s.delta_bias != nullptr ? s.delta_bias[d] : 0.0f);
        const float dt = lk_softplus(raw), dy = g.dy[r * g.ld_dy + d], gated = dy * s.gate(r, d);
        const float* bm = s.Bm + r * s.ld_bc;
        const float* cm = s.Cm + r * s.ld_bc;
        const float* ht = history.data() + t * N;
        float du = s.Dskip[d] * gated, ddt = 0.0f;
        for (int64_t n = 0; n < N; ++n) {
            const float decay = expf(dt * s.A[d * N + n]);
            const float previous = t > 0 ? history[(size_t)((t - 1) * N + n)]
                                         : (s.h0 != nullptr ? s.h0[(b * s.D + d) * N + n] : 0.0f);
            const float gt = cm[n] * gated + adjoint[n];
            du += gt * dt * bm[n];
            ddt += gt * (s.A[d * N + n] * decay * previous + bm[n] * x);
            pb[t * N + n] += gt * dt * x;
            pc[t * N + n] += ht[n] * gated;
            adjoint[n] = decay * gt;
        }
        if (g.du != nullptr) g.du[r * g.ld_du + d] = du;
        if (g.ddelta != nullptr) g.ddelta[r * g.ld_ddelta + d] = ddt * lk_sigmoid(raw);
        if (g.dz != nullptr) g.dz[r * g.ld_dz + d] = dy * pre[(size_t)t] * lk_silu_grad(s.z[r * s.ld_z + d]);
    }
}

void scan_backward(const Scan& s, const ScanGradients& g) {
    const int64_t groups = (s.D + kSsmGroup - 1) / kSsmGroup, LN = s.L * s.N;
    // partial sums of dBm and dCm per (sequence, group): [batch, groups, L, N] each
    std::vector<float> partial_b((size_t)(s.batch * groups * LN), 0.0f), partial_c(partial_b.size(), 0.0f);
    const int threads = (int)std::max<int64_t>(1, std::min<int64_t>(thread_count(), s.batch * groups));
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        std::vector<float> history((size_t)LN);
#pragma omp for schedule(static)
        for (int64_t work = 0; work < s.batch * groups; ++work) {
            const int64_t b = work / groups, group = work % groups;
            float* pb = partial_b.data() + work * LN;
            float* pc = partial_c.data() + work * LN;
            for (int64_t d = group * kSsmGroup; d < std::min(s.D, (group + 1) * kSsmGroup); ++d)
                channel_backward(s, g, b, d, history, pb, pc);
        }
    }
    for (int64_t b = 0; b < s.batch; ++b)
        for (int64_t i = 0; i < LN; ++i) {
            const int64_t t = i / s.N, n = i % s.N, r = s.row(b, t);
            float sum_b = 0.0f, sum_c = 0.0f;
            for (int64_t group = 0; group < groups; ++group) {
                sum_b += partial_b[(size_t)((b * groups + group) * LN + i)];
                sum_c += partial_c[(size_t)((b * groups + group) * LN + i)];
            }
            if (g.dBm != nullptr) g.dBm[r * g.ld_dbc + n] = sum_b;
            if (g.dCm != nullptr) g.dCm[r * g.ld_dbc + n] = sum_c;
        }
}

// The conv's pre-activation at row (b, t), channel d.
float conv_pre(int64_t L, int64_t K, const float* x, int64_t ld_x, const float* weight, const float* bias, int64_t b,
               int64_t t, int64_t d) {
    float sum = bias != nullptr ? bias[d] : 0.0f;
    for (int64_t j = std::max<int64_t>(0, K - 1 - t); j < K; ++j) sum += weight[d * K + j] * x[(b * L + t - K + 1 + j) * ld_x + d];
    return sum;
}

ArgCheck& check_scan(ArgCheck& check, int64_t batch, int64_t L, int64_t D, int64_t N, const float* u, int64_t ld_u,
                     const float* delta, int64_t ld_delta, const float* A, const float* Bm, const float* Cm, int64_t ld_bc,
                     const float* Dskip, const float* z, int64_t ld_z) {
    const bool any = batch > 0 && L > 0 && D > 0;
    return check.nonnegative("batch", batch)
        .nonnegative("L", L)
        .nonnegative("D", D)
        .at_least("N", (double)N, 1.0)
        .leading_dimension("ld_u", ld_u, D)
        .leading_dimension("ld_delta", ld_delta, D)
        .leading_dimension("ld_bc", ld_bc, N)
        .leading_dimension("ld_z", z != nullptr ? ld_z : D, D)  // unused without z
        .not_null("u", u, any)
        .not_null("delta", delta, any)
        .not_null("A", A, D > 0)
        .not_null("Bm", Bm, any)
        .not_null("Cm", Cm, any)
        .not_null("Dskip", Dskip, D > 0);
}

// N states fit the arrays every thread keeps (LK_SSM_MAX_STATE).
lk_status check_state(const char* fn, int64_t N) {
    if (N > LK_SSM_MAX_STATE)
        return lk::fail(LK_ERR_INVALID_ARGUMENT, "%s: N = %lld states is over LK_SSM_MAX_STATE = %d", fn, (long long)N,
                        LK_SSM_MAX_STATE);
    return LK_OK;
}

}  // namespace
}  // namespace lk::cpu

using lk::cpu::ArgCheck;
using lk::cpu::elementwise_threads;

LK_API lk_status lk_cpu_ssm_scan_forward(int64_t batch, int64_t L, int64_t D, int64_t N, const float* u, int64_t ld_u,
                                         const float* delta, int64_t ld_delta, const float* delta_bias, const float* A,
                                         const float* Bm, const float* Cm, int64_t ld_bc, const float* Dskip,
                                         const float* z, int64_t ld_z, const float* h0, float* y, int64_t ld_y,
                                         float* h_last) {
    static const char* const fn = "lk_cpu_ssm_scan_forward";
    ArgCheck check(fn);
    lk::cpu::check_scan(check, batch, L, D, N, u, ld_u, delta, ld_delta, A, Bm, Cm, ld_bc, Dskip, z, ld_z)
        .leading_dimension("ld_y", ld_y, D)
        .not_null("y", y, batch > 0 && L > 0 && D > 0);
    if (!check.ok()) return check.status();
    if (const lk_status state = lk::cpu::check_state(fn, N); state != LK_OK) return state;
    return lk::cpu::guarded(fn, [&] {
        const lk::cpu::Scan s{batch, L, D, N, u, delta, delta_bias, A, Bm, Cm, Dskip, z, h0, ld_u, ld_delta, ld_bc, ld_z};
        lk::cpu::scan_forward(s, y, ld_y, h_last);
        return LK_OK;
    });
}

LK_API lk_status lk_cpu_ssm_scan_backward(int64_t batch, int64_t L, int64_t D, int64_t N, const float* u, int64_t ld_u,
                                          const float* delta, int64_t ld_delta, const float* delta_bias, const float* A,
                                          const float* Bm, const float* Cm, int64_t ld_bc, const float* Dskip,
                                          const float* z, int64_t ld_z, const float* h0, const float* dy, int64_t ld_dy,
                                          float* du, int64_t ld_du, float* ddelta, int64_t ld_ddelta, float* dBm,
                                          float* dCm, int64_t ld_dbc, float* dz, int64_t ld_dz) {
    static const char* const fn = "lk_cpu_ssm_scan_backward";
    ArgCheck check(fn);
    lk::cpu::check_scan(check, batch, L, D, N, u, ld_u, delta, ld_delta, A, Bm, Cm, ld_bc, Dskip, z, ld_z)
        .leading_dimension("ld_dy", ld_dy, D)
        .leading_dimension("ld_du", du != nullptr ? ld_du : D, D)  // each unused without its output
        .leading_dimension("ld_ddelta", ddelta != nullptr ? ld_ddelta : D, D)
        .leading_dimension("ld_dbc", dBm != nullptr || dCm != nullptr ? ld_dbc : N, N)
        .leading_dimension("ld_dz", dz != nullptr ? ld_dz : D, D)
        .not_null("dy", dy, batch > 0 && L > 0 && D > 0)
        .not_null("z (dz asks for the gate's gradient)", z, dz != nullptr);
    if (!check.ok()) return check.status();
    if (const lk_status state = lk::cpu::check_state(fn, N); state != LK_OK) return state;
    return lk::cpu::guarded(fn, [&] {
        const lk::cpu::Scan s{batch, L, D, N, u, delta, delta_bias, A, Bm, Cm, Dskip, z, h0, ld_u, ld_delta, ld_bc, ld_z};
        const lk::cpu::ScanGradients g{dy, ld_dy, du, ddelta, dBm, dCm, dz, ld_du, ld_ddelta, ld_dbc, ld_dz};
        lk::cpu::scan_backward(s, g);
        return LK_OK;
    });
}

LK_API lk_status lk_cpu_ssm_step(int64_t batch, int64_t D, int64_t N, const float* u, int64_t ld_u, const float* delta,
                                 int64_t ld_delta, const float* delta_bias, const float* A, const float* Bm,
                                 const float* Cm, int64_t ld_bc, const float* Dskip, const float* z, int64_t ld_z,
                                 float* h, float* y, int64_t ld_y) {
    static const char* const fn = "lk_cpu_ssm_step";
    ArgCheck check(fn);
    lk::cpu::check_scan(check, batch, 1, D, N, u, ld_u, delta, ld_delta, A, Bm, Cm, ld_bc, Dskip, z, ld_z)
        .leading_dimension("ld_y", ld_y, D)
        .not_null("h", h, batch > 0 && D > 0)
        .not_null("y", y, batch > 0 && D > 0);
    if (!check.ok()) return check.status();
    if (const lk_status state = lk::cpu::check_state(fn, N); state != LK_OK) return state;
    // One step of a length-1 sequence from h, which becomes its last state.
    const lk::cpu::Scan s{batch, 1, D, N, u, delta, delta_bias, A, Bm, Cm, Dskip, z, h, ld_u, ld_delta, ld_bc, ld_z};
    const int threads = elementwise_threads(batch * D * N);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t pair = 0; pair < batch * D; ++pair) {
        const int64_t b = pair / D, d = pair % D;
        y[b * ld_y + d] = s.advance(b, d, h + pair * N) * s.gate(b, d);
    }
    return LK_OK;
}

LK_API lk_status lk_cpu_ssm_conv_forward(int64_t batch, int64_t L, int64_t D, int64_t K, const float* x, int64_t ld_x,
                                         const float* weight, const float* bias, float* y, int64_t ld_y) {
    ArgCheck check("lk_cpu_ssm_conv_forward");
    const bool any = batch > 0 && L > 0 && D > 0;
    check.nonnegative("batch", batch).nonnegative("L", L).nonnegative("D", D).at_least("K", (double)K, 1.0)
        .leading_dimension("ld_x", ld_x, D).leading_dimension("ld_y", ld_y, D)
        .not_null("x", x, any).not_null("weight", weight, D > 0).not_null("y", y, any);
    if (!check.ok()) return check.status();
    const int threads = elementwise_threads(batch * L * D * K);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t r = 0; r < batch * L; ++r)
        for (int64_t d = 0; d < D; ++d)
            y[r * ld_y + d] = lk_silu(lk::cpu::conv_pre(L, K, x, ld_x, weight, bias, r / L, r % L, d));
    return LK_OK;
}

LK_API lk_status lk_cpu_ssm_conv_backward(int64_t batch, int64_t L, int64_t D, int64_t K, const float* x, int64_t ld_x,
                                          const float* weight, const float* bias, const float* dy, int64_t ld_dy,
                                          float* dx, int64_t ld_dx) {
    ArgCheck check("lk_cpu_ssm_conv_backward");
    const bool any = batch > 0 && L > 0 && D > 0;
    check.nonnegative("batch", batch).nonnegative("L", L).nonnegative("D", D).at_least("K", (double)K, 1.0)
        .leading_dimension("ld_x", ld_x, D).leading_dimension("ld_dy", ld_dy, D).leading_dimension("ld_dx", ld_dx, D)
        .not_null("x", x, any).not_null("weight", weight, D > 0).not_null("dy", dy, any).not_null("dx", dx, any);
    if (!check.ok()) return check.status();
    const int threads = elementwise_threads(batch * L * D * K * K);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t r = 0; r < batch * L; ++r) {
        const int64_t b = r / L, s = r % L;
        for (int64_t d = 0; d < D; ++d) {
            float sum = 0.0f;  // input s feeds outputs t = s + K - 1 - j, j < K, t < L
            for (int64_t j = K - 1; j >= 0; --j) {
                const int64_t t = s + K - 1 - j;
                if (t >= L) continue;
                const float pre = lk::cpu::conv_pre(L, K, x, ld_x, weight, bias, b, t, d);
                sum += weight[d * K + j] * dy[(b * L + t) * ld_dy + d] * lk_silu_grad(pre);
            }
            dx[r * ld_dx + d] = sum;
        }
    }
    return LK_OK;
}

LK_API lk_status lk_cpu_ssm_conv_step(int64_t batch, int64_t D, int64_t K, const float* x, int64_t ld_x,
                                      const float* weight, const float* bias, float* state, float* y, int64_t ld_y) {
    ArgCheck check("lk_cpu_ssm_conv_step");
    const bool any = batch > 0 && D > 0;
    check.nonnegative("batch", batch).nonnegative("D", D).at_least("K", (double)K, 1.0)
        .leading_dimension("ld_x", ld_x, D).leading_dimension("ld_y", ld_y, D)
        .not_null("x", x, any).not_null("weight", weight, D > 0).not_null("state", state, any && K > 1)
        .not_null("y", y, any);
    if (!check.ok()) return check.status();
    for (int64_t pair = 0; pair < batch * D; ++pair) {
        const int64_t b = pair / D, d = pair % D;
        float* window = state + pair * (K - 1);
        const float input = x[b * ld_x + d];
        float sum = bias != nullptr ? bias[d] : 0.0f;
        for (int64_t j = 0; j < K - 1; ++j) sum += weight[d * K + j] * window[j];
        sum += weight[d * K + K - 1] * input;
        for (int64_t j = 0; j + 1 < K - 1; ++j) window[j] = window[j + 1];
        if (K > 1) window[K - 2] = input;
        y[b * ld_y + d] = lk_silu(sum);
    }
    return LK_OK;
}

LK_API lk_status lk_cpu_ssm_copy_columns(int64_t rows, int64_t width, const float* src, int64_t ld_src, float* dst,
                                         int64_t ld_dst) {
    ArgCheck check("lk_cpu_ssm_copy_columns");
    check.nonnegative("rows", rows).nonnegative("width", width)
        .leading_dimension("ld_src", ld_src, width).leading_dimension("ld_dst", ld_dst, width)
        .not_null("src", src, rows > 0 && width > 0).not_null("dst", dst, rows > 0 && width > 0);
    if (!check.ok()) return check.status();
    for (int64_t r = 0; r < rows; ++r) std::copy(src + r * ld_src, src + r * ld_src + width, dst + r * ld_dst);
    return LK_OK;
}
