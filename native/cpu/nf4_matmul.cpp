// nf4_matmul.cpp: products with a 4-bit quantized weight W [out, in] (nf4_format.h) that never
// materialise deq(W): lk_cpu_nf4_matmul, lk_cpu_qlora_forward, lk_cpu_qlora_backward.
//
// Decode path, M <= kDecodeMaxRows (y = x deq(W)^T): bound by streaming the codes, so they are
//   read exactly once, threads owning contiguous ranges of W's rows. With AVX-512 and in a
//   multiple of the blocksize (every row starts on a block and a byte) the rows are dequantized
//   in registers (nf4_avx512.cpp); otherwise each row is decoded into an in-float scratch row
//   (L1/L2) and dotted with every row of x. Bias and s*u*B^T are added per output row by the
//   thread that computed it. Bytes: out*(in/2 + 4*in/blocksize) + 4*M*(in + out); FLOP 2*M*in*out.
// Tiled path, larger M: W is dequantized a slab of kSlabFloats at a time (slab rows x in,
//   within L3) and the slab goes through the packed GEMM engine as R = [slab^T ; B_slab^T] with
//   L = [x | s*u], so the LoRA term and the bias ride along in the same pass over y. Every code
//   is decoded once; x is packed once per slab. FLOP 2*M*out*(in + r).
// QLoRA forward: u = dropout(x) A^T first (lk_cpu_lora_forward with out = 0: its u pass and
//   dropout mask exactly), then the y pass above.
// QLoRA backward: du = s*dy*B; dx = dy*deq(W) + dropout'(du*A) with W's rows (the reduction
//   dimension here) dequantized one slab at a time into the GEMM (dx accumulated with beta = 1),
//   the du*A term riding along in the first slab's product, or written first through the
//   engine's masked write-back when dropout is on. dA and dB come from lk_cpu_lora_backward
//   itself (W0 = NULL, dx = NULL), which recomputes du (M*out*r FLOP, small next to dx).
#include <omp.h>

#include <algorithm>
#include <vector>

#include "check.h"
#include "gemm.h"
#include "isa.h"
#include "nf4_format.h"
#include "parallel.h"

namespace lk::cpu {
namespace {

// Up to this many rows of x the product streams the codes once (decode path); past it the
// packed GEMM's register tiling wins even with a dequantized slab to write and read.
constexpr int64_t kDecodeMaxRows = 16;
// The tiled path's slab of dequantized W: 8 MiB, within the L3 cache.
constexpr int64_t kSlabFloats = int64_t{1} << 21;
// A decode-path thread should stream at least this many weights (a fork/join costs microseconds).
constexpr int64_t kWeightsPerThread = int64_t{1} << 18;

// Whether the AVX-512 kernels apply: they are active and every row of W starts on a block (hence
// byte) boundary.
bool register_path(const lk_quant_stats& stats, int64_t in) {
    return nf4_avx512_active() && in % stats.blocksize == 0;
}

// sum a[i] * b[i] in 8 interleaved partial sums (which the compiler vectorizes).
float dot(const float* a, const float* b, int64_t n) {
    float partial[8] = {};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; ++l) partial[l] += a[i + l] * b[i + l];
    float sum = 0.0f;
    for (; i < n; ++i) sum += a[i] * b[i];
    for (int l = 0; l < 8; ++l) sum += partial[l];
    return sum;
}

// x [M, in] with each 32-run split into its even then its odd elements (nf4_kernels.h).
std::vector<float> split_even_odd(int64_t M, int64_t in, const float* x) {
    std::vector<float> split((size_t)(M * in));
    for (int64_t m = 0; m < M; ++m)
        for (int64_t c = 0; c < in; c += 32)
            for (int i = 0; i < 16; ++i) {
                split[(size_t)(m * in + c + i)] = x[m * in + c + 2 * i];
                split[(size_t)(m * in + c + 16 + i)] = x[m * in + c + 2 * i + 1];
            }
    return split;
}

// y [M, out] = x deq(W)^T + bias + scale * u B^T for M <= kDecodeMaxRows.
void decode_forward(int64_t M, int64_t in, int64_t out, int64_t r, const float* x,
                    const uint8_t* codes, const lk_quant_stats& stats, const float* bias,
                    const float* B, float scale, const float* u, float* y) {
    const bool registers = register_path(stats, in);
    const std::vector<float> x_split = registers ? split_even_odd(M, in, x) : std::vector<float>();
    [[maybe_unused]] const Nf4Matrix w = nf4_matrix(codes, stats);
    const int threads =
        (int)std::max<int64_t>(1, std::min<int64_t>(thread_count(), out * in / kWeightsPerThread));
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        int64_t g0, g1;  // groups of 4 rows, so a thread's range keeps the kernel's 4-row tiles
        thread_share((out + 3) / 4, omp_get_thread_num(), omp_get_num_threads(), g0, g1);
        const int64_t j0 = g0 * 4, j1 = std::min(out, g1 * 4);
        if (registers) {
#if defined(LK_CPU_X86)
            nf4_dot_rows_avx512(w, in, j0, j1, M, x_split.data(), in, y, out);
#endif
        } else {
            std::vector<float> row((size_t)in);
            for (int64_t j = j0; j < j1; ++j) {
                decode_range(codes, stats, j * in, in, row.data());
                for (int64_t m = 0; m < M; ++m) y[m * out + j] = dot(x + m * in, row.data(), in);
            }
        }
        for (int64_t m = 0; m < M; ++m)
            for (int64_t j = j0; j < j1; ++j) {
                float v = y[m * out + j];
                if (bias != nullptr) v += bias[j];
                if (r > 0) v += scale * dot(u + m * r, B + j * r, r);
                y[m * out + j] = v;
            }
    }
}

int64_t slab_rows(int64_t row_length) {
    return std::max<int64_t>(16, kSlabFloats / std::max<int64_t>(1, row_length));
}

// slab [rows, in] = deq(W) rows [j0, j0 + rows), decoded by all threads.
void decode_slab(const uint8_t* codes, const lk_quant_stats& stats, int64_t in, int64_t j0,
                 int64_t rows, float* slab) {
    const bool registers = register_path(stats, in);
    [[maybe_unused]] const Nf4Matrix w = nf4_matrix(codes, stats);
    const int threads = elementwise_threads(rows * in);
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        int64_t begin, end;
        thread_share(rows, omp_get_thread_num(), omp_get_num_threads(), begin, end);
        if (registers) {
#if defined(LK_CPU_X86)
            nf4_decode_rows_avx512(w, in, j0 + begin, j0 + end, slab + begin * in);
#endif
        } else {
            for (int64_t i = begin; i < end; ++i)
                decode_range(codes, stats, (j0 + i) * in, in, slab + i * in);
        }
    }
}

void tiled_forward(int64_t M, int64_t in, int64_t out, int64_t r, const float* x,
                   const uint8_t* codes, const lk_quant_stats& stats, const float* bias,
                   const float* B, float scale, const float* u, float* y) {
    const int64_t step = slab_rows(in);
    std::vector<float> slab((size_t)(std::min(step, out) * in));
    for (int64_t j0 = 0; j0 < out; j0 += step) {
        const int64_t rows = std::min(step, out - j0);
        decode_slab(codes, stats, in, j0, rows, slab.data());
        GemmOutput y_out;
        y_out.c = y + j0;
        y_out.ldc = out;
        y_out.bias = bias != nullptr ? bias + j0 : nullptr;
        gemm(M, rows, Operand(matrix_piece(x, in, false, in), matrix_piece(u, r, false, r, scale)),
             Operand(matrix_piece(slab.data(), in, true, in), matrix_piece(B + j0 * r, r, true, r)),
             y_out);
    }
}

void forward(int64_t M, int64_t in, int64_t out, int64_t r, const float* x, const uint8_t* codes,
             const lk_quant_stats& stats, const float* bias, const float* B, float scale,
             const float* u, float* y) {
    if (M == 0 || out == 0) return;
    if (in == 0) {
        // No weights to read: y = bias + s*u*B^T (u is 0 here, r's products reduce nothing).
        for (int64_t m = 0; m < M; ++m)
            for (int64_t j = 0; j < out; ++j) y[m * out + j] = bias != nullptr ? bias[j] : 0.0f;
        return;
    }
    if (M <= kDecodeMaxRows)
        decode_forward(M, in, out, r, x, codes, stats, bias, B, scale, u, y);
    else
        tiled_forward(M, in, out, r, x, codes, stats, bias, B, scale, u, y);
}

// dx [M, in] = dy deq(W) + dropout'(du A).
void backward_dx(int64_t M, int64_t in, int64_t out, int64_t r, const uint8_t* codes,
                 const lk_quant_stats& stats, const float* A, const float* B, const float* dy,
                 float scale, float dropout_p, uint64_t seed, float* dx) {
    if (M == 0 || in == 0) return;
    if (out == 0) {  // dy has no columns, so dy*deq(W) and du = s*dy*B are both zero
        std::fill(dx, dx + M * in, 0.0f);
        return;
    }
    std::vector<float> du;
    if (r > 0) {
        du.resize((size_t)(M * r));
        GemmOutput du_out;
        du_out.c = du.data();
        du_out.ldc = r;
        du_out.alpha = scale;
        gemm(M, r, Operand(matrix_piece(dy, out, false, out)),
             Operand(matrix_piece(B, r, false, out)), du_out);
    }
    GemmOutput dx_out;
    dx_out.c = dx;
    dx_out.ldc = in;
    bool lora_pending = r > 0;
    if (lora_pending && dropout_p > 0.0f) {
        GemmOutput masked = dx_out;
        masked.dropout_p = dropout_p;
        masked.dropout_seed = seed;
        gemm(M, in, Operand(matrix_piece(du.data(), r, false, r)),
             Operand(matrix_piece(A, in, false, r)), masked);
        dx_out.beta = 1.0f;
        lora_pending = false;
    }
    const int64_t step = slab_rows(in);
    std::vector<float> slab((size_t)(std::min(step, out) * in));
    for (int64_t j0 = 0; j0 < out; j0 += step) {
        const int64_t rows = std::min(step, out - j0);
        decode_slab(codes, stats, in, j0, rows, slab.data());
        Operand left(matrix_piece(dy + j0, out, false, rows));
        Operand right(matrix_piece(slab.data(), in, false, rows));
        if (lora_pending) {
            left.append(matrix_piece(du.data(), r, false, r));
            right.append(matrix_piece(A, in, false, r));
            lora_pending = false;
        }
        gemm(M, in, left, right, dx_out);
        dx_out.beta = 1.0f;
    }
}

bool valid_weight(const char* fn, int64_t out, int64_t in, const uint8_t* codes,
                  const lk_quant_stats* stats, lk_status* status) {
    if (!valid_stats(fn, stats, out * in, status)) return false;
    if (out > 0 && in > 0 && codes == nullptr) {
        *status = lk::fail(LK_ERR_INVALID_ARGUMENT, "%s: codes is NULL", fn);
        return false;
    }
    return true;
}

}  // namespace
}  // namespace lk::cpu

using lk::cpu::ArgCheck;

LK_API lk_status lk_cpu_qlora_forward(int64_t M, int64_t in, int64_t out, int64_t r, const float* x,
                                      const uint8_t* codes, const lk_quant_stats* stats,
                                      const float* bias, const float* A, const float* B,
                                      float scale, float dropout_p, uint64_t seed, float* y,
                                      float* u) {
    static const char* const fn = "lk_cpu_qlora_forward";
    ArgCheck check(fn);
    check.nonnegative("M", M)
        .nonnegative("in", in)
        .nonnegative("out", out)
        .nonnegative("r", r)
        .not_null("x", x, M > 0 && in > 0)
        .not_null("A", A, r > 0 && in > 0)
        .not_null("B", B, r > 0 && out > 0)
        .not_null("y", y, M > 0 && out > 0)
        .not_null("u", u, M > 0 && r > 0)
        .in_half_open_range("dropout_p", dropout_p, 0.0f, 1.0f);
    if (!check.ok()) return check.status();
    lk_status status = LK_OK;
    if (!lk::cpu::valid_weight(fn, out, in, codes, stats, &status)) return status;
    return lk::cpu::guarded(fn, [&]() -> lk_status {
        if (r > 0 && M > 0) {
            const lk_status u_status = lk_cpu_lora_forward(
                M, in, 0, r, x, nullptr, nullptr, A, nullptr, scale, dropout_p, seed, nullptr, u);
            if (u_status != LK_OK) return u_status;
        }
        lk::cpu::forward(M, in, out, r, x, codes, *stats, bias, B, scale, u, y);
        return LK_OK;
    });
}

LK_API lk_status lk_cpu_nf4_matmul(int64_t M, int64_t in, int64_t out, const float* x,
                                   const uint8_t* codes, const lk_quant_stats* stats,
                                   const float* bias, float* y) {
    static const char* const fn = "lk_cpu_nf4_matmul";
    ArgCheck check(fn);
    check.nonnegative("M", M)
        .nonnegative("in", in)
        .nonnegative("out", out)
        .not_null("x", x, M > 0 && in > 0)
        .not_null("y", y, M > 0 && out > 0);
    if (!check.ok()) return check.status();
    lk_status status = LK_OK;
    if (!lk::cpu::valid_weight(fn, out, in, codes, stats, &status)) return status;
    return lk::cpu::guarded(fn, [&]() -> lk_status {
        lk::cpu::forward(M, in, out, 0, x, codes, *stats, bias, nullptr, 0.0f, nullptr, y);
        return LK_OK;
    });
}

LK_API lk_status lk_cpu_qlora_backward(int64_t M, int64_t in, int64_t out, int64_t r,
                                       const float* x, const uint8_t* codes,
                                       const lk_quant_stats* stats, const float* A, const float* B,
                                       const float* u, const float* dy, float scale,
                                       float dropout_p, uint64_t seed, float* dx, float* dA,
                                       float* dB) {
    static const char* const fn = "lk_cpu_qlora_backward";
    const bool want_dx = dx != nullptr;
    const bool want_lora = r > 0 && (dA != nullptr || dB != nullptr);
    ArgCheck check(fn);
    check.nonnegative("M", M)
        .nonnegative("in", in)
        .nonnegative("out", out)
        .nonnegative("r", r)
        .not_null("dy", dy, M > 0 && out > 0 && (want_dx || want_lora))
        .not_null("x", x, r > 0 && dA != nullptr && M > 0 && in > 0)
        .not_null("u", u, r > 0 && dB != nullptr && M > 0)
        .not_null("A", A, want_dx && r > 0 && in > 0)
        .not_null("B", B, (want_dx || dA != nullptr) && r > 0 && out > 0)
        .in_half_open_range("dropout_p", dropout_p, 0.0f, 1.0f);
    if (!check.ok()) return check.status();
    lk_status status = LK_OK;
    if (want_dx && !lk::cpu::valid_weight(fn, out, in, codes, stats, &status)) return status;
    return lk::cpu::guarded(fn, [&]() -> lk_status {
        if (want_lora) {
            // dA, dB exactly as the dense backward computes them (it validates x, B, u).
            const lk_status lora_status = lk_cpu_lora_backward(
                M, in, out, r, x, nullptr, A, B, u, dy, scale, dropout_p, seed, nullptr, dA, dB);
            if (lora_status != LK_OK) return lora_status;
        }
        if (want_dx)
            lk::cpu::backward_dx(M, in, out, r, codes, *stats, A, B, dy, scale, dropout_p, seed,
                                 dx);
        return LK_OK;
    });
}
