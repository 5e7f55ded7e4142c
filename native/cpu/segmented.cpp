// segmented.cpp: segmented (multi-adapter) LoRA on the CPU, the counterpart of kernels/segmented.cu
// (the same math and outputs; the argument order is the C ABI in lora_kernels_segmented.h).
//
// Forward. The base first: with a dense W0 it is one product for the whole batch (the dot-product
//   path for M <= kGemvMaxRows, W0 streamed once; the packed GEMM otherwise), so W0 is read once
//   however many adapters the batch mixes. Then each segment with an adapter a >= 0:
//     shrink  u_s = x_s·A_aᵀ           [len, r]
//     expand  y_s += s_a·u_s·B_aᵀ       (with a W0 table: y_s = [x_s | s_a·u_s]·[W_aᵀ ; B_aᵀ] + bias,
//                                       one product, y written once)
//   Segments of at most kGemvMaxRows rows (decode: one row per request) run side by side on the
//   library's threads, each as dot products that read A_a and B_a once (memory-bound: 4·r·(in + out)
//   bytes per adapter); longer segments (prefill, MoE experts) run one after another, each through
//   the threaded packed GEMM. FLOP 2·M·out·in (base) + 2·M·r·(in + out) (shrink + expand);
//   bytes 4·(out·in + M·in + M·out) + 4·r·(in + out) per distinct adapter in the batch.
// Backward (training: segments are long, MoE experts) runs every product through the packed GEMM,
//   one segment after another in the table's order (so the sums over an adapter's segments are
//   deterministic): du_s = s_a·dy_s·B_a; dB_a += s_a·dy_sᵀ·u_s; dA_a += du_sᵀ·x_s; dx = dy·W0 (one
//   product, gemv_tn for few rows) then dx_s += du_s·A_a, or with a W0 table
//   dx_s = [dy_s | du_s]·[W_a ; A_a]. FLOP 2·M·r·(2·out + in) + 2·M·in·(out + r).
#include <algorithm>
#include <vector>

#include "check.h"
#include "gemm.h"
#include "gemv.h"
#include "gemv_tn.h"

namespace lk::cpu {
namespace {

struct Segment {
    int64_t start, length, adapter;
};

// The per-adapter slices of the tables (each may be NULL when unused).
struct Tables {
    int64_t in, out, r;
    const float* W0_table;
    const float* A_table;
    const float* B_table;
    const float* scales;
    const float* W(int64_t a) const { return W0_table + a * out * in; }
    const float* A(int64_t a) const { return A_table + a * r * in; }
    const float* B(int64_t a) const { return B_table + a * out * r; }
};

std::vector<Segment> read_segments(const int32_t* segments, int64_t n_segments) {
    std::vector<Segment> list((size_t)n_segments);
    for (int64_t s = 0; s < n_segments; ++s)
        list[(size_t)s] = {segments[3 * s], segments[3 * s + 1], segments[3 * s + 2]};
    return list;
}

// Each segment inside [0, M) with an adapter in [-1, n_adapters), no row in two segments, and with
// a table base every row in a segment of an adapter >= 0. Names the first offending segment.
lk_status check_segments(const char* fn, int64_t M, int64_t n_adapters, const int32_t* segments,
                         int64_t n_segments, bool every_row_needs_adapter) {
    std::vector<int64_t> owner((size_t)M, -1);  // which segment holds each row
    for (int64_t s = 0; s < n_segments; ++s) {
        const int64_t start = segments[3 * s], length = segments[3 * s + 1], adapter = segments[3 * s + 2];
        if (start < 0 || length < 0 || start + length > M)
            return lk::fail(LK_ERR_INVALID_ARGUMENT,
                            "%s: segment %lld = (start %lld, length %lld) is not inside the %lld rows of x",
                            fn, (long long)s, (long long)start, (long long)length, (long long)M);
        if (adapter < -1 || adapter >= n_adapters)
            return lk::fail(LK_ERR_INVALID_ARGUMENT,
                            "%s: segment %lld has adapter %lld; it must be -1 (none) or in [0, %lld)", fn,
                            (long long)s, (long long)adapter, (long long)n_adapters);
        for (int64_t m = start; m < start + length; ++m) {
            if (owner[(size_t)m] >= 0)
                return lk::fail(LK_ERR_INVALID_ARGUMENT, "%s: segments %lld and %lld overlap at row %lld", fn,
                                (long long)owner[(size_t)m], (long long)s, (long long)m);
            owner[(size_t)m] = adapter >= 0 ? s : -2 - s;  // -2 - s: held by s, without an adapter
        }
    }
    if (every_row_needs_adapter)
        for (int64_t m = 0; m < M; ++m)
            if (owner[(size_t)m] < 0)
                return lk::fail(LK_ERR_INVALID_ARGUMENT,
                                "%s: row %lld is in no segment with an adapter, but with W0_table every row's "
                                "base is its segment's adapter's",
                                fn, (long long)m);
    return LK_OK;
}

// A segment of at most kGemvMaxRows rows, on the calling thread: dot products that read each row
// of W_a, A_a and B_a once for all the segment's rows.
void forward_short_segment(const Segment& s, const Tables& t, const float* x, const float* bias, float* y,
                           float* u) {
    const int64_t in = t.in, out = t.out, r = t.r, a = s.adapter;
    const float* xs = x + s.start * in;
    float* ys = y + s.start * out;
    if (t.W0_table != nullptr)
        gemv_nt(s.length, out, in, xs, in, t.W(a), in, [=](int64_t m, int64_t j, float dot) {
            ys[m * out + j] = dot + (bias != nullptr ? bias[j] : 0.0f);
        });
    if (r == 0) return;
    float* us = u + s.start * r;
    gemv_nt(s.length, r, in, xs, in, t.A(a), in, [=](int64_t m, int64_t j, float dot) { us[m * r + j] = dot; });
    const float scale = t.scales[a];
    gemv_nt(s.length, out, r, us, r, t.B(a), r,
            [=](int64_t m, int64_t j, float dot) { ys[m * out + j] += scale * dot; });
}

// A longer segment through the packed GEMM (threaded inside).
void forward_long_segment(const Segment& s, const Tables& t, const float* x, const float* bias, float* y,
                          float* u) {
    const int64_t in = t.in, out = t.out, r = t.r, a = s.adapter;
    const float* xs = x + s.start * in;
    float* us = r > 0 ? u + s.start * r : nullptr;
    if (r > 0) {
        GemmOutput u_out;
        u_out.c = us;
        u_out.ldc = r;
        gemm(s.length, r, Operand(matrix_piece(xs, in, false, in)), Operand(matrix_piece(t.A(a), in, true, in)), u_out);
    }
    GemmOutput y_out;
    y_out.c = y + s.start * out;
    y_out.ldc = out;
    if (t.W0_table != nullptr) {
        y_out.bias = bias;
        const float scale = r > 0 ? t.scales[a] : 0.0f;
        gemm(s.length, out, Operand(matrix_piece(xs, in, false, in), matrix_piece(us, r, false, r, scale)),
             Operand(matrix_piece(t.W(a), in, true, in), matrix_piece(r > 0 ? t.B(a) : nullptr, r, true, r)), y_out);
    } else if (r > 0) {
        y_out.beta = 1.0f;
        gemm(s.length, out, Operand(matrix_piece(us, r, false, r, t.scales[a])),
             Operand(matrix_piece(t.B(a), r, true, r)), y_out);
    }
}

void forward(int64_t M, const Tables& t, const float* x, const float* W0, const float* bias,
             const std::vector<Segment>& segments, float* y, float* u) {
    const int64_t in = t.in, out = t.out, r = t.r;
    if (r > 0) std::fill(u, u + M * r, 0.0f);
    if (W0 != nullptr) {
        if (M <= kGemvMaxRows) {
            gemv_nt(M, out, in, x, in, W0, in, [=](int64_t m, int64_t j, float dot) {
                y[m * out + j] = dot + (bias != nullptr ? bias[j] : 0.0f);
            });
        } else {
            GemmOutput y_out;
            y_out.c = y;
            y_out.ldc = out;
            y_out.bias = bias;
            gemm(M, out, Operand(matrix_piece(x, in, false, in)), Operand(matrix_piece(W0, in, true, in)), y_out);
        }
    }
    std::vector<const Segment*> short_segments;
    for (const Segment& s : segments) {
        if (s.adapter < 0 || s.length == 0 || (r == 0 && t.W0_table == nullptr)) continue;
        if (s.length <= kGemvMaxRows)
            short_segments.push_back(&s);
        else
            forward_long_segment(s, t, x, bias, y, u);
    }
    // Short segments side by side (each on one thread; gemv_nt runs alone inside the region). One
    // short segment alone keeps the threads for its own products.
    const int64_t count = (int64_t)short_segments.size();
    const int threads = (int)std::min<int64_t>(thread_count(), count);
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1)
    for (int64_t i = 0; i < count; ++i) forward_short_segment(*short_segments[(size_t)i], t, x, bias, y, u);
}

void backward(int64_t M, const Tables& t, const float* x, const float* W0, const float* u, const float* dy,
              const std::vector<Segment>& segments, int64_t n_adapters, float* dx, float* dA_table,
              float* dB_table) {
    const int64_t in = t.in, out = t.out, r = t.r;
    const bool lora = r > 0;
    std::vector<float> du;
    if (lora && (dx != nullptr || dA_table != nullptr)) du.assign((size_t)(M * r), 0.0f);
    if (lora && dB_table != nullptr) std::fill(dB_table, dB_table + n_adapters * out * r, 0.0f);
    if (lora && dA_table != nullptr) std::fill(dA_table, dA_table + n_adapters * r * in, 0.0f);
    if (dx != nullptr && W0 != nullptr) {
        if (M <= kGemvMaxRows) {
            const GemvTnTerm terms[] = {{out, dy, out, W0, in}};
            gemv_tn(M, in, terms, /*zero_c=*/true, dx, in);
        } else {
            GemmOutput dx_out;
            dx_out.c = dx;
            dx_out.ldc = in;
            gemm(M, in, Operand(matrix_piece(dy, out, false, out)), Operand(matrix_piece(W0, in, false, out)), dx_out);
        }
    }
    for (const Segment& s : segments) {
        const int64_t a = s.adapter;
        if (a < 0 || s.length == 0) continue;
        const float* dys = dy + s.start * out;
        const float* xs = x + s.start * in;
        float* dus = lora && !du.empty() ? du.data() + s.start * r : nullptr;
        const float scale = lora ? t.scales[a] : 0.0f;
        if (dus != nullptr) {
            GemmOutput du_out;
            du_out.c = dus;
            du_out.ldc = r;
            du_out.alpha = scale;
            gemm(s.length, r, Operand(matrix_piece(dys, out, false, out)), Operand(matrix_piece(t.B(a), r, false, out)),
                 du_out);
        }
        if (lora && dB_table != nullptr) {
            GemmOutput dB_out;
            dB_out.c = dB_table + a * out * r;
            dB_out.ldc = r;
            dB_out.alpha = scale;
            dB_out.beta = 1.0f;
            gemm(out, r, Operand(matrix_piece(dys, out, true, s.length)),
                 Operand(matrix_piece(u + s.start * r, r, false, s.length)), dB_out);
        }
        if (lora && dA_table != nullptr) {
            GemmOutput dA_out;
            dA_out.c = dA_table + a * r * in;
            dA_out.ldc = in;
            dA_out.beta = 1.0f;
            gemm(r, in, Operand(matrix_piece(dus, r, true, s.length)), Operand(matrix_piece(xs, in, false, s.length)),
                 dA_out);
        }
        if (dx == nullptr) continue;
        GemmOutput dx_out;
        dx_out.c = dx + s.start * in;
        dx_out.ldc = in;
        if (t.W0_table != nullptr) {
            gemm(s.length, in, Operand(matrix_piece(dys, out, false, out), matrix_piece(dus, r, false, lora ? r : 0)),
                 Operand(matrix_piece(t.W(a), in, false, out), matrix_piece(lora ? t.A(a) : nullptr, in, false, lora ? r : 0)),
                 dx_out);
        } else if (lora) {
            dx_out.beta = 1.0f;
            gemm(s.length, in, Operand(matrix_piece(dus, r, false, r)), Operand(matrix_piece(t.A(a), in, false, r)), dx_out);
        }
    }
}

// The checks both exports share: sizes, the base (exactly one of W0 and W0_table), the tables r
// needs, and the segment table.
ArgCheck& check_common(ArgCheck& check, int64_t M, int64_t in, int64_t out, int64_t r, int64_t n_adapters,
                       const float* W0, const float* W0_table, const float* A_table, const float* B_table,
                       const float* scales, const int32_t* segments, int64_t n_segments, bool needs_base) {
    const bool adapters = r > 0 && n_adapters > 0;
    check.nonnegative("M", M)
        .nonnegative("in", in)
        .nonnegative("out", out)
        .nonnegative("r", r)
        .nonnegative("n_adapters", n_adapters)
        .nonnegative("n_segments", n_segments)
        .not_null("segments", segments, n_segments > 0)
        .not_null("W0 or W0_table", W0 != nullptr ? W0 : W0_table, needs_base && out > 0 && in > 0)
        .not_null("A_table", A_table, adapters && in > 0)
        .not_null("B_table", B_table, adapters && out > 0)
        .not_null("scales", scales, adapters);
    return check;
}

// The base is a dense W0 or a table of them, never both.
lk_status check_one_base(const char* fn, const float* W0, const float* W0_table) {
    if (W0 != nullptr && W0_table != nullptr)
        return lk::fail(LK_ERR_INVALID_ARGUMENT, "%s: W0 and W0_table are both given; pass one base and NULL for the other", fn);
    return LK_OK;
}

}  // namespace
}  // namespace lk::cpu

using lk::cpu::ArgCheck;

LK_API lk_status lk_cpu_segmented_forward(int64_t M, int64_t in, int64_t out, int64_t r, int64_t n_adapters,
                                          const float* x, const float* W0, const float* W0_table, const float* bias,
                                          const float* A_table, const float* B_table, const float* scales,
                                          const int32_t* segments, int64_t n_segments, float* y, float* u) {
    static const char* const fn = "lk_cpu_segmented_forward";
    ArgCheck check(fn);
    lk::cpu::check_common(check, M, in, out, r, n_adapters, W0, W0_table, A_table, B_table, scales, segments,
                          n_segments, /*needs_base=*/true)
        .not_null("x", x, M > 0 && in > 0)
        .not_null("y", y, M > 0 && out > 0)
        .not_null("u", u, M > 0 && r > 0);
    if (!check.ok()) return check.status();
    if (const lk_status one = lk::cpu::check_one_base(fn, W0, W0_table); one != LK_OK) return one;
    const lk_status segments_ok =
        lk::cpu::check_segments(fn, M, n_adapters, segments, n_segments, W0_table != nullptr && M > 0);
    if (segments_ok != LK_OK) return segments_ok;
    return lk::cpu::guarded(fn, [&] {
        const lk::cpu::Tables tables{in, out, r, W0_table, A_table, B_table, scales};
        lk::cpu::forward(M, tables, x, W0, bias, lk::cpu::read_segments(segments, n_segments), y, u);
        return LK_OK;
    });
}

LK_API lk_status lk_cpu_segmented_backward(int64_t M, int64_t in, int64_t out, int64_t r, int64_t n_adapters,
                                           const float* x, const float* W0, const float* W0_table,
                                           const float* A_table, const float* B_table, const float* scales,
                                           const float* u, const float* dy, const int32_t* segments,
                                           int64_t n_segments, float* dx, float* dA_table, float* dB_table) {
    static const char* const fn = "lk_cpu_segmented_backward";
    const bool want_dA = dA_table != nullptr && r > 0, want_dB = dB_table != nullptr && r > 0;
    ArgCheck check(fn);
    lk::cpu::check_common(check, M, in, out, r, n_adapters, W0, W0_table, A_table, B_table, scales, segments,
                          n_segments, /*needs_base=*/dx != nullptr)
        .not_null("dy", dy, M > 0 && out > 0 && (dx != nullptr || want_dA || want_dB))
        .not_null("x", x, want_dA && M > 0 && in > 0)
        .not_null("u", u, want_dB && M > 0);
    if (!check.ok()) return check.status();
    if (const lk_status one = lk::cpu::check_one_base(fn, W0, W0_table); one != LK_OK) return one;
    const lk_status segments_ok =
        lk::cpu::check_segments(fn, M, n_adapters, segments, n_segments, W0_table != nullptr && dx != nullptr && M > 0);
    if (segments_ok != LK_OK) return segments_ok;
    return lk::cpu::guarded(fn, [&] {
        const lk::cpu::Tables tables{in, out, r, W0_table, A_table, B_table, scales};
        lk::cpu::backward(M, tables, x, W0, u, dy, lk::cpu::read_segments(segments, n_segments), n_adapters, dx,
                          dA_table, dB_table);
        return LK_OK;
    });
}
