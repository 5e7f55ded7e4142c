// isa.h: the per-instruction-set kernels behind the CPU library, and the choice among them.
//
// Each microkernel_<isa>.cpp is compiled with its own -m flags and exports one IsaKernels table;
// runtime.cpp picks one table when the library is loaded (__builtin_cpu_supports), so no code
// built for a wider ISA ever runs on a CPU without it. Those files include nothing but this
// header and the intrinsics headers: an inline function from a shared header compiled there
// with -mavx512f could be the copy the linker keeps for everyone (the one-definition rule).
#pragma once

#include <cstdint>

namespace lk::cpu {

struct IsaKernels {
    const char* name;    // "avx512", "avx2", "portable"
    int32_t isa_bits;    // lk_cpu_isa(): bit 0 AVX2+FMA, bit 1 AVX-512F, 0 portable
    int mr, nr;          // micro-tile rows (of C) and columns
    int64_t mc, kc, nc;  // nominal cache blocking of the packed GEMM (the engine balances the
                         // blocks and rounds mc, nc up to multiples of mr, nr)

    // C[i, j] = alpha * sum_k a[k*mr + i] * b[k*nr + j] + beta * C[i, j] (+ bias[j] if bias)
    // for the full mr x nr tile at c with row stride ldc; beta == 0 does not read C.
    // a is a packed mr x kc panel, b a packed kc x nr panel, both 64-byte aligned; kc >= 1.
    void (*micro)(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, float alpha,
                  float beta, const float* bias);

    // out[m*cols + j] = sum_k x[m*ldx + k] * w[j*ldw + k] for m < rows, j < cols, where
    // 1 <= rows, cols <= kDotBlock. The building block of the small-M (GEMV) path: each w
    // vector loaded serves every row of x in the block.
    void (*dot_block)(int64_t K, int rows, const float* x, int64_t ldx, int cols, const float* w,
                      int64_t ldw, float* out);

    // dst[k*width + o] = scale * src[o*ld + k] for o < n_outer <= width, k < n_k: packs a GEMM
    // panel from lines that are contiguous along K (rows of x, rows of W0 read as W0^T), i.e. a
    // transposing copy. Entries o >= n_outer are left for the caller to zero.
    void (*pack_lines)(const float* src, int64_t ld, int n_outer, int64_t n_k, int width,
                       float scale, float* dst);
};

constexpr int kDotBlock = 4;  // rows of x and of w per dot block
// The largest mr * nr of any table (the GEMM's edge-tile buffer); each table static_asserts it.
constexpr int kMaxTileFloats = 8 * 48;

const IsaKernels& avx512_kernels();
const IsaKernels& avx2_kernels();
const IsaKernels& portable_kernels();

// The table chosen at load: the widest ISA the CPU and OS support, lowered (never raised) by
// the environment variable LORAKERNELS_CPU_ISA = avx512 | avx2 | portable, which the tests use
// to run every kernel flavour on one machine.
const IsaKernels& active_kernels();

// OpenMP threads every kernel uses (lk_cpu_set_num_threads).
int thread_count();

}  // namespace lk::cpu
