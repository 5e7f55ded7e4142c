// microkernel_avx512.cpp: the AVX-512F kernels (compiled with -mavx512f -mavx2 -mfma).
//
// GEMM micro-kernel, 8 x 48: C's 8 x 48 tile lives in 24 zmm accumulators; each k step loads
// three vectors of the packed B panel (48 floats) and broadcasts 8 floats of the packed A panel
// into 24 FMAs (24 x 32 FLOP per 11 loads). With 2 FMA pipes (Zen 5) that is 12 cycles of FMAs
// per step. Timed against 14 x 32, 12 x 32 and 6 x 64 in the fused forward (M = 512 and 64,
// in = out = 4096, r = 16; native/cpu/README.md): 8 x 48 was 2-4% faster than the others, as it
// needs the fewest loads per FMA.
//
// Blocking (measured the same way): kc = 1024 (a B micro-panel of 192 KiB stays in the 1 MiB L2
// and C is revisited only every 1024 k), mc = 280 (A block 1.1 MiB, streamed from L2/L3),
// nc = 1024 (B block 4 MiB in L3).
//
// Transposing pack: 16 x 16 blocks transposed in registers, with a software prefetch.
//
// Dot block (the GEMV path): up to 4 rows of x against up to 4 rows of w, 16 k at a time, so
// each w vector loaded serves every x row; the K tail uses masked loads.
// GCC 12's unmasked AVX-512 shuffle intrinsics pass _mm512_undefined_ps() as their merge source,
// which -Wmaybe-uninitialized reports at every use (GCC bug 105593, fixed in GCC 13).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include "isa.h"

namespace lk::cpu {
namespace {

constexpr int kMr = 8;
constexpr int kNv = 3;  // zmm vectors per tile row
constexpr int kNr = 16 * kNv;
static_assert(kMr * kNr <= kMaxTileFloats, "the GEMM edge-tile buffer must hold a tile");

void micro_8x48(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, float alpha,
                float beta, const float* bias) {
    __m512 acc[kMr][kNv];
#pragma GCC unroll 32
    for (int i = 0; i < kMr; ++i)
#pragma GCC unroll 4
        for (int v = 0; v < kNv; ++v) acc[i][v] = _mm512_setzero_ps();

    for (int64_t k = 0; k < kc; ++k) {
        __m512 bv[kNv];
#pragma GCC unroll 4
        for (int v = 0; v < kNv; ++v) bv[v] = _mm512_load_ps(b + 16 * v);
#pragma GCC unroll 32
        for (int i = 0; i < kMr; ++i) {
            const __m512 ai = _mm512_set1_ps(a[i]);
#pragma GCC unroll 4
            for (int v = 0; v < kNv; ++v) acc[i][v] = _mm512_fmadd_ps(ai, bv[v], acc[i][v]);
        }
        a += kMr;
        b += kNr;
    }

    const __m512 va = _mm512_set1_ps(alpha);
    __m512 bias_v[kNv];
#pragma GCC unroll 4
    for (int v = 0; v < kNv; ++v)
        bias_v[v] = bias != nullptr ? _mm512_loadu_ps(bias + 16 * v) : _mm512_setzero_ps();
    if (beta == 0.0f) {
#pragma GCC unroll 32
        for (int i = 0; i < kMr; ++i)
#pragma GCC unroll 4
            for (int v = 0; v < kNv; ++v)
                _mm512_storeu_ps(c + i * ldc + 16 * v, _mm512_fmadd_ps(acc[i][v], va, bias_v[v]));
    } else {
        const __m512 vb = _mm512_set1_ps(beta);
#pragma GCC unroll 32
        for (int i = 0; i < kMr; ++i)
#pragma GCC unroll 4
            for (int v = 0; v < kNv; ++v) {
                float* ci = c + i * ldc + 16 * v;
                __m512 r = _mm512_fmadd_ps(acc[i][v], va, bias_v[v]);
                _mm512_storeu_ps(ci, _mm512_fmadd_ps(_mm512_loadu_ps(ci), vb, r));
            }
    }
}

template <int Rows, int Cols>
void dot_rows(int64_t K, const float* x, int64_t ldx, const float* w, int64_t ldw, float* out) {
    __m512 acc[Rows][Cols];
#pragma GCC unroll 4
    for (int m = 0; m < Rows; ++m)
#pragma GCC unroll 4
        for (int j = 0; j < Cols; ++j) acc[m][j] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        __m512 wv[Cols];
#pragma GCC unroll 4
        for (int j = 0; j < Cols; ++j) wv[j] = _mm512_loadu_ps(w + j * ldw + k);
#pragma GCC unroll 4
        for (int m = 0; m < Rows; ++m) {
            const __m512 xv = _mm512_loadu_ps(x + m * ldx + k);
#pragma GCC unroll 4
            for (int j = 0; j < Cols; ++j) acc[m][j] = _mm512_fmadd_ps(xv, wv[j], acc[m][j]);
        }
    }
    if (k < K) {
        const __mmask16 tail = (__mmask16)((1u << (K - k)) - 1u);
        __m512 wv[Cols];
#pragma GCC unroll 4
        for (int j = 0; j < Cols; ++j) wv[j] = _mm512_maskz_loadu_ps(tail, w + j * ldw + k);
#pragma GCC unroll 4
        for (int m = 0; m < Rows; ++m) {
            const __m512 xv = _mm512_maskz_loadu_ps(tail, x + m * ldx + k);
#pragma GCC unroll 4
            for (int j = 0; j < Cols; ++j) acc[m][j] = _mm512_fmadd_ps(xv, wv[j], acc[m][j]);
        }
    }
#pragma GCC unroll 4
    for (int m = 0; m < Rows; ++m)
#pragma GCC unroll 4
        for (int j = 0; j < Cols; ++j) out[m * Cols + j] = _mm512_reduce_add_ps(acc[m][j]);
}

using DotFn = void (*)(int64_t, const float*, int64_t, const float*, int64_t, float*);
static_assert(kDotBlock == 4, "the dispatch table below is written out for 4 x 4");
constexpr DotFn kDotTable[kDotBlock][kDotBlock] = {
    {dot_rows<1, 1>, dot_rows<1, 2>, dot_rows<1, 3>, dot_rows<1, 4>},
    {dot_rows<2, 1>, dot_rows<2, 2>, dot_rows<2, 3>, dot_rows<2, 4>},
    {dot_rows<3, 1>, dot_rows<3, 2>, dot_rows<3, 3>, dot_rows<3, 4>},
    {dot_rows<4, 1>, dot_rows<4, 2>, dot_rows<4, 3>, dot_rows<4, 4>},
};

void dot_block(int64_t K, int rows, const float* x, int64_t ldx, int cols, const float* w,
               int64_t ldw, float* out) {
    kDotTable[rows - 1][cols - 1](K, x, ldx, w, ldw, out);
}

// In-place transpose of a 16 x 16 block held as 16 rows: 32-bit interleave, 64-bit interleave,
// then two rounds of 128-bit lane shuffles (4 x 16 shuffles for 256 elements).
void transpose_16x16(__m512 r[16]) {
    __m512 t[16];
#pragma GCC unroll 8
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
#pragma GCC unroll 4
    for (int i = 0; i < 16; i += 4) {
        const __m512d a = _mm512_castps_pd(t[i]), b = _mm512_castps_pd(t[i + 1]);
        const __m512d c = _mm512_castps_pd(t[i + 2]), d = _mm512_castps_pd(t[i + 3]);
        r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
        r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
    // Rows 4q..4q+3 now hold, per 128-bit lane l, columns 4l..4l+3 of rows 4q..4q+3.
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {
        t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
        t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xDD);
        t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
        t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xDD);
    }
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) {
        r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xDD);
    }
}

// dst[k*width + o] = scale * src[o*ld + k]: 16 x 16 blocks loaded along k (masked at the
// edges), transposed in registers and stored along o.
void pack_lines(const float* src, int64_t ld, int n_outer, int64_t n_k, int width, float scale,
                float* dst) {
    const __m512 vs = _mm512_set1_ps(scale);
    for (int o0 = 0; o0 < n_outer; o0 += 16) {
        const int lines = n_outer - o0 < 16 ? n_outer - o0 : 16;
        const __mmask16 store_mask = (__mmask16)((1u << lines) - 1u);
        for (int64_t k0 = 0; k0 < n_k; k0 += 16) {
            const int kk = n_k - k0 < 16 ? (int)(n_k - k0) : 16;
            const __mmask16 load_mask = (__mmask16)((1u << kk) - 1u);
            __m512 r[16];
#pragma GCC unroll 16
            for (int i = 0; i < 16; ++i) {
                r[i] = i < lines ? _mm512_maskz_loadu_ps(load_mask, src + (o0 + i) * ld + k0)
                                 : _mm512_setzero_ps();
                // Lines are read in short stretches (kc floats) 16 at a time, too short for the
                // hardware prefetcher to ramp up; 256 bytes ahead measured best (64 and 512 B
                // worse).
                if (i < lines)
                    _mm_prefetch((const char*)(src + (o0 + i) * ld + k0 + 64), _MM_HINT_T0);
            }
            transpose_16x16(r);
            for (int k = 0; k < kk; ++k)
                _mm512_mask_storeu_ps(dst + (k0 + k) * width + o0, store_mask,
                                      _mm512_mul_ps(r[k], vs));
        }
    }
}

constexpr IsaKernels kKernels = {
    "avx512",    2,           kMr,        kNr,       /*mc=*/kMr * 35,
    /*kc=*/1024, /*nc=*/1024, micro_8x48, dot_block, pack_lines,
};

}  // namespace

const IsaKernels& avx512_kernels() { return kKernels; }

}  // namespace lk::cpu
