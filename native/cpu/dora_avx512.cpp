// dora_avx512.cpp: the AVX-512 projection of the DoRA weight norm, P = X Aᵀ with fp32 partial sums
// of at most kDoraPartialTerms products added in double (dora_kernels.h; compiled with -mavx512f
// -mavx2 -mfma).
//
// Strategy: a skinny product (r = 16 columns against in = 4096) that the packed GEMM engine runs
// at a third of its speed (its 48-wide micro-tile is two-thirds padding at N = 16: 16 ms at
// 4096 x 4096, r = 16, 2 threads). Here both operands are read along K (rows of X and of A are
// contiguous), so a tile of 4 rows of X x 4 rows of A keeps 16 zmm accumulators, each loaded x
// vector feeding 4 FMAs and each A vector 4 (8 loads per 16 FMAs). K is walked in chunks of
// 16·kDoraPartialTerms floats: within a chunk every lane of an accumulator adds at most
// kDoraPartialTerms products, then its 16 lanes are widened to double and added to the pair's
// double lanes (in L1), which bounds the fp32 rounding of every P element by γ_64·Σ|x·a|. The
// chunk of X's rows (4 x 4 KiB) stays in L1 while every group of 4 A rows passes over it.
// Bytes: X once from memory (4·rows·K), A's chunk from L2 once per 4 rows. FLOP 2·rows·r·K.
// Direct recomputation (the rows the certificate rejects): 4 rows x 8 columns at a time in double,
// each converted A vector feeding 4 FMAs (exact products), so a call where every row is recomputed
// (all rows cancelling) costs ~4x one where none is (21 ms against 5 ms at 4096², r = 16) instead
// of ~25x with dora.cpp's 2-lane baseline loop.
// GCC 12's unmasked AVX-512 intrinsics pass _mm512_undefined_ps() as their merge source, which
// -Wmaybe-uninitialized reports at every use (GCC bug 105593, fixed in GCC 13).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include "dora_kernels.h"

namespace lk::cpu {
namespace {

constexpr int kLanes = 16;
constexpr int kRowTile = 4;  // rows of X per tile
constexpr int kColTile = 4;  // rows of A per tile
constexpr int64_t kChunk = kDoraPartialTerms * kLanes;

// The fp32 sums over k in [k0, k1) (k1 - k0 <= kChunk) of rows [0, RW) of X against rows [0, RA)
// of A, widened and added into d[(i * r_stride + j) * 16 + lane].
template <int RW, int RA>
void chunk_tile(int64_t k0, int64_t k1, const float* X, int64_t ldx, const float* A, int64_t lda, double* d,
                int64_t r_stride) {
    __m512 c[RW][RA];
    for (int i = 0; i < RW; ++i)
        for (int j = 0; j < RA; ++j) c[i][j] = _mm512_setzero_ps();
    int64_t k = k0;
    for (; k + kLanes <= k1; k += kLanes) {
        __m512 x[RW], a[RA];
        for (int i = 0; i < RW; ++i) x[i] = _mm512_loadu_ps(X + i * ldx + k);
        for (int j = 0; j < RA; ++j) a[j] = _mm512_loadu_ps(A + j * lda + k);
        for (int i = 0; i < RW; ++i)
            for (int j = 0; j < RA; ++j) c[i][j] = _mm512_fmadd_ps(x[i], a[j], c[i][j]);
    }
    if (k < k1) {
        const __mmask16 mask = (__mmask16)((1u << (k1 - k)) - 1u);
        __m512 x[RW], a[RA];
        for (int i = 0; i < RW; ++i) x[i] = _mm512_maskz_loadu_ps(mask, X + i * ldx + k);
        for (int j = 0; j < RA; ++j) a[j] = _mm512_maskz_loadu_ps(mask, A + j * lda + k);
        for (int i = 0; i < RW; ++i)
            for (int j = 0; j < RA; ++j) c[i][j] = _mm512_fmadd_ps(x[i], a[j], c[i][j]);
    }
    for (int i = 0; i < RW; ++i)
        for (int j = 0; j < RA; ++j) {
            double* lanes = d + (i * r_stride + j) * kLanes;
            const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(c[i][j]));
            const __m512d hi =
                _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(c[i][j]), 1)));
            _mm512_storeu_pd(lanes, _mm512_add_pd(_mm512_loadu_pd(lanes), lo));
            _mm512_storeu_pd(lanes + 8, _mm512_add_pd(_mm512_loadu_pd(lanes + 8), hi));
        }
}

using ChunkTile = void (*)(int64_t, int64_t, const float*, int64_t, const float*, int64_t, double*, int64_t);

template <int RW>
ChunkTile tile_for(int ra) {
    switch (ra) {
        case 1: return chunk_tile<RW, 1>;
        case 2: return chunk_tile<RW, 2>;
        case 3: return chunk_tile<RW, 3>;
        default: return chunk_tile<RW, 4>;
    }
}

ChunkTile tile_for(int rw, int ra) {
    switch (rw) {
        case 1: return tile_for<1>(ra);
        case 2: return tile_for<2>(ra);
        case 3: return tile_for<3>(ra);
        default: return tile_for<4>(ra);
    }
}

}  // namespace

static_assert(kRowTile * kLanes == kDoraProjectScratchPerRank, "dora_kernels.h's scratch size");

void dora_project_avx512(int64_t rows, int64_t r, int64_t K, const float* X, int64_t ldx, const float* A,
                         int64_t lda, double* P, int64_t ldp, double* d) {
    // d: the double lanes of one row tile, kRowTile x r pairs x 16 lanes (8 KiB at r = 16).
    for (int64_t i0 = 0; i0 < rows; i0 += kRowTile) {
        const int rw = (int)(rows - i0 < kRowTile ? rows - i0 : kRowTile);
        for (int64_t e = 0; e < kRowTile * r * kLanes; ++e) d[e] = 0.0;
        for (int64_t k0 = 0; k0 < K; k0 += kChunk) {
            const int64_t k1 = K - k0 < kChunk ? K : k0 + kChunk;
            for (int64_t j0 = 0; j0 < r; j0 += kColTile) {
                const int ra = (int)(r - j0 < kColTile ? r - j0 : kColTile);
                tile_for(rw, ra)(k0, k1, X + i0 * ldx, ldx, A + j0 * lda, lda, d + j0 * kLanes, r);
            }
        }
        for (int i = 0; i < rw; ++i)
            for (int64_t j = 0; j < r; ++j) {
                const double* lanes = d + (i * r + j) * kLanes;
                P[(i0 + i) * ldp + j] =
                    _mm512_reduce_add_pd(_mm512_add_pd(_mm512_loadu_pd(lanes), _mm512_loadu_pd(lanes + 8)));
            }
    }
}

namespace {

// dora_direct_sqnorms_avx512 for RW rows: each converted A vector feeds RW FMAs.
template <int RW>
void direct_rows(int64_t in, int64_t r, const float* const* w, const float* A, const float* const* b, double s,
                 double* out) {
    const __m512d scale = _mm512_set1_pd(s);
    __m512d sum[RW];
    for (int j = 0; j < RW; ++j) sum[j] = _mm512_setzero_pd();
    for (int64_t k = 0; k < in; k += 8) {
        const int64_t len = in - k < 8 ? in - k : 8;
        const __mmask16 mask = (__mmask16)((1u << len) - 1u);
        __m512d v[RW];
        for (int j = 0; j < RW; ++j) v[j] = _mm512_setzero_pd();
        for (int64_t a = 0; a < r; ++a) {
            const __m512d column = _mm512_cvtps_pd(_mm512_castps512_ps256(_mm512_maskz_loadu_ps(mask, A + a * in + k)));
            for (int j = 0; j < RW; ++j) v[j] = _mm512_fmadd_pd(_mm512_set1_pd((double)b[j][a]), column, v[j]);
        }
        for (int j = 0; j < RW; ++j) {
            const __m512d wk = _mm512_cvtps_pd(_mm512_castps512_ps256(_mm512_maskz_loadu_ps(mask, w[j] + k)));
            const __m512d t = _mm512_fmadd_pd(scale, v[j], wk);
            sum[j] = _mm512_fmadd_pd(t, t, sum[j]);
        }
    }
    for (int j = 0; j < RW; ++j) out[j] = _mm512_reduce_add_pd(sum[j]);
}

}  // namespace

void dora_direct_sqnorms_avx512(int rows, int64_t in, int64_t r, const float* const* w, const float* A,
                                const float* const* b, double s, double* out) {
    static_assert(kDoraDirectRows == 4, "the switch below");
    switch (rows) {
        case 1: direct_rows<1>(in, r, w, A, b, s, out); break;
        case 2: direct_rows<2>(in, r, w, A, b, s, out); break;
        case 3: direct_rows<3>(in, r, w, A, b, s, out); break;
        default: direct_rows<4>(in, r, w, A, b, s, out); break;
    }
}

}  // namespace lk::cpu
