// nf4.cu: 4-bit (NF4/FP4) quantization and the QLoRA linear layer on a quantized base weight,
// y = x deq(W)ᵀ + bias + scale·(dropout(x) Aᵀ) Bᵀ, its input gradient, and the plain 4-bit matmul.
// Semantics and formats are those of native/include/lora_kernels_nf4.h (bitsandbytes exactly,
// REFERENCE.md §8); docs/KERNELS.md gives each entry point's launch geometry and shared memory.
//
// Entry points (T = f32 | bf16: storage of w, x, bias, A, B, y, dx; u and du are fp32; sums in fp32).
// A weight's statistics arrive as (absmax, qabsmax, absmax2, offset): absmax != null is plain,
// absmax == null is double-quantized (block b's absmax = dyn8[qabsmax[b]]·absmax2[b >> 8] + offset,
// product and sum each rounded to fp32, never fused: bitsandbytes' dequantize_4bit and the CPU
// kernels round both). quant_type 0 = NF4, 1 = FP4.
//   lk_nf4_quantize_T            codes, absmax <- w                            one warp per block
//   lk_nf4_dequantize_T          w <- codes, stats                             one thread per byte
//   lk_nf4_absmax_mean_f32       offset = mean(absmax)                         one block
//   lk_nf4_double_quantize_f32   qabsmax, absmax2 <- absmax, offset            one block per 256
//   lk_nf4_matmul_decode_T       y = x deq(W)ᵀ + bias, M <= 16                 W-streaming GEMV
//   lk_nf4_matmul_tiled_T        the same for any M                            tiled GEMM
//   lk_nf4_qlora_forward_decode_T  y and u for M <= 16, one launch             W-streaming GEMV
//   lk_nf4_qlora_forward_tiled_T   y = x deq(W)ᵀ + bias + scale·u Bᵀ           tiled GEMM, LoRA as K
//   lk_nf4_grad_x_T              dx = dy deq(W) + dropout'(du A), one pass     tiled GEMM, LoRA as K
//   lk_nf4_project_f32           P = deq(W) Aᵀ in double (QDoRA's weight norm) one warp per W row
// u for the tiled forward comes from lk_lora_project_T, and dA, dB, du reuse lk_lora_grad_a/_b/_u
// (kernels/lora.cu): they never touch W.
//
// Strategies and why:
//   * deq(W) is never written to global memory: every consumer decodes nibbles in registers while
//     it streams or stages W, so W costs n/2 bytes of traffic instead of 4n (fp32) or 2n (bf16).
//     Code tables (16 fp32) and, when nested, the dynamic 8-bit map (256 fp32) are copied into
//     shared memory per block: a nibble lookup by 32 lanes is then one conflict-free shared read
//     (16 values in 16 banks), where a constant-memory lookup would serialise on distinct indices.
//   * quantize: one warp per quantization block (blocksize 32..4096), 8 per 256-thread block; the
//     absmax is a warp max over the block, the codes use the fp32 reciprocal 1/max(absmax, 1e-38)
//     (bnb multiplies by the reciprocal; the clamp is bnb's CPU backend's) and bnb's decision
//     rules (NF4: count of the float32 midpoints strictly exceeded; FP4: the §8.2 tree), so codes
//     are bit-identical to the CPU. An all-zero block thus encodes the code of 0.0 (REFERENCE.md
//     §11). Non-finite input is not detected here (a max ignores NaN): the C# side (Ops.Nf4)
//     rejects it before launching, naming the first bad index, as lk_cpu_quantize_4bit does.
//   * absmax_mean: one 256-thread block, each thread summing a fixed stride of absmax in double,
//     then a fixed shared-memory tree: deterministic for a given nblocks, and the double sum
//     rounds to the correctly rounded fp32 mean except in rare ties. The CPU sums pairwise in
//     fp32 (and bnb takes torch's fp32 mean, another order), so offsets agree to a few ulp, not
//     bit for bit; everything downstream of a given offset is bit-exact.
//   * double_quantize: one 256-thread block per nested block (bnb's nested blocksize 256): block
//     max of |absmax - offset|, then bnb's dQuantize<0> search (pivot 127, steps 64..1, then a
//     midpoint comparison) step for step, as the CPU does, so ties resolve as bnb's do. A nested
//     block whose values all equal the offset (absmax2 = 0) encodes code 127 (exact 0.0).
//   * decode (M <= 16) mirrors lora.cu's forward decode: bound by streaming W once; each block
//     owns a contiguous range of W rows, stages x (fp32, chunks of kDecodeChunk columns) and its
//     dropout keep bits in shared memory, each warp streams two W rows at a time with 16-byte
//     loads (32 weights, one absmax: 32 divides every blocksize and `in`), for all M tokens at
//     once; table values are dotted with x and the dot scaled by the absmax once per group, so
//     a weight costs one nibble extract, one shared lookup and one FMA per token. u = dropout(x)
//     Aᵀ is computed per block redundantly (no u round trip through memory, one launch).
//     When `in` is not a multiple of 32 (rows then do not start on a 16-byte boundary) lanes read
//     single bytes instead.
//   * tiled mirrors lora.cu's tile engine (64x64 output tile per 256-thread block, 16-deep K
//     slices staged into shared memory as fp32, 4x4 register sub-tile per thread strided by 16):
//     W's slice is dequantized while it is staged. The forward reduces the LoRA columns u Bᵀ
//     first, scales, then continues with x deq(W)ᵀ into the same accumulators; grad_x reduces
//     du A first, applies each output's dropout factor, then continues with dy deq(W). A copy of
//     the engine rather than a shared header: kernels may include only common.cuh.
//
//   * project (QDoRA's norm, kernels/dora.cu explains the method): dora.cu's lk_dora_project with W's
//     rows decoded on the fly: each lane's products go into fp32 partial sums of at most
//     kProjectPartialTerms = 64 terms (LK_DORA_PARTIAL_TERMS), flushed to double, and the warp
//     reduces in double, so P errs by at most γ_64 relative to Σ|deq(w)·a|. Tables in shared memory
//     as for the other consumers; 8 columns of P per pass over a row (each code decoded ceil(r/8)
//     times, from L1). A copy of dora.cu's loop rather than a shared header: kernels may include
//     only common.cuh, and only this file holds the 4-bit tables.
//
// Assumptions: row-major dense tensors; W is [out, in] flattened row-major (quantization blocks
// may cross rows); every matmul dimension and out·in < 2^31 (the C# side guarantees it), so int
// indices suffice there; quantize/dequantize take 64-bit n. blocksize is a power of two in
// [32, 4096]. r may be 0 (A, B, u, du unused and may be null).
//
// Bytes and FLOPs per call (s = bytes per T element, n = out·in, nb = n / blocksize,
// "min" = each tensor once; stats = 4·nb plain, nb + 4·nb/256 nested):
//   quantize       FLOPs ~20·n;                   bytes 2·s·n (w read twice, the second from L1/L2) + n/2 + 4·nb
//   dequantize     FLOPs n (+ 2·nb nested);       bytes n/2 + stats + s·n
//   absmax_mean    FLOPs nb;                      bytes 4·nb
//   double_quant   FLOPs ~12·nb;                  bytes 4·nb + nb + 4·nb/256
//   matmul decode  FLOPs 2·M·n;                   bytes n/2 + stats + s·(M·in + out + M·out), x per block from L2
//   matmul tiled   FLOPs 2·M·n;                   min bytes n/2 + stats + s·(M·in + out + M·out); W re-read
//                                                 ceil(M/64) times and x ceil(out/64) times, mostly from L2
//   qlora decode   FLOPs 2·M·(n + out·r) + grid·2·M·r·in; bytes matmul decode + s·(r·in + out·r) + 4·M·r
//   qlora tiled    FLOPs 2·M·(n + out·r);         min bytes matmul tiled + s·out·r + 4·M·r
//   grad_x         FLOPs 2·M·(n + r·in);          min bytes n/2 + stats + s·(M·out + r·in + M·in) + 4·M·r
//   project        FLOPs 2·n·r;                   bytes n/2 + stats + 8·out·r, A per row from L1/L2
#include "common.cuh"

// Device tables: __constant__ under CUDA, ordinary read-only arrays under the emulator.
#if defined(LK_MODE_CUDA)
#define LK_NF4_TABLE __constant__
#else
#define LK_NF4_TABLE static const
#endif

namespace {

constexpr int kQuantNf4 = 0;
constexpr int kQuantFp4 = 1;
constexpr int kNestedBlock = 256;  // first-level absmax values per nested block (bnb: 256)

// ---- tables (float32 bit patterns, REFERENCE.md §8.1, §8.2, Appendix B) -------------------------
LK_NF4_TABLE lk_u32 kNf4Bits[16] = {
    0xbf800000u, 0xbf3239b1u, 0xbf066b30u, 0xbeca32a0u, 0xbe91a24du, 0xbe3d353fu, 0xbdba7871u, 0x00000000u,
    0x3da2faffu, 0x3e24cae3u, 0x3e7c04ddu, 0x3ead033au, 0x3ee1a4b8u, 0x3f1007abu, 0x3f3913b3u, 0x3f800000u,
};
// FP4: bit 3 is the sign, bits 0..2 index bnb's kernel LUT {0, 0.005208333333, 0.66666667, 1,
// 0.33333333, 0.5, 0.16666667, 0.25} (code 8 is -0.0).
LK_NF4_TABLE lk_u32 kFp4Bits[16] = {
    0x00000000u, 0x3baaaaabu, 0x3f2aaaabu, 0x3f800000u, 0x3eaaaaabu, 0x3f000000u, 0x3e2aaaabu, 0x3e800000u,
    0x80000000u, 0xbbaaaaabu, 0xbf2aaaabu, 0xbf800000u, 0xbeaaaaabu, 0xbf000000u, 0xbe2aaaabu, 0xbe800000u,
};
// create_dynamic_map(signed=True): the nested absmax code.
LK_NF4_TABLE lk_u32 kDyn8Bits[256] = {
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

// ---- encoding ---------------------------------------------------------------------------------------
// NF4: the number of float32 midpoints (code[i] + code[i+1]) / 2 that x strictly exceeds; a value
// on a midpoint takes the lower code, NaN takes code 0 (every comparison false), as bnb's tree.
LK_DEVICE int lk_nf4_encode(float x) {
    const lk_u32 midpoints[15] = {0xbf591cd8u, 0xbf1c5270u, 0xbeeb8480u, 0xbeadea76u, 0xbe703cecu,
                                  0xbe0d38bcu, 0xbd3a7871u, 0x3d22faffu, 0x3df64862u, 0x3e5067e0u,
                                  0x3e9582d4u, 0x3ec753f9u, 0x3f006d04u, 0x3f248dafu, 0x3f5c89dau};
    int code = 0;
#pragma unroll
    for (int i = 0; i < 15; ++i) code += x > lk_bits_f32(midpoints[i]) ? 1 : 0;
    return code;
}

// FP4: bnb's decision tree on |x| (REFERENCE.md §8.2, its float32 literals), sign bit 8 iff x < 0.
LK_DEVICE int lk_fp4_encode(float x) {
    const float a = x < 0.0f ? -x : x;
    int bits;
    if (a > lk_bits_f32(0x3e955555u))
        bits = a > lk_bits_f32(0x3f155550u) ? (a > lk_bits_f32(0x3f555555u) ? 3 : 2)
                                            : (a > lk_bits_f32(0x3ed55556u) ? 5 : 4);
    else
        bits = a > lk_bits_f32(0x3db00000u) ? (a > lk_bits_f32(0x3e555555u) ? 7 : 6)
                                            : (a > lk_bits_f32(0x3b2aaab9u) ? 1 : 0);
    return x < 0.0f ? bits | 8 : bits;
}

LK_DEVICE int lk_encode_4bit(float x, int quant_type) {
    return quant_type == kQuantFp4 ? lk_fp4_encode(x) : lk_nf4_encode(x);
}

LK_DEVICE int lk_zero_code(int quant_type) { return quant_type == kQuantNf4 ? 7 : 0; }

// log2 of a power-of-two blocksize, so block indices are shifts.
LK_DEVICE int lk_log2(int power_of_two) { return 31 - __clz(power_of_two); }

// Copies the 16-entry code table of quant_type and, when `nested`, the dynamic map into shared
// memory. The caller synchronises before the first use.
LK_DEVICE void lk_load_tables(float* lut, float* dyn8, int quant_type, bool nested, int threads) {
    for (int i = (int)threadIdx.x; i < 16; i += threads)
        lut[i] = lk_bits_f32(quant_type == kQuantFp4 ? kFp4Bits[i] : kNf4Bits[i]);
    if (nested)
        for (int i = (int)threadIdx.x; i < 256; i += threads) dyn8[i] = lk_bits_f32(kDyn8Bits[i]);
}

// A quantized weight as the consumers read it; lut and dyn8 point at the block's shared copies.
struct QuantView {
    const lk_u8* __restrict__ codes;
    const float* __restrict__ absmax;   // null when nested
    const lk_u8* __restrict__ qabsmax;
    const float* __restrict__ absmax2;
    float offset;
    int shift;                          // log2(blocksize)
    const float* lut;
    const float* dyn8;
};

// A product rounded to fp32 on its own: __fmul_rn is never contracted into an FMA by NVRTC;
// the emulator's g++ build targets baseline x86-64, which has no FMA to contract into.
LK_DEVICE float lk_mul_rn(float a, float b) {
#if defined(LK_MODE_CUDA)
    return __fmul_rn(a, b);
#else
    return a * b;
#endif
}

LK_DEVICE float lk_block_absmax(const QuantView& q, lk_i64 block) {
    if (q.absmax) return q.absmax[block];
    return lk_mul_rn(q.dyn8[q.qabsmax[block]], q.absmax2[block >> 8]) + q.offset;
}

// deq(W) at flat index `flat` (element 2k in the high nibble of byte k).
LK_DEVICE float lk_quant_weight(const QuantView& q, lk_i64 flat) {
    const lk_u32 byte = q.codes[flat >> 1];
    const lk_u32 nibble = (flat & 1) ? byte & 15u : byte >> 4;
    return q.lut[nibble] * lk_block_absmax(q, flat >> q.shift);
}

// ---- quantize ---------------------------------------------------------------------------------------
constexpr int kQuantizeThreads = 256;
constexpr int kQuantizeWarps = kQuantizeThreads / 32;  // quantization blocks per CUDA block
constexpr float kMinAbsmax = 1e-38f;  // bnb's CPU backend clamps absmax to this before the reciprocal

// Warp `warp` of CUDA block blockIdx.x quantizes block b = blockIdx.x·8 + warp: absmax by a warp
// max, then lanes stride the block's bytes (two elements each). No barriers: the guard is safe.
template <class T>
LK_DEVICE void lk_nf4_quantize(const T* __restrict__ w, lk_u8* __restrict__ codes, float* __restrict__ absmax,
                               lk_i64 n, int blocksize, int quant_type) {
    const int lane = (int)threadIdx.x & 31, warp = (int)threadIdx.x >> 5;
    const lk_i64 nblocks = (n + blocksize - 1) / blocksize;
    const lk_i64 b = (lk_i64)blockIdx.x * kQuantizeWarps + warp;
    if (b < nblocks) {
        const lk_i64 begin = b * blocksize;
        const lk_i64 end = n < begin + blocksize ? n : begin + blocksize;
        float m = 0.0f;
        for (lk_i64 i = begin + lane; i < end; i += 32) {
            const float v = lk_load(w + i);
            const float a = v < 0.0f ? -v : v;
            m = a > m ? a : m;
        }
        m = lk_warp_max(m);
        const float inv = 1.0f / (m > kMinAbsmax ? m : kMinAbsmax);  // all-zero block: x = 0
        for (lk_i64 p = begin / 2 + lane; p < (end + 1) / 2; p += 32) {
            const int hi = lk_encode_4bit(lk_load(w + 2 * p) * inv, quant_type);
            const int lo = 2 * p + 1 < n ? lk_encode_4bit(lk_load(w + 2 * p + 1) * inv, quant_type)
                                         : lk_zero_code(quant_type);  // odd n: pad with the code of 0.0
            codes[p] = (lk_u8)((hi << 4) | lo);
        }
        if (lane == 0) absmax[b] = m;
    }
}

// ---- dequantize -------------------------------------------------------------------------------------
constexpr int kDequantizeThreads = 256;  // the element-wise geometry (GpuBackend.ElementwiseGrid over bytes)

// Grid-stride over bytes; each thread writes the byte's two elements (the second only if < n).
template <class T>
LK_DEVICE void lk_nf4_dequantize(const lk_u8* codes, const float* absmax, const lk_u8* qabsmax,
                                 const float* absmax2, float offset, T* __restrict__ w, lk_i64 n, int blocksize,
                                 int quant_type) {
    LK_SHARED(float, lut, [16]);
    LK_SHARED(float, dyn8, [256]);
    lk_load_tables(lut, dyn8, quant_type, absmax == nullptr, (int)blockDim.x);
    __syncthreads();
    const QuantView q{codes, absmax, qabsmax, absmax2, offset, lk_log2(blocksize), lut, dyn8};
    const lk_i64 bytes = (n + 1) / 2;
    const lk_i64 stride = (lk_i64)gridDim.x * blockDim.x;
    for (lk_i64 p = (lk_i64)blockIdx.x * blockDim.x + threadIdx.x; p < bytes; p += stride) {
        const lk_u32 byte = codes[p];
        const float scale = lk_block_absmax(q, (2 * p) >> q.shift);  // both elements share a block
        lk_store(w + 2 * p, lut[byte >> 4] * scale);
        if (2 * p + 1 < n) lk_store(w + 2 * p + 1, lut[byte & 15u] * scale);
    }
}

// ---- double quantization ------------------------------------------------------------------------------
constexpr int kMeanThreads = 256;

// offset[0] = mean(absmax): thread t sums absmax[t], absmax[t + 256], ... in double, then a fixed
// pairwise tree over the 256 partial sums; one rounding to fp32 at the end.
LK_DEVICE void lk_nf4_absmax_mean(const float* __restrict__ absmax, float* __restrict__ offset, lk_i64 nblocks) {
    LK_SHARED(double, partial, [kMeanThreads]);
    const int tid = (int)threadIdx.x;
    double sum = 0.0;
    for (lk_i64 i = tid; i < nblocks; i += kMeanThreads) sum += (double)absmax[i];
    partial[tid] = sum;
    __syncthreads();
    for (int half = kMeanThreads / 2; half > 0; half >>= 1) {
        if (tid < half) partial[tid] += partial[tid + half];
        __syncthreads();
    }
    if (tid == 0) offset[0] = (float)(partial[0] / (double)nblocks);
}

// bnb's dQuantize<0> (csrc/kernels.cu) over the sorted dynamic map, step for step: binary search
// from pivot 127 with steps 64..1, then the pivot or its bracketing neighbour by the midpoint
// ('>' mid goes up, '<' mid goes down, exactly on it stays at the pivot).
LK_DEVICE int lk_dyn8_encode(float x) {
    int pivot = 127, upper_pivot = 255, lower_pivot = 0;
    float lower = -1.0f, upper = 1.0f;
    float value = lk_bits_f32(kDyn8Bits[pivot]);
    for (int step = 64; step > 0; step >>= 1) {
        if (x > value) {
            lower_pivot = pivot;
            lower = value;
            pivot += step;
        } else {
            upper_pivot = pivot;
            upper = value;
            pivot -= step;
        }
        value = lk_bits_f32(kDyn8Bits[pivot]);
    }
    if (upper_pivot == 255) upper = lk_bits_f32(kDyn8Bits[255]);
    if (lower_pivot == 0) lower = lk_bits_f32(kDyn8Bits[0]);
    if (x > value) return x > (upper + value) * 0.5f ? upper_pivot : pivot;
    return x < (lower + value) * 0.5f ? lower_pivot : pivot;
}

constexpr int kDoubleQuantThreads = kNestedBlock;  // one thread per first-level absmax

// Nested block c = blockIdx.x: absmax2[c] = max |absmax[b] - offset| over its 256 values,
// qabsmax[b] = the dQuantize code of (absmax[b] - offset)·(1/absmax2[c]); a block whose values
// all equal the offset (absmax2 = 0) encodes code 127 (exact 0.0).
LK_DEVICE void lk_nf4_double_quantize(const float* __restrict__ absmax, lk_u8* __restrict__ qabsmax,
                                      float* __restrict__ absmax2, const float* __restrict__ offset, lk_i64 nblocks) {
    LK_SHARED(float, warp_max, [kDoubleQuantThreads / 32]);
    const int tid = (int)threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const lk_i64 b = (lk_i64)blockIdx.x * kNestedBlock + tid;
    const float centered = b < nblocks ? absmax[b] - offset[0] : 0.0f;
    float m = lk_warp_max(centered < 0.0f ? -centered : centered);
    if (lane == 0) warp_max[warp] = m;
    __syncthreads();
    m = 0.0f;
#pragma unroll
    for (int i = 0; i < kDoubleQuantThreads / 32; ++i) m = warp_max[i] > m ? warp_max[i] : m;
    if (b < nblocks) qabsmax[b] = (lk_u8)(m > 0.0f ? lk_dyn8_encode(centered * (1.0f / m)) : 127);
    if (tid == 0) absmax2[blockIdx.x] = m;
}

// ---- tiled GEMM engine (lora.cu's, with a quantized-weight operand) -------------------------------
constexpr int kTileM = 64;         // output rows per block
constexpr int kTileN = 64;         // output columns per block
constexpr int kTileK = 16;         // reduction depth staged per shared-memory pass
constexpr int kTileThreads = 256;  // 16 x 16 threads, each owning a 4 x 4 sub-tile
constexpr int kTileSide = 16;
constexpr int kTilePerThread = 4;
constexpr int kTileStride = kTileM + 2;  // ≡ 2 (mod 32): conflict-free K-contiguous staging stores
static_assert(kTileSide * kTileSide == kTileThreads, "one thread per (ty, tx) pair");
static_assert(kTileSide * kTilePerThread == kTileM && kTileM == kTileN, "square tile covered by the threads");
static_assert((kTileM * kTileK) % kTileThreads == 0, "each thread stages a whole number of elements");

// A dense operand: element (row, k) of the logical [rows, K] matrix; kContiguousK: stored
// [rows, K], else [K, rows]. kDropout multiplies by the dropout factor of the stored index.
template <class T, bool kContiguousK_, bool kDropout = false>
struct Operand {
    static constexpr bool kContiguousK = kContiguousK_;
    const T* __restrict__ data;
    int ld;
    float dropout_p;
    lk_u64 seed;

    LK_DEVICE float operator()(int row, int k) const {
        const int index = kContiguousK ? row * ld + k : k * ld + row;
        float value = lk_load(data + index);
        if (kDropout) value *= lk_dropout_factor(seed, (lk_u64)index, dropout_p);
        return value;
    }
};

template <class T, bool kContiguousK>
LK_DEVICE Operand<T, kContiguousK> lk_operand(const T* data, int ld) {
    return Operand<T, kContiguousK>{data, ld, 0.0f, 0ull};
}

// deq(W) as an operand; W is stored [out, in] with ld = in. kContiguousK: K is `in` (x deq(W)ᵀ),
// else K is `out` (dy deq(W)).
template <bool kContiguousK_>
struct QuantOperand {
    static constexpr bool kContiguousK = kContiguousK_;
    QuantView q;
    int ld;

    LK_DEVICE float operator()(int row, int k) const {
        return lk_quant_weight(q, kContiguousK ? row * ld + k : k * ld + row);
    }
};

template <int kRows, class Op>
LK_DEVICE void lk_tile_stage(float (*tile)[kTileStride], const Op& op, int r0, int rows, int k0, int K) {
    constexpr int kPerThread = kRows * kTileK / kTileThreads;
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
        const int idx = (int)threadIdx.x + i * kTileThreads;
        const int kk = Op::kContiguousK ? idx % kTileK : idx / kRows;
        const int rr = Op::kContiguousK ? idx / kTileK : idx % kRows;
        const int row = r0 + rr, k = k0 + kk;
        tile[kk][rr] = (row < rows && k < K) ? op(row, k) : 0.0f;
    }
}

// acc[i][j] += Σ_k a(m0 + ty + 16i, k) · b(n0 + tx + 16j, k) over k in [0, K); call from all threads.
template <class OpA, class OpB>
LK_DEVICE void lk_tile_reduce(float (&acc)[kTilePerThread][kTilePerThread], const OpA& a, const OpB& b, int K,
                              int m0, int M, int n0, int N, float (*tile_a)[kTileStride],
                              float (*tile_b)[kTileStride]) {
    const int tx = (int)threadIdx.x % kTileSide, ty = (int)threadIdx.x / kTileSide;
    for (int k0 = 0; k0 < K; k0 += kTileK) {
        lk_tile_stage<kTileM>(tile_a, a, m0, M, k0, K);
        lk_tile_stage<kTileN>(tile_b, b, n0, N, k0, K);
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < kTileK; ++kk) {
            float av[kTilePerThread], bv[kTilePerThread];
#pragma unroll
            for (int i = 0; i < kTilePerThread; ++i) av[i] = tile_a[kk][ty + kTileSide * i];
#pragma unroll
            for (int j = 0; j < kTilePerThread; ++j) bv[j] = tile_b[kk][tx + kTileSide * j];
#pragma unroll
            for (int i = 0; i < kTilePerThread; ++i)
#pragma unroll
                for (int j = 0; j < kTilePerThread; ++j) acc[i][j] += av[i] * bv[j];
        }
        __syncthreads();
    }
}

template <class F>
LK_DEVICE void lk_tile_for_each(float (&acc)[kTilePerThread][kTilePerThread], int m0, int M, int n0, int N,
                                const F& f) {
    const int tx = (int)threadIdx.x % kTileSide, ty = (int)threadIdx.x / kTileSide;
#pragma unroll
    for (int i = 0; i < kTilePerThread; ++i) {
        const int m = m0 + ty + kTileSide * i;
#pragma unroll
        for (int j = 0; j < kTilePerThread; ++j) {
            const int n = n0 + tx + kTileSide * j;
            if (m < M && n < N) f(m, n, acc[i][j]);
        }
    }
}

// ---- forward, tiled ---------------------------------------------------------------------------------
// y = [u | x]·[B | deq(W)]ᵀ: u Bᵀ first (r = 0: nothing), times scale, then x deq(W)ᵀ, bias in the
// epilogue. Grid (ceil(M/64), ceil(out/64)). The plain matmul is this with r = 0.
template <class T>
LK_DEVICE void lk_nf4_forward_tiled(const T* x, const lk_u8* codes, const float* absmax, const lk_u8* qabsmax,
                                    const float* absmax2, float offset, const T* bias, const float* u, const T* B,
                                    T* y, int M, int in, int out, int r, int blocksize, int quant_type, float scale) {
    LK_SHARED(float, tile_a, [kTileK][kTileStride]);
    LK_SHARED(float, tile_b, [kTileK][kTileStride]);
    LK_SHARED(float, lut, [16]);
    LK_SHARED(float, dyn8, [256]);
    lk_load_tables(lut, dyn8, quant_type, absmax == nullptr, kTileThreads);
    __syncthreads();
    const QuantOperand<true> w{{codes, absmax, qabsmax, absmax2, offset, lk_log2(blocksize), lut, dyn8}, in};
    const int m0 = (int)blockIdx.x * kTileM, n0 = (int)blockIdx.y * kTileN;
    float acc[kTilePerThread][kTilePerThread] = {};
    lk_tile_reduce(acc, lk_operand<float, true>(u, r), lk_operand<T, true>(B, r), r, m0, M, n0, out, tile_a, tile_b);
#pragma unroll
    for (int i = 0; i < kTilePerThread; ++i)
#pragma unroll
        for (int j = 0; j < kTilePerThread; ++j) acc[i][j] *= scale;
    lk_tile_reduce(acc, lk_operand<T, true>(x, in), w, in, m0, M, n0, out, tile_a, tile_b);
    lk_tile_for_each(acc, m0, M, n0, out, [&](int m, int n, float v) {
        lk_store(y + m * out + n, bias ? v + lk_load(bias + n) : v);
    });
}

// ---- grad_x, tiled ----------------------------------------------------------------------------------
// dx = [du | dy]·[A | deq(W)]: du A first, each accumulator times the dropout factor of its own
// dx[m, k], then dy deq(W) continues the sum. Grid (ceil(M/64), ceil(in/64)).
template <class T>
LK_DEVICE void lk_nf4_grad_x(const T* dy, const lk_u8* codes, const float* absmax, const lk_u8* qabsmax,
                             const float* absmax2, float offset, const float* du, const T* A, T* dx, int M, int in,
                             int out, int r, int blocksize, int quant_type, float dropout_p, lk_u64 seed) {
    LK_SHARED(float, tile_a, [kTileK][kTileStride]);
    LK_SHARED(float, tile_b, [kTileK][kTileStride]);
    LK_SHARED(float, lut, [16]);
    LK_SHARED(float, dyn8, [256]);
    lk_load_tables(lut, dyn8, quant_type, absmax == nullptr, kTileThreads);
    __syncthreads();
    const QuantOperand<false> w{{codes, absmax, qabsmax, absmax2, offset, lk_log2(blocksize), lut, dyn8}, in};
    const int m0 = (int)blockIdx.x * kTileM, n0 = (int)blockIdx.y * kTileN;
    float acc[kTilePerThread][kTilePerThread] = {};
    lk_tile_reduce(acc, lk_operand<float, true>(du, r), lk_operand<T, false>(A, in), r, m0, M, n0, in, tile_a, tile_b);
    lk_tile_for_each(acc, m0, M, n0, in,
                     [&](int m, int k, float& v) { v *= lk_dropout_factor(seed, (lk_u64)(m * in + k), dropout_p); });
    lk_tile_reduce(acc, lk_operand<T, true>(dy, out), w, out, m0, M, n0, in, tile_a, tile_b);
    lk_tile_for_each(acc, m0, M, n0, in, [&](int m, int k, float v) { lk_store(dx + m * in + k, v); });
}

// ---- forward, decode (M <= 16) --------------------------------------------------------------------
// One 256-thread block per SM (grid <= SM count), hence __launch_bounds__(256, 1); accumulators
// are sized for kDecodeMaxM and a smaller M leaves some idle (warp-uniform exits), so one
// instantiation serves every M, as in lora.cu.
constexpr int kDecodeThreads = 256;
constexpr int kDecodeWarps = kDecodeThreads / 32;
constexpr int kDecodeMaxM = 16;
constexpr int kDecodeChunk = 2048;     // x columns staged per pass: 16 x 2048 fp32 = 128 KiB
constexpr int kDecodeRowsPerWarp = 2;  // W rows a warp streams together
constexpr int kDecodeXAlign = 8;       // staged x row stride multiple: 32 bytes
constexpr int kDecodeGroup = 32;       // weights per 16-byte code load
constexpr int kDecodeTableWords = 16 + 256;
static_assert(kDecodeChunk % kDecodeGroup == 0 && kDecodeChunk % 32 == 0, "chunks hold whole groups and mask words");
static_assert(kDecodeTableWords % 4 == 0, "x stays 16-byte aligned after the tables");

struct alignas(16) Codes16 {
    lk_u32 word[4];
};
struct alignas(16) Float4 {
    float v[4];
};

// The decode kernel's dynamic shared memory, carved identically here and by the launchers
// (GpuBackend.Nf4.cs, tests/native/parity): all 4-byte words, in this order:
//   lut   [16]              code table of quant_type
//   dyn8  [256]             dynamic map (filled only when nested)
//   x     [M][x_stride]     fp32, x_stride = round_up(min(in, kDecodeChunk), 8)
//   mask  [M][mask_words]   dropout keep bits of the staged x, mask_words = ceil(x_stride / 32)
//   u     [M][r]            fp32 sums of dropout(x) Aᵀ
//   ypart [M][rows]         fp32 sums of x deq(W)ᵀ for the block's rows, rows = ceil(out / gridDim.x)
struct DecodeLayout {
    int x_stride, mask_words, rows_per_block;
    float* lut;
    float* dyn8;
    float* x;
    lk_u32* mask;
    float* u;
    float* ypart;
};

LK_DEVICE DecodeLayout lk_decode_layout(int M, int in, int out, int r) {
    DecodeLayout s;
    s.x_stride = lk_ceil_div(lk_min(in, kDecodeChunk), kDecodeXAlign) * kDecodeXAlign;
    s.mask_words = lk_ceil_div(s.x_stride, 32);
    s.rows_per_block = lk_ceil_div(out, (int)gridDim.x);
    s.lut = lk_dynamic_shared<float>();
    s.dyn8 = s.lut + 16;
    s.x = s.lut + kDecodeTableWords;
    s.mask = reinterpret_cast<lk_u32*>(s.x + M * s.x_stride);
    s.u = reinterpret_cast<float*>(s.mask + M * s.mask_words);
    s.ypart = s.u + M * r;
    return s;
}

// Finishes a warp's per-(row, token) partial sums: one warp reduction each, lane 0 adds the total
// to dst[m·dst_m_stride + row - lo]. Rows at or past hi (the clamped tail of a pair) are skipped.
template <int R>
LK_DEVICE void lk_decode_flush(float (&acc)[R][kDecodeMaxM], int g, int lo, int hi, int M, float* dst,
                               int dst_m_stride) {
    const int lane = (int)threadIdx.x & 31;
#pragma unroll
    for (int rr = 0; rr < R; ++rr) {
        if (g + rr >= hi) break;  // warp-uniform
#pragma unroll
        for (int m = 0; m < kDecodeMaxM; ++m) {
            if (m >= M) break;
            const float sum = lk_warp_sum(acc[rr][m]);
            if (lane == 0) dst[m * dst_m_stride + g + rr - lo] += sum;
        }
    }
}

// For rows [lo, hi) of a row-major [*, in] matrix (this chunk's columns c0 .. c0+cols) read
// through load(row, column), adds Σ_k load(row, c0+k)·x̃[m][k] to dst[m·dst_m_stride + row - lo],
// x̃ being the staged x times its keep factor when kMasked. Lanes stride the columns one element
// at a time (coalesced for dense rows; single bytes for codes).
template <bool kMasked, class Load>
LK_DEVICE void lk_decode_rows_scalar(const Load& load, int lo, int hi, int c0, int cols, const DecodeLayout& s,
                                     float keep, int M, float* dst, int dst_m_stride) {
    constexpr int R = kDecodeRowsPerWarp;
    const int lane = (int)threadIdx.x & 31, warp = (int)threadIdx.x >> 5;
    for (int g = lo + warp * R; g < hi; g += kDecodeWarps * R) {
        float acc[R][kDecodeMaxM];
#pragma unroll
        for (int rr = 0; rr < R; ++rr)
#pragma unroll
            for (int m = 0; m < kDecodeMaxM; ++m) acc[rr][m] = 0.0f;
        for (int k = lane; k < cols; k += 32) {
            float w[R];
#pragma unroll
            for (int rr = 0; rr < R; ++rr) w[rr] = load(lk_min(g + rr, hi - 1), c0 + k);  // clamp: no OOB
#pragma unroll
            for (int m = 0; m < kDecodeMaxM; ++m) {
                if (m >= M) break;
                float xv = s.x[m * s.x_stride + k];
                if (kMasked) xv *= ((s.mask[m * s.mask_words + (k >> 5)] >> (k & 31)) & 1u) ? keep : 0.0f;
#pragma unroll
                for (int rr = 0; rr < R; ++rr) acc[rr][m] += w[rr] * xv;
            }
        }
        lk_decode_flush<R>(acc, g, lo, hi, M, dst, dst_m_stride);
    }
}

// The quantized rows [lo, hi) with 16-byte code loads: requires in % 32 == 0 and 16-byte aligned
// codes, so each lane's group of 32 weights starts a 16-byte vector and lies in one quantization
// block (32 divides blocksize). Each of the 4 code words (8 weights) is decoded to table values
// for both rows; per token, 8 staged x values are dotted with them and the sum is scaled by the
// group's absmax once: per weight one nibble extract, one shared lookup and, per token, one FMA
// (scaling each weight first would add a multiply per weight, which dominates at M = 1, where
// this loop is instruction-bound rather than bandwidth-bound at 0.5 byte per weight).
LK_DEVICE void lk_decode_quant_rows_vec(const QuantView& q, int in, int lo, int hi, int c0, int cols,
                                        const DecodeLayout& s, int M, float* dst, int dst_m_stride) {
    constexpr int R = kDecodeRowsPerWarp;
    const int lane = (int)threadIdx.x & 31, warp = (int)threadIdx.x >> 5;
    const int groups = cols / kDecodeGroup;  // exact: in % 32 == 0 and c0 is a multiple of 32
    for (int g = lo + warp * R; g < hi; g += kDecodeWarps * R) {
        int row_base[R];
#pragma unroll
        for (int rr = 0; rr < R; ++rr) row_base[rr] = lk_min(g + rr, hi - 1) * in + c0;  // clamp: no OOB
        float acc[R][kDecodeMaxM];
#pragma unroll
        for (int rr = 0; rr < R; ++rr)
#pragma unroll
            for (int m = 0; m < kDecodeMaxM; ++m) acc[rr][m] = 0.0f;
        // Double-buffered: the next group's codes and absmax are fetched before this group is
        // consumed, so each lane keeps two 16-byte loads per row in flight without duplicating
        // the loop body (unrolling it instead triples the NVRTC compile time). With one 256-thread
        // block per SM that is ~16 KiB of W in flight per SM; whether it covers DRAM latency at
        // full bandwidth is unmeasured (no GPU here).
        Codes16 next[R];
        float next_scale[R];
        auto fetch = [&](int v) {
#pragma unroll
            for (int rr = 0; rr < R; ++rr) {
                const int flat = row_base[rr] + v * kDecodeGroup;
                next[rr] = *reinterpret_cast<const Codes16*>(q.codes + (flat >> 1));
                next_scale[rr] = lk_block_absmax(q, flat >> q.shift);
            }
        };
        if (lane < groups) fetch(lane);
        for (int v = lane; v < groups; v += 32) {
            Codes16 c[R];
            float scale[R];
#pragma unroll
            for (int rr = 0; rr < R; ++rr) {
                c[rr] = next[rr];
                scale[rr] = next_scale[rr];
            }
            if (v + 32 < groups) fetch(v + 32);
#pragma unroll
            for (int h = 0; h < 4; ++h) {
                float t[R][8];  // table values, not yet scaled by the absmax
#pragma unroll
                for (int rr = 0; rr < R; ++rr)
#pragma unroll
                    for (int e = 0; e < 8; ++e) {  // byte e/2 of the word; even element in its high nibble
                        const lk_u32 nibble = (c[rr].word[h] >> (8 * (e >> 1) + ((e & 1) ? 0 : 4))) & 15u;
                        t[rr][e] = q.lut[nibble];
                    }
#pragma unroll
                for (int m = 0; m < kDecodeMaxM; ++m) {
                    if (m >= M) break;
                    const float* xrow = s.x + m * s.x_stride + v * kDecodeGroup + 8 * h;
                    const Float4 x0 = *reinterpret_cast<const Float4*>(xrow);
                    const Float4 x1 = *reinterpret_cast<const Float4*>(xrow + 4);
#pragma unroll
                    for (int rr = 0; rr < R; ++rr) {
                        float dot = 0.0f;
#pragma unroll
                        for (int e = 0; e < 4; ++e) dot += t[rr][e] * x0.v[e];
#pragma unroll
                        for (int e = 0; e < 4; ++e) dot += t[rr][4 + e] * x1.v[e];
                        acc[rr][m] += scale[rr] * dot;
                    }
                }
            }
        }
        lk_decode_flush<R>(acc, g, lo, hi, M, dst, dst_m_stride);
    }
}

template <class T>
struct DenseRows {
    const T* __restrict__ data;
    int ld;
    LK_DEVICE float operator()(int row, int column) const { return lk_load(data + row * ld + column); }
};

struct QuantRows {
    QuantView q;
    int ld;
    LK_DEVICE float operator()(int row, int column) const { return lk_quant_weight(q, row * ld + column); }
};

// Strategy: see the file comment. Block b owns W rows [b·rows, (b+1)·rows), rows =
// ceil(out / gridDim.x); per chunk of x columns: stage x (fp32) and, with a LoRA branch, its
// dropout keep bits; accumulate u (warps over A's rows) and the block's x deq(W)ᵀ partial sums
// (warps over its W rows) in shared memory; then y = ypart + bias + scale·u Bᵀ, written once.
// The plain matmul is this with r = 0 (A, B, u unused).
template <class T>
LK_DEVICE void lk_nf4_forward_decode(const T* x, const lk_u8* codes, const float* absmax, const lk_u8* qabsmax,
                                     const float* absmax2, float offset, const T* bias, const T* A, const T* B, T* y,
                                     float* u, int M, int in, int out, int r, int blocksize, int quant_type,
                                     float scale, float dropout_p, lk_u64 seed) {
    if (M > kDecodeMaxM) __trap();  // the launcher routes M > 16 to the tiled kernels; reaching here is its bug
    const DecodeLayout s = lk_decode_layout(M, in, out, r);
    const int tid = (int)threadIdx.x;
    const int row_begin = (int)blockIdx.x * s.rows_per_block;
    const int row_end = lk_min(out, row_begin + s.rows_per_block);
    const int rows = lk_max(row_end - row_begin, 0);
    const float keep = dropout_p > 0.0f ? 1.0f / (1.0f - dropout_p) : 1.0f;  // as lk_dropout_factor
    const QuantView q{codes, absmax, qabsmax, absmax2, offset, lk_log2(blocksize), s.lut, s.dyn8};
    const bool vectorized = in % kDecodeGroup == 0 && (reinterpret_cast<lk_u64>(codes) & 15ull) == 0;

    lk_load_tables(s.lut, s.dyn8, quant_type, absmax == nullptr, kDecodeThreads);
    for (int i = tid; i < M * r; i += kDecodeThreads) s.u[i] = 0.0f;
    for (int i = tid; i < M * s.rows_per_block; i += kDecodeThreads) s.ypart[i] = 0.0f;
    for (int c0 = 0; c0 < in; c0 += kDecodeChunk) {
        const int cols = lk_min(kDecodeChunk, in - c0);
        const int words = lk_ceil_div(cols, 32);
        __syncthreads();  // tables and zeroed sums are visible; the previous chunk's readers are done
        for (int i = tid; i < M * cols; i += kDecodeThreads) {
            const int m = i / cols, k = i - m * cols;
            s.x[m * s.x_stride + k] = lk_load(x + m * in + c0 + k);
        }
        if (r > 0) {
            for (int i = tid; i < M * words; i += kDecodeThreads) {
                const int m = i / words, word = i - m * words;
                lk_u32 bits = 0xffffffffu;
                if (dropout_p > 0.0f) {
                    bits = 0u;
                    for (int b = 0; b < 32; ++b) {
                        const int k = word * 32 + b;
                        if (k < cols && lk_dropout_uniform(seed, (lk_u64)(m * in + c0 + k)) >= dropout_p)
                            bits |= 1u << b;
                    }
                }
                s.mask[m * s.mask_words + word] = bits;
            }
        }
        __syncthreads();
        if (r > 0) lk_decode_rows_scalar<true>(DenseRows<T>{A, in}, 0, r, c0, cols, s, keep, M, s.u, r);
        if (vectorized)
            lk_decode_quant_rows_vec(q, in, row_begin, row_end, c0, cols, s, M, s.ypart, s.rows_per_block);
        else
            lk_decode_rows_scalar<false>(QuantRows{q, in}, row_begin, row_end, c0, cols, s, keep, M, s.ypart,
                                         s.rows_per_block);
    }
    __syncthreads();
    for (int i = tid; i < M * rows; i += kDecodeThreads) {
        const int m = i / rows, local = i - m * rows, n = row_begin + local;
        float lora = 0.0f;
        for (int j = 0; j < r; ++j) lora += s.u[m * r + j] * lk_load(B + n * r + j);
        float v = s.ypart[m * s.rows_per_block + local] + scale * lora;
        if (bias) v += lk_load(bias + n);
        lk_store(y + m * out + n, v);
    }
    if (blockIdx.x == 0)
        for (int i = tid; i < M * r; i += kDecodeThreads) u[i] = s.u[i];
}

// ---- QDoRA's projection, P = deq(W) Aᵀ in double ------------------------------------------------------
constexpr int kProjectThreads = 256;
constexpr int kProjectWarps = kProjectThreads / 32;  // rows of W per block, one per warp
constexpr int kProjectColumns = 8;                   // columns of P per pass over a row
constexpr int kProjectPartialTerms = 64;             // LK_DORA_PARTIAL_TERMS

LK_DEVICE double lk_nf4_warp_sum_f64(double v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

// P[row, a] = Σ_k deq(W)[row, k]·A[a, k] for the warp's row (see the file comment).
LK_DEVICE void lk_nf4_project(const lk_u8* codes, const float* absmax, const lk_u8* qabsmax, const float* absmax2,
                              float offset, const float* A, double* P, int out, int in, int r, int blocksize,
                              int quant_type) {
    LK_SHARED(float, lut, [16]);
    LK_SHARED(float, dyn8, [256]);
    lk_load_tables(lut, dyn8, quant_type, absmax == nullptr, kProjectThreads);
    __syncthreads();
    const QuantView q{codes, absmax, qabsmax, absmax2, offset, lk_log2(blocksize), lut, dyn8};
    const int lane = (int)threadIdx.x & 31;
    const int row = (int)blockIdx.x * kProjectWarps + (int)threadIdx.x / 32;
    if (row >= out) return;  // warp-uniform; no barrier follows
    const lk_i64 base = (lk_i64)row * in;
    for (int a0 = 0; a0 < r; a0 += kProjectColumns) {
        const int columns = lk_min(kProjectColumns, r - a0);
        double total[kProjectColumns];
        float partial[kProjectColumns];
#pragma unroll
        for (int j = 0; j < kProjectColumns; ++j) total[j] = 0.0, partial[j] = 0.0f;
        int terms = 0;
        for (int k = lane; k < in; k += 32) {
            const float w = lk_quant_weight(q, base + k);
#pragma unroll
            for (int j = 0; j < kProjectColumns; ++j)
                if (j < columns) partial[j] += w * A[(lk_i64)(a0 + j) * in + k];
            if (++terms == kProjectPartialTerms) {
#pragma unroll
                for (int j = 0; j < kProjectColumns; ++j) total[j] += (double)partial[j], partial[j] = 0.0f;
                terms = 0;
            }
        }
        double mine = 0.0;  // lane j keeps column a0 + j
#pragma unroll
        for (int j = 0; j < kProjectColumns; ++j) {
            const double sum = lk_nf4_warp_sum_f64(total[j] + (double)partial[j]);
            if (lane == j) mine = sum;
        }
        if (lane < columns) P[(lk_i64)row * r + a0 + lane] = mine;
    }
}

}  // namespace

// ---- entry points: thin wrappers instantiating each template for fp32 and bf16 storage -----------
extern "C" __global__ void __launch_bounds__(kQuantizeThreads) lk_nf4_quantize_f32(
    const float* w, unsigned char* codes, float* absmax, long long n, int blocksize, int quant_type) {
    lk_nf4_quantize<float>(w, codes, absmax, n, blocksize, quant_type);
}
LK_KERNEL(lk_nf4_quantize_f32);

extern "C" __global__ void __launch_bounds__(kDequantizeThreads) lk_nf4_dequantize_f32(
    const unsigned char* codes, const float* absmax, const unsigned char* qabsmax, const float* absmax2,
    float offset, float* w, long long n, int blocksize, int quant_type) {
    lk_nf4_dequantize<float>(codes, absmax, qabsmax, absmax2, offset, w, n, blocksize, quant_type);
}
LK_KERNEL(lk_nf4_dequantize_f32);

extern "C" __global__ void __launch_bounds__(kDecodeThreads, 1) lk_nf4_matmul_decode_f32(
    const float* x, const unsigned char* codes, const float* absmax, const unsigned char* qabsmax,
    const float* absmax2, float offset, const float* bias, float* y, int M, int in, int out, int blocksize,
    int quant_type) {
    lk_nf4_forward_decode<float>(x, codes, absmax, qabsmax, absmax2, offset, bias, nullptr, nullptr, y, nullptr, M,
                                 in, out, 0, blocksize, quant_type, 0.0f, 0.0f, 0ull);
}
LK_KERNEL(lk_nf4_matmul_decode_f32);

extern "C" __global__ void __launch_bounds__(kTileThreads) lk_nf4_matmul_tiled_f32(
    const float* x, const unsigned char* codes, const float* absmax, const unsigned char* qabsmax,
    const float* absmax2, float offset, const float* bias, float* y, int M, int in, int out, int blocksize,
    int quant_type) {
    lk_nf4_forward_tiled<float>(x, codes, absmax, qabsmax, absmax2, offset, bias, nullptr, nullptr, y, M, in, out,
                                0, blocksize, quant_type, 0.0f);
}
LK_KERNEL(lk_nf4_matmul_tiled_f32);

extern "C" __global__ void __launch_bounds__(kDecodeThreads, 1) lk_nf4_qlora_forward_decode_f32(
    const float* x, const unsigned char* codes, const float* absmax, const unsigned char* qabsmax,
    const float* absmax2, float offset, const float* bias, const float* A, const float* B, float* y, float* u,
    int M, int in, int out, int r, int blocksize, int quant_type, float scale, float dropout_p,
    unsigned long long seed) {
    lk_nf4_forward_decode<float>(x, codes, absmax, qabsmax, absmax2, offset, bias, A, B, y, u, M, in, out, r,
                                 blocksize, quant_type, scale, dropout_p, seed);
}
LK_KERNEL(lk_nf4_qlora_forward_decode_f32);

extern "C" __global__ void __launch_bounds__(kTileThreads) lk_nf4_qlora_forward_tiled_f32(
    const float* x, const unsigned char* codes, const float* absmax, const unsigned char* qabsmax,
    const float* absmax2, float offset, const float* bias, const float* u, const float* B, float* y, int M, int in,
    int out, int r, int blocksize, int quant_type, float scale) {
    lk_nf4_forward_tiled<float>(x, codes, absmax, qabsmax, absmax2, offset, bias, u, B, y, M, in, out, r, blocksize,
                                quant_type, scale);
}
LK_KERNEL(lk_nf4_qlora_forward_tiled_f32);

extern "C" __global__ void __launch_bounds__(kTileThreads) lk_nf4_grad_x_f32(
    const float* dy, const unsigned char* codes, const float* absmax, const unsigned char* qabsmax,
    const float* absmax2, float offset, const float* du, const float* A, float* dx, int M, int in, int out, int r,
    int blocksize, int quant_type, float dropout_p, unsigned long long seed) {
    lk_nf4_grad_x<float>(dy, codes, absmax, qabsmax, absmax2, offset, du, A, dx, M, in, out, r, blocksize,
                         quant_type, dropout_p, seed);
}
LK_KERNEL(lk_nf4_grad_x_f32);

extern "C" __global__ void __launch_bounds__(kQuantizeThreads) lk_nf4_quantize_bf16(
    const lk_bf16* w, unsigned char* codes, float* absmax, long long n, int blocksize, int quant_type) {
    lk_nf4_quantize<lk_bf16>(w, codes, absmax, n, blocksize, quant_type);
}
LK_KERNEL(lk_nf4_quantize_bf16);

extern "C" __global__ void __launch_bounds__(kDequantizeThreads) lk_nf4_dequantize_bf16(
    const unsigned char* codes, const float* absmax, const unsigned char* qabsmax, const float* absmax2,
    float offset, lk_bf16* w, long long n, int blocksize, int quant_type) {
    lk_nf4_dequantize<lk_bf16>(codes, absmax, qabsmax, absmax2, offset, w, n, blocksize, quant_type);
}
LK_KERNEL(lk_nf4_dequantize_bf16);

extern "C" __global__ void __launch_bounds__(kDecodeThreads, 1) lk_nf4_matmul_decode_bf16(
    const lk_bf16* x, const unsigned char* codes, const float* absmax, const unsigned char* qabsmax,
    const float* absmax2, float offset, const lk_bf16* bias, lk_bf16* y, int M, int in, int out, int blocksize,
    int quant_type) {
    lk_nf4_forward_decode<lk_bf16>(x, codes, absmax, qabsmax, absmax2, offset, bias, nullptr, nullptr, y, nullptr,
                                   M, in, out, 0, blocksize, quant_type, 0.0f, 0.0f, 0ull);
}
LK_KERNEL(lk_nf4_matmul_decode_bf16);

extern "C" __global__ void __launch_bounds__(kTileThreads) lk_nf4_matmul_tiled_bf16(
    const lk_bf16* x, const unsigned char* codes, const float* absmax, const unsigned char* qabsmax,
    const float* absmax2, float offset, const lk_bf16* bias, lk_bf16* y, int M, int in, int out, int blocksize,
    int quant_type) {
    lk_nf4_forward_tiled<lk_bf16>(x, codes, absmax, qabsmax, absmax2, offset, bias, nullptr, nullptr, y, M, in, out,
                                  0, blocksize, quant_type, 0.0f);
}
LK_KERNEL(lk_nf4_matmul_tiled_bf16);

extern "C" __global__ void __launch_bounds__(kDecodeThreads, 1) lk_nf4_qlora_forward_decode_bf16(
    const lk_bf16* x, const unsigned char* codes, const float* absmax, const unsigned char* qabsmax,
    const float* absmax2, float offset, const lk_bf16* bias, const lk_bf16* A, const lk_bf16* B, lk_bf16* y,
    float* u, int M, int in, int out, int r, int blocksize, int quant_type, float scale, float dropout_p,
    unsigned long long seed) {
    lk_nf4_forward_decode<lk_bf16>(x, codes, absmax, qabsmax, absmax2, offset, bias, A, B, y, u, M, in, out, r,
                                   blocksize, quant_type, scale, dropout_p, seed);
}
LK_KERNEL(lk_nf4_qlora_forward_decode_bf16);

extern "C" __global__ void __launch_bounds__(kTileThreads) lk_nf4_qlora_forward_tiled_bf16(
    const lk_bf16* x, const unsigned char* codes, const float* absmax, const unsigned char* qabsmax,
    const float* absmax2, float offset, const lk_bf16* bias, const float* u, const lk_bf16* B, lk_bf16* y, int M,
    int in, int out, int r, int blocksize, int quant_type, float scale) {
    lk_nf4_forward_tiled<lk_bf16>(x, codes, absmax, qabsmax, absmax2, offset, bias, u, B, y, M, in, out, r,
                                  blocksize, quant_type, scale);
}
LK_KERNEL(lk_nf4_qlora_forward_tiled_bf16);

extern "C" __global__ void __launch_bounds__(kTileThreads) lk_nf4_grad_x_bf16(
    const lk_bf16* dy, const unsigned char* codes, const float* absmax, const unsigned char* qabsmax,
    const float* absmax2, float offset, const float* du, const lk_bf16* A, lk_bf16* dx, int M, int in, int out,
    int r, int blocksize, int quant_type, float dropout_p, unsigned long long seed) {
    lk_nf4_grad_x<lk_bf16>(dy, codes, absmax, qabsmax, absmax2, offset, du, A, dx, M, in, out, r, blocksize,
                           quant_type, dropout_p, seed);
}
LK_KERNEL(lk_nf4_grad_x_bf16);

extern "C" __global__ void __launch_bounds__(kMeanThreads) lk_nf4_absmax_mean_f32(
    const float* absmax, float* offset, long long nblocks) {
    lk_nf4_absmax_mean(absmax, offset, nblocks);
}
LK_KERNEL(lk_nf4_absmax_mean_f32);

extern "C" __global__ void __launch_bounds__(kDoubleQuantThreads) lk_nf4_double_quantize_f32(
    const float* absmax, unsigned char* qabsmax, float* absmax2, const float* offset, long long nblocks) {
    lk_nf4_double_quantize(absmax, qabsmax, absmax2, offset, nblocks);
}
LK_KERNEL(lk_nf4_double_quantize_f32);

extern "C" __global__ void __launch_bounds__(kProjectThreads) lk_nf4_project_f32(
    const unsigned char* codes, const float* absmax, const unsigned char* qabsmax, const float* absmax2, float offset,
    const float* A, double* P, int out, int in, int r, int blocksize, int quant_type) {
    lk_nf4_project(codes, absmax, qabsmax, absmax2, offset, A, P, out, in, r, blocksize, quant_type);
}
LK_KERNEL(lk_nf4_project_f32);
