// nf4_avx512.cpp: the AVX-512 decode kernel of the 4-bit matmul (nf4_kernels.h; compiled with
// -mavx512f -mavx2 -mfma -ffp-contract=off).
//
// Strategy: bound by streaming the codes (K/2 bytes per row of W) once, so the weights are
// dequantized in registers and never stored. Per block the 16-entry code table is scaled by the
// block's absmax (one multiply; nested statistics decoded here, once per block), so a weight is
// one lookup: 16 code bytes are widened to 16 int32 lanes; _mm512_permutexvar_ps indexes with
// each lane's low 4 bits, which are the low nibbles (odd elements), and again after a 4-bit shift
// for the high nibbles (even elements) - 32 weights for 1 load, 1 widen, 1 shift, 2 permutes.
// The caller splits each 32-run of x into even and odd halves once per call so the products
// line up. A tile is 4 rows of W x up to 4 rows of x: each decoded weight vector feeds MB FMAs and
// each loaded x vector 4 (loads, not FMAs, bounded the tiles that reloaded x per row: 6.2 ms ->
// 3.4 ms at M = 16, one thread), with 16 accumulators (8 with two per dot for MB <= 2, enough
// independent chains to cover the FMA latency); rows of x past 4 take further passes over the
// same 4 rows of W while their codes are still in L1.
// The codes and statistics of the tile one ahead (at least 8 KiB of codes ahead) are prefetched
// into L1 while a tile is decoded. Without it the kernel, reading 4 short interleaved streams
// (2 KiB per row at K = 4096) that the hardware prefetchers barely ramp up on, took 400-460 us
// at M = 1, 4096x4096, blocksize 64 from DRAM (8 rotating copies of W: ~23 GB/s in NF4 bytes,
// under half the ~80 GB/s 2-thread streaming read) against ~170 us with W in L3, i.e. the
// memory latency was exposed, not overlapped with the decode. With it the DRAM case runs at
// ~185-200 us (~50 GB/s, 60-65% of the streaming read; ~4x an fp32 GEMV of W from DRAM), the
// decode's own speed (at K = 11008: 1.9 ms -> 0.5 ms), and the L3 case ~5% slower (the
// prefetch instructions). 2-4 KiB ahead gained nothing; 16 KiB no more than 8.
// Bytes per call: rows * (K/2 + 4*K/blocksize) of W, x from L1/L2. FLOP: 2*M*rows*K.
// Row decode (the tiled path's slabs): the same lookup, with the nibbles first interleaved into
// element order (unpack of the high and low nibbles), so 32 weights are 2 aligned-order stores.
// Bytes: rows * (K/2 + 4*K/blocksize) read, 4*rows*K written.
// -ffp-contract=off keeps the nested absmax decode (product, then sum) rounded as bnb's.
// GCC 12's unmasked AVX-512 intrinsics pass _mm512_undefined_ps() as their merge source, which
// -Wmaybe-uninitialized reports at every use (GCC bug 105593, fixed in GCC 13).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include "nf4_kernels.h"

namespace lk::cpu {
namespace {

// How far ahead of the decode the codes are prefetched (rounded up to whole tiles): 8 KiB, one
// 4-row tile at K = 4096, the best of 2-16 KiB measured from DRAM.
constexpr int64_t kPrefetchBytes = 8192;

// Prefetches the line at base + bytes into L1; the address may lie past the end of the array (the
// last tiles' look-ahead), which a prefetch never faults on, so it is formed as an integer.
void prefetch(const void* base, int64_t bytes) {
    _mm_prefetch(reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(base) + bytes),
                 _MM_HINT_T0);
}

float absmax_of(const Nf4Matrix& w, int64_t b) {
    if (w.absmax != nullptr) return w.absmax[b];
    const float scaled = w.dynamic_map[w.qabsmax[b]] * w.absmax2[b >> 8];
    return scaled + w.offset;
}

// Rows [j, j + R) of W against MB rows of x (x_split and y already offset to the first of them).
// Each x vector is loaded once and used for all R rows (the loads, not the FMAs, bound a tile
// that reloads x per row). With MB <= 2 the even and odd halves get separate accumulators, so
// there are at least 8 independent FMA chains to cover the FMA latency.
template <int R, int MB>
void dot_tile(const Nf4Matrix& w, int64_t K, int64_t j, const float* x_split, int64_t ldx, float* y,
              int64_t ldy) {
    constexpr int kHalves = MB <= 2 ? 2 : 1;
    const __m512 table = _mm512_loadu_ps(w.table);
    const int64_t bs = w.blocksize, blocks_per_row = K / bs;
    // Prefetch distance: whole tiles, at least kPrefetchBytes of codes ahead.
    const int64_t tile_bytes = R * (K >> 1);
    const int64_t rows_ahead = R * ((kPrefetchBytes + tile_bytes - 1) / tile_bytes);
    const int64_t ahead_bytes = rows_ahead * (K >> 1);
    __m512 acc[R][MB][kHalves];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
        for (int m = 0; m < MB; ++m)
#pragma GCC unroll 2
            for (int h = 0; h < kHalves; ++h) acc[r][m][h] = _mm512_setzero_ps();

    for (int64_t kb = 0; kb < blocks_per_row; ++kb) {
        __m512 lut[R];
        const uint8_t* codes[R];
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
            const int64_t b = (j + r) * blocks_per_row + kb;
            lut[r] = _mm512_mul_ps(table, _mm512_set1_ps(absmax_of(w, b)));
            codes[r] = w.codes + ((b * bs) >> 1);
        }
        const float* xb = x_split + kb * bs;
        // The lines at this block's position rows_ahead rows on (codes every 64 bytes, the
        // statistics every 16 blocks), so they arrive while this tile is being decoded.
        if (((kb * (bs >> 1)) & 63) == 0) {
#pragma GCC unroll 4
            for (int r = 0; r < R; ++r)
                for (int64_t off = 0; off < (bs >> 1); off += 64)
                    prefetch(codes[r], ahead_bytes + off);
        }
        if ((kb & 15) == 0) {
#pragma GCC unroll 4
            for (int r = 0; r < R; ++r) {
                const int64_t b = (j + r + rows_ahead) * blocks_per_row + kb;
                if (w.absmax != nullptr) prefetch(w.absmax, b * 4);
                else prefetch(w.qabsmax, b);
            }
        }
        for (int64_t t = 0; t < bs; t += 32) {
            __m512 w_even[R], w_odd[R];
#pragma GCC unroll 4
            for (int r = 0; r < R; ++r) {
                const __m512i bytes = _mm512_cvtepu8_epi32(
                    _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes[r] + (t >> 1))));
                w_even[r] = _mm512_permutexvar_ps(_mm512_srli_epi32(bytes, 4), lut[r]);
                w_odd[r] = _mm512_permutexvar_ps(bytes, lut[r]);
            }
#pragma GCC unroll 16
            for (int m = 0; m < MB; ++m) {
                const __m512 x_even = _mm512_loadu_ps(xb + m * ldx + t);
                const __m512 x_odd = _mm512_loadu_ps(xb + m * ldx + t + 16);
#pragma GCC unroll 4
                for (int r = 0; r < R; ++r) {
                    acc[r][m][0] = _mm512_fmadd_ps(x_even, w_even[r], acc[r][m][0]);
                    acc[r][m][kHalves - 1] =
                        _mm512_fmadd_ps(x_odd, w_odd[r], acc[r][m][kHalves - 1]);
                }
            }
        }
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
        for (int m = 0; m < MB; ++m) {
            const __m512 sum =
                kHalves == 2 ? _mm512_add_ps(acc[r][m][0], acc[r][m][kHalves - 1]) : acc[r][m][0];
            y[m * ldy + j + r] = _mm512_reduce_add_ps(sum);
        }
}

// Rows [j, j_end) of W, j_end - j <= kRowGroup, against MB rows of x.
template <int R, int MB>
void dot_rows(const Nf4Matrix& w, int64_t K, int64_t j, int64_t j_end, const float* x_split,
              int64_t ldx, float* y, int64_t ldy) {
    for (; j + R <= j_end; j += R) dot_tile<R, MB>(w, K, j, x_split, ldx, y, ldy);
    for (; j < j_end; ++j) dot_tile<1, MB>(w, K, j, x_split, ldx, y, ldy);
}

}  // namespace

void nf4_dot_rows_avx512(const Nf4Matrix& w, int64_t K, int64_t j0, int64_t j1, int64_t M,
                         const float* x_split, int64_t ldx, float* y, int64_t ldy) {
    // Rows of W are taken 4 at a time; each further group of 4 rows of x re-decodes the same
    // codes from L1. (Cutting K so x stays in L1 was measured slower at M = 16: x from L2 is
    // already amortized over 4 rows of W, while the cut adds 16 reductions per slice.)
    constexpr int64_t kRowGroup = 4;
    constexpr int64_t kXGroup = 4;
    for (int64_t j = j0; j < j1; j += kRowGroup) {
        const int64_t j_end = j + kRowGroup < j1 ? j + kRowGroup : j1;
        for (int64_t m0 = 0; m0 < M; m0 += kXGroup) {
            const float* x = x_split + m0 * ldx;
            float* ym = y + m0 * ldy;
            switch (M - m0 < kXGroup ? M - m0 : kXGroup) {
                case 1: dot_rows<4, 1>(w, K, j, j_end, x, ldx, ym, ldy); break;
                case 2: dot_rows<4, 2>(w, K, j, j_end, x, ldx, ym, ldy); break;
                case 3: dot_rows<4, 3>(w, K, j, j_end, x, ldx, ym, ldy); break;
                default: dot_rows<4, 4>(w, K, j, j_end, x, ldx, ym, ldy); break;
            }
        }
    }
}

void nf4_decode_rows_avx512(const Nf4Matrix& w, int64_t K, int64_t j0, int64_t j1, float* dst) {
    const __m512 table = _mm512_loadu_ps(w.table);
    const __m128i low_nibble = _mm_set1_epi8(0x0F);
    const int64_t bs = w.blocksize;
    for (int64_t b = j0 * K / bs; b < j1 * K / bs; ++b) {
        const __m512 lut = _mm512_mul_ps(table, _mm512_set1_ps(absmax_of(w, b)));
        const uint8_t* codes = w.codes + ((b * bs) >> 1);
        float* d = dst + (b * bs - j0 * K);
        for (int64_t t = 0; t < bs; t += 32) {
            const __m128i bytes =
                _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + (t >> 1)));
            const __m128i high = _mm_and_si128(_mm_srli_epi16(bytes, 4), low_nibble);
            const __m128i low = _mm_and_si128(bytes, low_nibble);
            _mm512_storeu_ps(d + t, _mm512_permutexvar_ps(
                                        _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(high, low)), lut));
            _mm512_storeu_ps(
                d + t + 16,
                _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm_unpackhi_epi8(high, low)), lut));
        }
    }
}

}  // namespace lk::cpu
