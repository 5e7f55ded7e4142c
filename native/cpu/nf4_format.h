// nf4_format.h: the 4-bit formats' tables and the quantization statistics, shared by
// nf4_format.cpp (quantize, dequantize, double quant) and nf4_matmul.cpp (the fused products).
//
// Every table is written as float32 bit patterns copied from REFERENCE.md (§8.1 NF4 and its
// midpoints, §8.2 FP4 and its decision-tree literals, Appendix B the signed dynamic 8-bit map), so
// the values are bit-exact bitsandbytes' and no rounding of a decimal literal can creep in.
// Not included by the per-ISA files (isa.h explains why); those get tables through pointers.
#pragma once

#include <cstdint>
#include <cstring>

#include "lora_kernels.h"
#include "nf4_kernels.h"

namespace lk::cpu {

// NF4 code values, index = 4-bit code (REFERENCE.md §8.1).
constexpr uint32_t kNf4Bits[16] = {
    0xbf800000u, 0xbf3239b1u, 0xbf066b30u, 0xbeca32a0u, 0xbe91a24du, 0xbe3d353fu, 0xbdba7871u, 0x00000000u,
    0x3da2faffu, 0x3e24cae3u, 0x3e7c04ddu, 0x3ead033au, 0x3ee1a4b8u, 0x3f1007abu, 0x3f3913b3u, 0x3f800000u,
};
// bnb's quantization thresholds t0..t14 (the float32 midpoints of neighbouring codes): the code of
// x is the number of thresholds x strictly exceeds.
constexpr uint32_t kNf4ThresholdBits[15] = {
    0xbf591cd8u, 0xbf1c5270u, 0xbeeb8480u, 0xbeadea76u, 0xbe703cecu, 0xbe0d38bcu, 0xbd3a7871u, 0x3d22faffu,
    0x3df64862u, 0x3e5067e0u, 0x3e9582d4u, 0x3ec753f9u, 0x3f006d04u, 0x3f248dafu, 0x3f5c89dau,
};
// FP4 (bnb's kernel LUT, §8.2): bit 3 is the sign, bits 0-2 index the magnitudes
// {0, 0.0052083, 0.6667, 1, 0.3333, 0.5, 0.1667, 0.25}; code 8 is -0.0.
constexpr uint32_t kFp4Bits[16] = {
    0x00000000u, 0x3baaaaabu, 0x3f2aaaabu, 0x3f800000u, 0x3eaaaaabu, 0x3f000000u, 0x3e2aaaabu, 0x3e800000u,
    0x80000000u, 0xbbaaaaabu, 0xbf2aaaabu, 0xbf800000u, 0xbeaaaaabu, 0xbf000000u, 0xbe2aaaabu, 0xbe800000u,
};
// The literals of bnb's FP4 decision tree on |x| (§8.2), in the order the tree tests them.
constexpr uint32_t kFp4Split = 0x3e955555u;       // 0.29166667: upper half?
constexpr uint32_t kFp4SplitHigh = 0x3f155550u;   // 0.583333
constexpr uint32_t kFp4Top = 0x3f555555u;         // 0.8333333: 1.0 vs 0.6667
constexpr uint32_t kFp4MidHigh = 0x3ed55556u;     // 0.4166667: 0.5 vs 0.3333
constexpr uint32_t kFp4SplitLow = 0x3db00000u;    // 0.0859375
constexpr uint32_t kFp4MidLow = 0x3e555555u;      // 0.20833333: 0.25 vs 0.1667
constexpr uint32_t kFp4Bottom = 0x3b2aaab9u;      // 0.00260417: 0.0052 vs 0

// create_dynamic_map(signed=True) (Appendix B): the nested-absmax code of double quantization.
constexpr uint32_t kDynamicSignedBits[256] = {
    0xbf7e3333u, 0xbf7a9999u, 0xbf770000u, 0xbf736666u, 0xbf6fccccu, 0xbf6c3333u, 0xbf68999au, 0xbf650000u,
    0xbf616666u, 0xbf5dccccu, 0xbf5a3333u, 0xbf569999u, 0xbf530000u, 0xbf4f6666u, 0xbf4bccccu, 0xbf483333u,
    0xbf44999au, 0xbf410000u, 0xbf3d6667u, 0xbf39cccdu, 0xbf363334u, 0xbf32999au, 0xbf2f0000u, 0xbf2b6667u,
    0xbf27cccdu, 0xbf243333u, 0xbf20999au, 0xbf1d0000u, 0xbf196666u, 0xbf15cccdu, 0xbf123334u, 0xbf0e999au,
    0xbf0b0000u, 0xbf076666u, 0xbf03cccdu, 0xbf003333u, 0xbef93334u, 0xbef20000u, 0xbeeaccccu, 0xbee3999au,
    0xbedc6666u, 0xbed53332u, 0xbece0000u, 0xbec6ccccu, 0xbebf999au, 0xbeb86666u, 0xbeb13332u, 0xbeaa0000u,
    0xbea2ccccu, 0xbe9b999au, 0xbe946666u, 0xbe8d3334u, 0xbe860000u, 0xbe7d999au, 0xbe6f3334u, 0xbe60cccdu,
    0xbe526666u, 0xbe440000u, 0xbe359999u, 0xbe273333u, 0xbe18cccdu, 0xbe0a6666u, 0xbdf80000u, 0xbddb3334u,
    0xbdc9eb85u, 0xbdc428f5u, 0xbdbe6667u, 0xbdb8a3d7u, 0xbdb2e148u, 0xbdad1eb8u, 0xbda75c28u, 0xbda1999au,
    0xbd9bd70au, 0xbd96147bu, 0xbd9051ebu, 0xbd8a8f5du, 0xbd84cccdu, 0xbd7e147au, 0xbd728f5du, 0xbd670a3du,
    0xbd5b851fu, 0xbd500000u, 0xbd447ae1u, 0xbd38f5c3u, 0xbd2d70a3u, 0xbd21eb85u, 0xbd166667u, 0xbd0ae147u,
    0xbcfeb852u, 0xbce7ae13u, 0xbcd0a3d7u, 0xbcb9999au, 0xbca28f5cu, 0xbc8b851fu, 0xbc68f5c3u, 0xbc3ae148u,
    0xbc1f3b64u, 0xbc160418u, 0xbc0ccccdu, 0xbc039581u, 0xbbf4bc6au, 0xbbe24dd3u, 0xbbcfdf3bu, 0xbbbd70a4u,
    0xbbab020du, 0xbb989374u, 0xbb8624ddu, 0xbb676c8au, 0xbb428f5cu, 0xbb1db22du, 0xbaf1a9fcu, 0xbaa7ef9du,
    0xba7765ffu, 0xba59e83eu, 0xba3c6a80u, 0xba1eecc1u, 0xba016f01u, 0xb9c7e283u, 0xb98ce705u, 0xb923d70bu,
    0xb8ba1f4bu, 0xb88aefb3u, 0xb8378034u, 0xb7b24206u, 0xb70205ffu, 0xb65a1a94u, 0xb513a3b7u, 0x00000000u,
    0x3513a3b7u, 0x365a1a94u, 0x370205ffu, 0x37b24206u, 0x38378034u, 0x388aefb3u, 0x38ba1f4bu, 0x3923d70bu,
    0x398ce705u, 0x39c7e283u, 0x3a016f01u, 0x3a1eecc1u, 0x3a3c6a80u, 0x3a59e83eu, 0x3a7765ffu, 0x3aa7ef9du,
    0x3af1a9fcu, 0x3b1db22du, 0x3b428f5cu, 0x3b676c8au, 0x3b8624ddu, 0x3b989374u, 0x3bab020du, 0x3bbd70a4u,
    0x3bcfdf3bu, 0x3be24dd3u, 0x3bf4bc6au, 0x3c039581u, 0x3c0ccccdu, 0x3c160418u, 0x3c1f3b64u, 0x3c3ae148u,
    0x3c68f5c3u, 0x3c8b851fu, 0x3ca28f5cu, 0x3cb9999au, 0x3cd0a3d7u, 0x3ce7ae13u, 0x3cfeb852u, 0x3d0ae147u,
    0x3d166667u, 0x3d21eb85u, 0x3d2d70a3u, 0x3d38f5c3u, 0x3d447ae1u, 0x3d500000u, 0x3d5b851fu, 0x3d670a3du,
    0x3d728f5du, 0x3d7e147au, 0x3d84cccdu, 0x3d8a8f5du, 0x3d9051ebu, 0x3d96147bu, 0x3d9bd70au, 0x3da1999au,
    0x3da75c28u, 0x3dad1eb8u, 0x3db2e148u, 0x3db8a3d7u, 0x3dbe6667u, 0x3dc428f5u, 0x3dc9eb85u, 0x3ddb3334u,
    0x3df80000u, 0x3e0a6666u, 0x3e18cccdu, 0x3e273333u, 0x3e359999u, 0x3e440000u, 0x3e526666u, 0x3e60cccdu,
    0x3e6f3334u, 0x3e7d999au, 0x3e860000u, 0x3e8d3334u, 0x3e946666u, 0x3e9b999au, 0x3ea2ccccu, 0x3eaa0000u,
    0x3eb13332u, 0x3eb86666u, 0x3ebf999au, 0x3ec6ccccu, 0x3ece0000u, 0x3ed53332u, 0x3edc6666u, 0x3ee3999au,
    0x3eeaccccu, 0x3ef20000u, 0x3ef93334u, 0x3f003333u, 0x3f03cccdu, 0x3f076666u, 0x3f0b0000u, 0x3f0e999au,
    0x3f123334u, 0x3f15cccdu, 0x3f196666u, 0x3f1d0000u, 0x3f20999au, 0x3f243333u, 0x3f27cccdu, 0x3f2b6667u,
    0x3f2f0000u, 0x3f32999au, 0x3f363334u, 0x3f39cccdu, 0x3f3d6667u, 0x3f410000u, 0x3f44999au, 0x3f483333u,
    0x3f4bccccu, 0x3f4f6666u, 0x3f530000u, 0x3f569999u, 0x3f5a3333u, 0x3f5dccccu, 0x3f616666u, 0x3f650000u,
    0x3f68999au, 0x3f6c3333u, 0x3f6fccccu, 0x3f736666u, 0x3f770000u, 0x3f7a9999u, 0x3f7e3333u, 0x3f800000u,
};

inline float float_from_bits(uint32_t bits) {
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}

// The tables above as floats, built once when the library is loaded.
struct QuantTables {
    float nf4[16];
    float nf4_thresholds[15];
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
