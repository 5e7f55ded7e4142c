// nf4_kernels.h: the per-ISA piece of the 4-bit decode path (nf4_matmul.cpp), kept apart from
// isa.h's table (owned by the GEMM engine) but under the same rule: nf4_avx512.cpp, compiled
// with -mavx512f, includes only this header and the intrinsics headers.
#pragma once

#include <cstdint>

namespace lk::cpu {

// A quantized matrix W [rows, K], flattened row-major into 4-bit codes and blocks (nf4_format.h).
struct Nf4Matrix {
    const uint8_t* codes;
    int64_t blocksize;
    const float* table;          // the 16 code values of the format
    const float* absmax;         // plain statistics, or NULL when nested:
    const uint8_t* qabsmax;      //   absmax[b] = dynamic_map[qabsmax[b]] * absmax2[b >> 8] + offset
    const float* absmax2;
    float offset;
    const float* dynamic_map;    // 256 entries
};

// y[m * ldy + j] = sum_k x[m * ldx + k] * deq(W)[j, k] for j in [j0, j1), m < M (any M; the
// decode path sends M <= 16), where K is a multiple of W's blocksize (so rows start on block and
// byte boundaries) and x is given with each run of 32 elements split into its 16 even then its
// 16 odd elements (the order in which the kernel decodes the high and the low nibbles of 16 code
// bytes).
void nf4_dot_rows_avx512(const Nf4Matrix& w, int64_t K, int64_t j0, int64_t j1, int64_t M,
                         const float* x_split, int64_t ldx, float* y, int64_t ldy);

// dst[(j - j0) * K + k] = deq(W)[j, k] for j in [j0, j1), k < K, K a multiple of the blocksize:
// rows dequantized for the tiled path's GEMM.
void nf4_decode_rows_avx512(const Nf4Matrix& w, int64_t K, int64_t j0, int64_t j1, float* dst);

}  // namespace lk::cpu
