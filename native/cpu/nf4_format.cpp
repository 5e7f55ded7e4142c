// nf4_format.cpp: bitsandbytes' 4-bit blockwise formats on the CPU: the tables, quantize,
// dequantize and double quantization (REFERENCE.md §8.1-8.4, nf4_format.h for the tables).
//
// Quantize (per block of `blocksize` consecutive elements of the flattened tensor, one block per
// loop iteration, blocks split over the OpenMP threads):
//   absmax = max |w| (stored as is); x = w * (1 / max(absmax, 1e-38)) - multiplication by the
//   fp32 reciprocal as bnb; the clamp is bnb's CPU backend's and makes an all-zero block x = 0,
//   i.e. NF4 code 7 / FP4 code 0 (REFERENCE.md §11) instead of CUDA's 0 * inf = NaN -> code 0.
//   NF4: code = number of the 15 float32 midpoints x strictly exceeds (bnb's strict '>' tree, so a
//   value exactly on a midpoint takes the lower code); FP4: bnb's decision tree on |x|, sign bit
//   set iff x < 0. Blocksizes are even, so every block but an odd-length last one fills whole
//   bytes; the odd tail's low nibble holds the code of 0.0.
//   Inputs are scanned for NaN/Inf first, so a rejected call writes nothing.
//   Bytes: 4n read twice (scan, quantize) + n/2 + 4n/blocksize written; ~20 flops per element.
// Dequantize: w = table[code] * absmax[block], the absmax decoded from nested statistics once
//   per block; whole blocks through the AVX-512 lookup of nf4_avx512.cpp where available, the
//   rest (the last partial block, other ISAs) scalar. Bytes n/2 + 4n/blocksize read, 4n written.
// Double quantization (bnb compress_statistics): offset = mean(absmax) as an fp32 pairwise sum
//   (runs of at most 8 summed left to right, halves added recursively: deterministic, error
//   ~log2(n) ulp instead of a plain loop's ~n) divided by nblocks in fp32 - bnb takes torch's
//   fp32 mean, whose tree order differs, so offsets agree to rounding, not bit for bit.
//   Then per nested block of 256: absmax2 = max |absmax - offset| and qabsmax = bnb's dQuantize
//   (binary search from pivot 127, then a midpoint comparison: '>' mid goes up, '<' mid goes down,
//   exactly on the midpoint stays at the pivot) of (absmax - offset) * (1 / absmax2). A nested
//   block whose absmax all equal the offset (absmax2 = 0) encodes code 127 (exact 0.0), so it
//   decodes to the offset exactly instead of bnb's NaN-driven search result.
#include <omp.h>

#include <algorithm>
#include <cmath>

#include "check.h"
#include "isa.h"
#include "nf4_format.h"
#include "parallel.h"

namespace lk::cpu {

namespace {

QuantTables build_tables() {
    QuantTables t;
    for (int i = 0; i < 16; ++i) t.nf4[i] = float_from_bits(lk_nf4_code_bits[i]);
    for (int i = 0; i < 16; ++i) t.fp4[i] = float_from_bits(lk_fp4_code_bits[i]);
    for (int i = 0; i < 256; ++i) t.dynamic_signed[i] = float_from_bits(lk_dynamic_signed_bits[i]);
    return t;
}

const QuantTables g_tables = build_tables();

// bnb's CPU backend clamps absmax to at least this before taking the reciprocal.
constexpr float kMinAbsmax = 1e-38f;

// A dynamic map held as floats (the table lk_dynamic_encode searches).
struct FloatCode {
    const float* values;
    float operator()(int i) const { return values[i]; }
};

// Pairwise fp32 sum: runs of at most 8 left to right, the two halves added recursively.
float pairwise_sum(const float* a, int64_t n) {
    if (n <= 8) {
        float s = 0.0f;
        for (int64_t i = 0; i < n; ++i) s += a[i];
        return s;
    }
    const int64_t half = n / 2;
    return pairwise_sum(a, half) + pairwise_sum(a + half, n - half);
}

// The first index of a NaN or Inf in a[n], or -1.
int64_t first_non_finite(const float* a, int64_t n) {
    int64_t index = -1;
    lk_cpu_first_nonfinite(n, a, &index);  // cannot fail: n >= 0 and a non-null when n > 0
    return index;
}

void quantize(int32_t quant_type, int64_t n, int64_t blocksize, const float* w, uint8_t* codes,
              float* absmax) {
    const int64_t nblocks = ceil_div64(n, blocksize);
    const int threads = elementwise_threads(n);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t b = 0; b < nblocks; ++b) {
        const int64_t lo = b * blocksize, hi = std::min(n, lo + blocksize);
        float amax = 0.0f;
        for (int64_t e = lo; e < hi; ++e) amax = std::max(amax, std::fabs(w[e]));
        absmax[b] = amax;
        const float recip = 1.0f / std::max(amax, kMinAbsmax);
        auto code_of = [&](float v) {
            const float x = v * recip;
            return lk_encode_4bit(x, quant_type);
        };
        int64_t e = lo;
        for (; e + 1 < hi; e += 2) codes[e / 2] = (uint8_t)(code_of(w[e]) << 4 | code_of(w[e + 1]));
        if (e < hi) {  // odd n: the last element, padded with the code of 0.0
            codes[e / 2] = (uint8_t)(code_of(w[e]) << 4 | lk_zero_code(quant_type));
        }
    }
}

void dequantize(int64_t n, const uint8_t* codes, const lk_quant_stats& stats, float* w) {
    const QuantTables& tables = quant_tables();
    const float* table = stats.quant_type == LK_QUANT_NF4 ? tables.nf4 : tables.fp4;
    const int64_t blocksize = stats.blocksize;
    const int64_t nblocks = ceil_div64(n, blocksize);
    // Whole blocks go through the AVX-512 decode (each block a row of length blocksize).
    const int64_t vector_blocks = nf4_avx512_active() ? n / blocksize : 0;
    [[maybe_unused]] const Nf4Matrix matrix = nf4_matrix(codes, stats);
    const int threads = elementwise_threads(n);
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        int64_t b0, b1;
        thread_share(nblocks, omp_get_thread_num(), omp_get_num_threads(), b0, b1);
        const int64_t vector_end = std::max(b0, std::min(b1, vector_blocks));
#if defined(LK_CPU_X86)
        if (vector_end > b0)
            nf4_decode_rows_avx512(matrix, blocksize, b0, vector_end, w + b0 * blocksize);
#endif
        for (int64_t b = vector_end; b < b1; ++b) {
            const float amax = block_absmax(stats, tables.dynamic_signed, b);
            float scaled[16];
            for (int i = 0; i < 16; ++i) scaled[i] = table[i] * amax;
            const int64_t lo = b * blocksize, hi = std::min(n, lo + blocksize);
            int64_t e = lo;
            for (; e + 1 < hi; e += 2) {
                const uint8_t byte = codes[e / 2];
                w[e] = scaled[byte >> 4];
                w[e + 1] = scaled[byte & 15];
            }
            if (e < hi) w[e] = scaled[codes[e / 2] >> 4];
        }
    }
}

void double_quantize(int64_t nblocks, const float* absmax, uint8_t* qabsmax, float* absmax2,
                     float* offset) {
    const float* code = quant_tables().dynamic_signed;
    const float mean = nblocks > 0 ? pairwise_sum(absmax, nblocks) / (float)nblocks : 0.0f;
    *offset = mean;
    const int64_t nested = ceil_div64(nblocks, LK_NESTED_BLOCKSIZE);
    for (int64_t c = 0; c < nested; ++c) {
        const int64_t lo = c * LK_NESTED_BLOCKSIZE;
        const int64_t hi = std::min(nblocks, lo + LK_NESTED_BLOCKSIZE);
        float amax2 = 0.0f;
        for (int64_t b = lo; b < hi; ++b) amax2 = std::max(amax2, std::fabs(absmax[b] - mean));
        absmax2[c] = amax2;
        if (amax2 == 0.0f) {
            std::fill(qabsmax + lo, qabsmax + hi, (uint8_t)127);
            continue;
        }
        const float recip = 1.0f / amax2;
        for (int64_t b = lo; b < hi; ++b)
            qabsmax[b] = (uint8_t)lk_dynamic_encode((absmax[b] - mean) * recip, FloatCode{code});
    }
}

}  // namespace

const QuantTables& quant_tables() { return g_tables; }

Nf4Matrix nf4_matrix(const uint8_t* codes, const lk_quant_stats& stats) {
    Nf4Matrix w;
    w.codes = codes;
    w.blocksize = stats.blocksize;
    w.table = stats.quant_type == LK_QUANT_NF4 ? g_tables.nf4 : g_tables.fp4;
    w.absmax = stats.absmax;
    w.qabsmax = stats.qabsmax;
    w.absmax2 = stats.absmax2;
    w.offset = stats.offset;
    w.dynamic_map = g_tables.dynamic_signed;
    return w;
}

// dst[i] = deq(W) at flattened index e0 + i, i < len (any alignment: blocks and bytes may be
// entered in the middle).
void decode_range(const uint8_t* codes, const lk_quant_stats& stats, int64_t e0, int64_t len,
                  float* dst) {
    const QuantTables& tables = quant_tables();
    const float* table = stats.quant_type == LK_QUANT_NF4 ? tables.nf4 : tables.fp4;
    const int64_t end = e0 + len;
    for (int64_t e = e0; e < end;) {
        const int64_t b = e / stats.blocksize;
        const int64_t stop = std::min(end, (b + 1) * stats.blocksize);
        const float amax = block_absmax(stats, tables.dynamic_signed, b);
        float scaled[16];
        for (int i = 0; i < 16; ++i) scaled[i] = table[i] * amax;
        for (; e < stop; ++e) {
            const uint8_t byte = codes[e >> 1];
            dst[e - e0] = scaled[(e & 1) != 0 ? byte & 15 : byte >> 4];
        }
    }
}

bool nf4_avx512_active() {
#if defined(LK_CPU_X86)
    return (active_kernels().isa_bits & 2) != 0;
#else
    return false;
#endif
}

bool valid_format(const char* function, int32_t quant_type, int64_t blocksize, lk_status* status) {
    if (quant_type != LK_QUANT_NF4 && quant_type != LK_QUANT_FP4) {
        *status = lk::fail(LK_ERR_INVALID_ARGUMENT,
                           "%s: quant_type = %d is neither LK_QUANT_NF4 (0) nor LK_QUANT_FP4 (1)",
                           function, quant_type);
        return false;
    }
    if (blocksize < kMinBlocksize || blocksize > kMaxBlocksize ||
        (blocksize & (blocksize - 1)) != 0) {
        *status = lk::fail(LK_ERR_INVALID_ARGUMENT,
                           "%s: blocksize = %lld is not a power of two in [32, 4096]", function,
                           (long long)blocksize);
        return false;
    }
    return true;
}

bool valid_stats(const char* function, const lk_quant_stats* stats, int64_t n, lk_status* status) {
    if (stats == nullptr) {
        *status = lk::fail(LK_ERR_INVALID_ARGUMENT, "%s: stats is NULL", function);
        return false;
    }
    if (!valid_format(function, stats->quant_type, stats->blocksize, status)) return false;
    if (n == 0 || stats->absmax != nullptr) return true;
    if (stats->qabsmax == nullptr || stats->absmax2 == nullptr) {
        *status = lk::fail(LK_ERR_INVALID_ARGUMENT,
                           "%s: stats->absmax is NULL and the nested statistics are incomplete "
                           "(stats->%s is NULL)",
                           function, stats->qabsmax == nullptr ? "qabsmax" : "absmax2");
        return false;
    }
    if (!std::isfinite(stats->offset)) {
        *status = lk::fail(LK_ERR_INVALID_ARGUMENT, "%s: stats->offset = %g is not finite",
                           function, (double)stats->offset);
        return false;
    }
    return true;
}

}  // namespace lk::cpu

using lk::cpu::ArgCheck;

LK_API lk_status lk_cpu_quant_table(int32_t quant_type, float* table16) {
    static const char* const fn = "lk_cpu_quant_table";
    if (quant_type != LK_QUANT_NF4 && quant_type != LK_QUANT_FP4)
        return lk::fail(LK_ERR_INVALID_ARGUMENT,
                        "%s: quant_type = %d is neither LK_QUANT_NF4 (0) nor LK_QUANT_FP4 (1)", fn,
                        quant_type);
    ArgCheck check(fn);
    check.not_null("table16", table16);
    if (!check.ok()) return check.status();
    const lk::cpu::QuantTables& tables = lk::cpu::quant_tables();
    std::copy_n(quant_type == LK_QUANT_NF4 ? tables.nf4 : tables.fp4, 16, table16);
    return LK_OK;
}

LK_API lk_status lk_cpu_dynamic_map_signed(float* table256) {
    ArgCheck check("lk_cpu_dynamic_map_signed");
    check.not_null("table256", table256);
    if (!check.ok()) return check.status();
    std::copy_n(lk::cpu::quant_tables().dynamic_signed, 256, table256);
    return LK_OK;
}

LK_API lk_status lk_cpu_quantize_4bit(int32_t quant_type, int64_t n, int64_t blocksize,
                                      const float* w, uint8_t* codes, float* absmax) {
    static const char* const fn = "lk_cpu_quantize_4bit";
    lk_status status = LK_OK;
    if (!lk::cpu::valid_format(fn, quant_type, blocksize, &status)) return status;
    ArgCheck check(fn);
    check.nonnegative("n", n)
        .not_null("w", w, n > 0)
        .not_null("codes", codes, n > 0)
        .not_null("absmax", absmax, n > 0);
    if (!check.ok()) return check.status();
    return lk::cpu::guarded(fn, [&]() -> lk_status {
        const int64_t bad = lk::cpu::first_non_finite(w, n);
        if (bad >= 0)
            return lk::fail(LK_ERR_INVALID_ARGUMENT, "%s: w[%lld] = %g is not finite", fn,
                            (long long)bad, (double)w[bad]);
        lk::cpu::quantize(quant_type, n, blocksize, w, codes, absmax);
        return LK_OK;
    });
}

LK_API lk_status lk_cpu_dequantize_4bit(int64_t n, const uint8_t* codes,
                                        const lk_quant_stats* stats, float* w) {
    static const char* const fn = "lk_cpu_dequantize_4bit";
    ArgCheck check(fn);
    check.nonnegative("n", n).not_null("codes", codes, n > 0).not_null("w", w, n > 0);
    if (!check.ok()) return check.status();
    lk_status status = LK_OK;
    if (!lk::cpu::valid_stats(fn, stats, n, &status)) return status;
    return lk::cpu::guarded(fn, [&]() -> lk_status {
        lk::cpu::dequantize(n, codes, *stats, w);
        return LK_OK;
    });
}

LK_API lk_status lk_cpu_double_quantize(int64_t nblocks, const float* absmax, uint8_t* qabsmax,
                                        float* absmax2, float* offset) {
    static const char* const fn = "lk_cpu_double_quantize";
    ArgCheck check(fn);
    check.nonnegative("nblocks", nblocks)
        .not_null("absmax", absmax, nblocks > 0)
        .not_null("qabsmax", qabsmax, nblocks > 0)
        .not_null("absmax2", absmax2, nblocks > 0)
        .not_null("offset", offset);
    if (!check.ok()) return check.status();
    return lk::cpu::guarded(fn, [&]() -> lk_status {
        const int64_t bad = lk::cpu::first_non_finite(absmax, nblocks);
        if (bad >= 0)
            return lk::fail(LK_ERR_INVALID_ARGUMENT, "%s: absmax[%lld] = %g is not finite", fn,
                            (long long)bad, (double)absmax[bad]);
        lk::cpu::double_quantize(nblocks, absmax, qabsmax, absmax2, offset);
        return LK_OK;
    });
}

LK_API lk_status lk_cpu_double_dequantize(int64_t nblocks, const uint8_t* qabsmax,
                                          const float* absmax2, float offset, float* absmax) {
    static const char* const fn = "lk_cpu_double_dequantize";
    ArgCheck check(fn);
    check.nonnegative("nblocks", nblocks)
        .not_null("qabsmax", qabsmax, nblocks > 0)
        .not_null("absmax2", absmax2, nblocks > 0)
        .not_null("absmax", absmax, nblocks > 0)
        .finite("offset", offset);
    if (!check.ok()) return check.status();
    return lk::cpu::guarded(fn, [&]() -> lk_status {
        lk_quant_stats nested{};
        nested.qabsmax = qabsmax;
        nested.absmax2 = absmax2;
        nested.offset = offset;
        const float* code = lk::cpu::quant_tables().dynamic_signed;
        for (int64_t b = 0; b < nblocks; ++b) absmax[b] = lk::cpu::block_absmax(nested, code, b);
        return LK_OK;
    });
}
