// microkernel_avx2.cpp: the AVX2 + FMA kernels (compiled with -mavx2 -mfma).
//
// GEMM micro-kernel, 6 x 16: C's 6 x 16 tile lives in 12 ymm accumulators; each k step loads
// two vectors of the packed B panel and broadcasts 6 floats of the packed A panel into 12 FMAs
// (the shape BLIS uses on Haswell: 12 + 2 + 1 of the 16 ymm registers).
//
// Dot block (the GEMV path): up to 4 rows of x against up to 4 rows of w, 8 k at a time; the K
// tail uses masked loads.
#include <immintrin.h>

#include "isa.h"

namespace lk::cpu {
namespace {

constexpr int kMr = 6;
constexpr int kNv = 2;  // ymm vectors per tile row
constexpr int kNr = 8 * kNv;
static_assert(kMr * kNr <= kMaxTileFloats, "the GEMM edge-tile buffer must hold a tile");

void micro_6x16(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, float alpha,
                float beta, const float* bias) {
    __m256 acc[kMr][kNv];
#pragma GCC unroll 8
    for (int i = 0; i < kMr; ++i)
#pragma GCC unroll 2
        for (int v = 0; v < kNv; ++v) acc[i][v] = _mm256_setzero_ps();

    for (int64_t k = 0; k < kc; ++k) {
        __m256 bv[kNv];
#pragma GCC unroll 2
        for (int v = 0; v < kNv; ++v) bv[v] = _mm256_load_ps(b + 8 * v);
#pragma GCC unroll 8
        for (int i = 0; i < kMr; ++i) {
            const __m256 ai = _mm256_broadcast_ss(a + i);
#pragma GCC unroll 2
            for (int v = 0; v < kNv; ++v) acc[i][v] = _mm256_fmadd_ps(ai, bv[v], acc[i][v]);
        }
        a += kMr;
        b += kNr;
    }

    const __m256 va = _mm256_set1_ps(alpha);
    __m256 bias_v[kNv];
#pragma GCC unroll 2
    for (int v = 0; v < kNv; ++v)
        bias_v[v] = bias != nullptr ? _mm256_loadu_ps(bias + 8 * v) : _mm256_setzero_ps();
    if (beta == 0.0f) {
#pragma GCC unroll 8
        for (int i = 0; i < kMr; ++i)
#pragma GCC unroll 2
            for (int v = 0; v < kNv; ++v)
                _mm256_storeu_ps(c + i * ldc + 8 * v, _mm256_fmadd_ps(acc[i][v], va, bias_v[v]));
    } else {
        const __m256 vb = _mm256_set1_ps(beta);
#pragma GCC unroll 8
        for (int i = 0; i < kMr; ++i)
#pragma GCC unroll 2
            for (int v = 0; v < kNv; ++v) {
                float* ci = c + i * ldc + 8 * v;
                __m256 r = _mm256_fmadd_ps(acc[i][v], va, bias_v[v]);
                _mm256_storeu_ps(ci, _mm256_fmadd_ps(_mm256_loadu_ps(ci), vb, r));
            }
    }
}

inline float horizontal_sum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

template <int Rows, int Cols>
void dot_rows(int64_t K, const float* x, int64_t ldx, const float* w, int64_t ldw, float* out) {
    __m256 acc[Rows][Cols];
#pragma GCC unroll 4
    for (int m = 0; m < Rows; ++m)
#pragma GCC unroll 4
        for (int j = 0; j < Cols; ++j) acc[m][j] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
        __m256 wv[Cols];
#pragma GCC unroll 4
        for (int j = 0; j < Cols; ++j) wv[j] = _mm256_loadu_ps(w + j * ldw + k);
#pragma GCC unroll 4
        for (int m = 0; m < Rows; ++m) {
            const __m256 xv = _mm256_loadu_ps(x + m * ldx + k);
#pragma GCC unroll 4
            for (int j = 0; j < Cols; ++j) acc[m][j] = _mm256_fmadd_ps(xv, wv[j], acc[m][j]);
        }
    }
    if (k < K) {
        // Lane l is loaded iff l < K - k: the sign bit of (l - (K - k)) selects it.
        const __m256i tail = _mm256_sub_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                                              _mm256_set1_epi32((int)(K - k)));
        __m256 wv[Cols];
#pragma GCC unroll 4
        for (int j = 0; j < Cols; ++j) wv[j] = _mm256_maskload_ps(w + j * ldw + k, tail);
#pragma GCC unroll 4
        for (int m = 0; m < Rows; ++m) {
            const __m256 xv = _mm256_maskload_ps(x + m * ldx + k, tail);
#pragma GCC unroll 4
            for (int j = 0; j < Cols; ++j) acc[m][j] = _mm256_fmadd_ps(xv, wv[j], acc[m][j]);
        }
    }
#pragma GCC unroll 4
    for (int m = 0; m < Rows; ++m)
#pragma GCC unroll 4
        for (int j = 0; j < Cols; ++j) out[m * Cols + j] = horizontal_sum(acc[m][j]);
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

// In-place transpose of an 8 x 8 block held as 8 rows (unpack, shuffle, 128-bit permute).
void transpose_8x8(__m256 r[8]) {
    __m256 t[8];
#pragma GCC unroll 4
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
#pragma GCC unroll 2
    for (int i = 0; i < 8; i += 4) {
        r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
        r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    // Rows 4q..4q+3 now hold, per 128-bit half h, columns 4h..4h+3 of rows 4q..4q+3.
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {
        t[i] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x20);
        t[i + 4] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x31);
    }
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) r[i] = t[i];
}

// dst[k*width + o] = scale * src[o*ld + k]: 8 x 8 blocks loaded along k (masked at the edges),
// transposed in registers and stored along o (element by element past the last full 8 lines).
void pack_lines(const float* src, int64_t ld, int n_outer, int64_t n_k, int width, float scale,
                float* dst) {
    const __m256 vs = _mm256_set1_ps(scale);
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int o0 = 0; o0 < n_outer; o0 += 8) {
        const int lines = n_outer - o0 < 8 ? n_outer - o0 : 8;
        // Lane l is stored iff l < lines (sign bit of l - lines).
        const __m256i store_mask = _mm256_sub_epi32(lane, _mm256_set1_epi32(lines));
        for (int64_t k0 = 0; k0 < n_k; k0 += 8) {
            const int kk = n_k - k0 < 8 ? (int)(n_k - k0) : 8;
            const __m256i load_mask = _mm256_sub_epi32(lane, _mm256_set1_epi32(kk));
            __m256 r[8];
#pragma GCC unroll 8
            for (int i = 0; i < 8; ++i)
                r[i] = i < lines ? _mm256_maskload_ps(src + (o0 + i) * ld + k0, load_mask)
                                 : _mm256_setzero_ps();
            transpose_8x8(r);
            for (int k = 0; k < kk; ++k)
                _mm256_maskstore_ps(dst + (k0 + k) * width + o0, store_mask,
                                    _mm256_mul_ps(r[k], vs));
        }
    }
}

constexpr IsaKernels kKernels = {
    "avx2",     1,           kMr,        kNr,       /*mc=*/kMr * 48,
    /*kc=*/512, /*nc=*/1024, micro_6x16, dot_block, pack_lines,
};

}  // namespace

const IsaKernels& avx2_kernels() { return kKernels; }

}  // namespace lk::cpu
