// microkernel_portable.cpp: the fallback kernels in plain C++ (baseline x86-64 flags, or any
// other architecture), used when the CPU has no AVX2/FMA or LORAKERNELS_CPU_ISA=portable.
//
// GEMM micro-kernel, 4 x 16: the 64 accumulators are a local array the compiler keeps in
// vector registers (SSE2: 16 xmm); the loops are written so it vectorizes them along j.
// Dot block: plain loops, 4 independent partial sums per dot product. Transposing pack: plain
// loops, reading each line once and writing it strided into the panel.
#include "isa.h"

namespace lk::cpu {
namespace {

constexpr int kMr = 4;
constexpr int kNr = 16;
static_assert(kMr * kNr <= kMaxTileFloats, "the GEMM edge-tile buffer must hold a tile");

void micro_4x16(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, float alpha,
                float beta, const float* bias) {
    float acc[kMr][kNr] = {};
    for (int64_t k = 0; k < kc; ++k) {
        for (int i = 0; i < kMr; ++i) {
            const float ai = a[i];
            for (int j = 0; j < kNr; ++j) acc[i][j] += ai * b[j];
        }
        a += kMr;
        b += kNr;
    }
    for (int i = 0; i < kMr; ++i) {
        float* ci = c + i * ldc;
        for (int j = 0; j < kNr; ++j) {
            float r = alpha * acc[i][j] + (bias != nullptr ? bias[j] : 0.0f);
            ci[j] = beta == 0.0f ? r : r + beta * ci[j];
        }
    }
}

void dot_block(int64_t K, int rows, const float* x, int64_t ldx, int cols, const float* w,
               int64_t ldw, float* out) {
    for (int m = 0; m < rows; ++m)
        for (int j = 0; j < cols; ++j) {
            const float* xm = x + m * ldx;
            const float* wj = w + j * ldw;
            float partial[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            int64_t k = 0;
            for (; k + 4 <= K; k += 4)
                for (int l = 0; l < 4; ++l) partial[l] += xm[k + l] * wj[k + l];
            for (; k < K; ++k) partial[0] += xm[k] * wj[k];
            out[m * cols + j] = (partial[0] + partial[1]) + (partial[2] + partial[3]);
        }
}

void pack_lines(const float* src, int64_t ld, int n_outer, int64_t n_k, int width, float scale,
                float* dst) {
    for (int o = 0; o < n_outer; ++o)
        for (int64_t k = 0; k < n_k; ++k) dst[k * width + o] = scale * src[o * ld + k];
}

constexpr IsaKernels kKernels = {
    "portable", 0,           kMr,        kNr,       /*mc=*/kMr * 32,
    /*kc=*/256, /*nc=*/1024, micro_4x16, dot_block, pack_lines,
};

}  // namespace

const IsaKernels& portable_kernels() { return kKernels; }

}  // namespace lk::cpu
