// nf4_format.h: the 4-bit formats' tables and the quantization statistics, shared by
// nf4_format.cpp (quantize, dequantize, double quant) and nf4_matmul.cpp (the fused products).
//
// The tables themselves are kernels/quant_codes.cuh's (float32 bit patterns from REFERENCE.md), so
// the CPU and the GPU kernels quantize with one copy.
// Not included by the per-ISA files (isa.h explains why); those get tables through pointers.
#pragma once

#include <cstdint>
#include <cstring>

#include "lora_kernels.h"
#include "nf4_kernels.h"
#include "quant_codes.cuh"

namespace lk::cpu {

// The codes, their encoders and the dynamic maps are kernels/quant_codes.cuh's (one copy for the
// GPU kernels and these): lk_nf4_code_bits, lk_fp4_code_bits, lk_dynamic_signed_bits, lk_nf4_encode,
// lk_fp4_encode, lk_dynamic_encode.

inline float float_from_bits(uint32_t bits) {
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}

// The tables above as floats, built once when the library is loaded.
struct QuantTables {
    float nf4[16];
    float fp4[16];
    float dynamic_signed[256];
};
const QuantTables& quant_tables();

constexpr int64_t kMinBlocksize = 32;
constexpr int64_t kMaxBlocksize = 4096;

inline int64_t ceil_div64(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Checks quant_type and blocksize for `function`; false (with the last error set) if invalid.
bool valid_format(const char* function, int32_t quant_type, int64_t blocksize, lk_status* status);

// Checks a statistics struct: non-NULL, a valid format, plain (absmax) or nested (qabsmax,
// absmax2, finite offset). false (with the last error set) if invalid.
bool valid_stats(const char* function, const lk_quant_stats* stats, int64_t n, lk_status* status);

// The per-ISA kernels' view of a quantized matrix with these codes and statistics.
Nf4Matrix nf4_matrix(const uint8_t* codes, const lk_quant_stats& stats);

// dst[i] = deq(W) at flattened index e0 + i, i < len (any alignment: blocks and bytes may be
// entered in the middle). The portable decode of the 4-bit products and of QDoRA's norm.
void decode_range(const uint8_t* codes, const lk_quant_stats& stats, int64_t e0, int64_t len,
                  float* dst);

// Whether this process runs the AVX-512 kernels (nf4_avx512.cpp): the CPU supports them and
// LORAKERNELS_CPU_ISA does not lower the choice (isa.h).
bool nf4_avx512_active();

// The fp32 absmax of first-level block b: stored, or decoded from the nested statistics exactly
// as bitsandbytes does, dyn8[qabsmax[b]] * absmax2[b >> 8] + offset (the product rounded to fp32,
// then the sum: the files including this header are built without -mfma, so nothing contracts).
inline float block_absmax(const lk_quant_stats& stats, const float* dynamic_map, int64_t b) {
    if (stats.absmax != nullptr) return stats.absmax[b];
    const float scaled = dynamic_map[stats.qabsmax[b]] * stats.absmax2[b / LK_NESTED_BLOCKSIZE];
    return scaled + stats.offset;
}

}  // namespace lk::cpu
