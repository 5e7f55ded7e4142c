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
//   lk_nf4_matmul_mma_bf16, lk_nf4_qlora_forward_mma_bf16, lk_nf4_grad_x_mma_bf16
//                                the tiled three on tensor cores (sm_80+)       tile_mma.cuh, W decoded to bf16
//   lk_nf4_project_f32           P = deq(W) Aᵀ in double (QDoRA's weight norm) one warp per W row
// u for the tiled forward comes from lk_lora_project_T, and dA, dB, du reuse lk_lora_grad_a/_b/_u
// (kernels/lora.cu): they never touch W.
//
// Strategies and why:
//   * deq(W) is never written to global memory: every consumer decodes nibbles in registers while
//     it streams or stages W, so W costs n/2 bytes of traffic instead of 4n (fp32) or 2n (bf16).
//     Code tables (16 fp32) and, when nested, the dynamic 8-bit map (256 fp32), from quant_codes.cuh
//     (the CPU kernels read the same file), are copied into
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
//   * decode (M <= 16) is the shared decode engine (decode_engine.cuh, as lora.cu's decode) with the
//     4-bit tables as its shared-memory prefix: bound by streaming W once, x staged per block; each
//     warp streams two W rows at a time with 16-byte code loads (32 weights, one absmax: 32 divides
//     every blocksize and `in`), for all M tokens at once; table values are dotted with x and the
//     dot scaled by the absmax once per group, so a weight costs one nibble extract, one shared
//     lookup and one FMA per token. When `in` is not a multiple of 32 (rows then do not start on a
//     16-byte boundary) lanes read single bytes instead.
//   * tiled is the shared tile engine (tile_engine.cuh) with a quantized-weight operand: W's slice
//     is dequantized while it is staged. The forward reduces the LoRA columns u Bᵀ first, scales,
//     then continues with x deq(W)ᵀ into the same accumulators; grad_x reduces du A first, applies
//     each output's dropout factor, then continues with dy deq(W).
//   * with bf16 activations on sm_80+, the same three run on the tensor-core engine (tile_mma.cuh):
//     W's slice is decoded into the ring as bf16 (each weight rounded once, relative <= 2^-9, which
//     is what bitsandbytes' dequantize-then-matmul with a bf16 compute dtype does; the fp32 kernels
//     keep deq(W) in fp32), x or dy arrive by cp.async. The decode of W is synchronous (loads, then
//     shared stores, beside the copies in flight): the code bytes are 1/4 of a bf16 slice's.
//
//   * project (QDoRA's norm, kernels/dora.cu explains the method): the shared row projection
//     (row_projection.cuh, as dora.cu's lk_dora_project) with W's rows decoded on the fly: fp32
//     partial sums of at most 64 terms flushed to double, so P errs by at most γ_64 relative to
//     Σ|deq(w)·a|. Tables in shared memory as for the other consumers; 8 columns of P per pass over a
//     row (each code decoded ceil(r/8) times, from L1).
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
#include "decode_engine.cuh"
#include "quant_codes.cuh"
#include "row_projection.cuh"
#include "tile_engine.cuh"
#include "tile_mma.cuh"

namespace {

constexpr int kNestedBlock = kLkNestedBlock;  // first-level absmax values per nested block (bnb: 256)

// Codes, encoders and the dynamic map: quant_codes.cuh (shared with the CPU kernels).

// log2 of a power-of-two blocksize, so block indices are shifts.
LK_DEVICE int lk_log2(int power_of_two) { return 31 - __clz(power_of_two); }

// Copies the 16-entry code table of quant_type and, when `nested`, the dynamic map into shared
// memory. The caller synchronises before the first use.
LK_DEVICE void lk_load_tables(float* lut, float* dyn8, int quant_type, bool nested, int threads) {
    for (int i = (int)threadIdx.x; i < 16; i += threads)
        lut[i] = lk_code_4bit(i, quant_type);
    if (nested)
        for (int i = (int)threadIdx.x; i < 256; i += threads) dyn8[i] = lk_bits_f32(lk_dynamic_signed_bits[i]);
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
constexpr int kDequantizeThreads = kElementwiseThreads;  // the element-wise geometry, over bytes

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
    for (lk_i64 p = lk_grid_first(); p < bytes; p += lk_grid_stride()) {
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
    if (b < nblocks) qabsmax[b] = (lk_u8)(m > 0.0f ? lk_dynamic_encode(centered * (1.0f / m), LkDynamicBits{lk_dynamic_signed_bits}) : 127);
    if (tid == 0) absmax2[blockIdx.x] = m;
}

// ---- the tile engines (tile_engine.cuh, tile_mma.cuh) with a quantized-weight operand ------------
// deq(W) as an operand of either engine; W is stored [out, in] with ld = in. kContiguousK: K is `in`
// (x deq(W)ᵀ), else K is `out` (dy deq(W)). The FMA engine reads (row, k); the tensor-core engine
// reads W in its stored orientation (value), and rounds each weight to bf16 when staging it, as
// bitsandbytes' 4-bit matmul does with a bf16 compute dtype (relative error <= 2^-9 a weight).
template <bool kContiguousK_>
struct QuantOperand {
    static constexpr bool kContiguousK = kContiguousK_;
    static constexpr bool kCopied = false;  // decoded, never copied
    QuantView q;
    int ld;

    LK_DEVICE float operator()(int row, int k) const {
        return lk_quant_weight(q, kContiguousK ? row * ld + k : k * ld + row);
    }
    LK_DEVICE float value(int stored_row, int stored_col) const {
        return lk_quant_weight(q, (lk_i64)stored_row * ld + stored_col);
    }
};

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

// ---- forward and grad_x on tensor cores (bf16 activations, sm_80+): tile_mma.cuh's adapted products -
// As the tiled kernels above, on the tensor-core engine: x (or dy) arrives by cp.async, deq(W) is decoded
// from the codes into the same ring slot as bf16, and the LoRA phase is the engine's split columns.
// Grid (ceil(M/128), ceil(N/128)), block 256, dynamic shared kMmaSharedBytes plus 1088 static (tables).
template <bool kContiguousK, class F>
LK_DEVICE void lk_nf4_mma(const lk_u8* codes, const float* absmax, const lk_u8* qabsmax, const float* absmax2,
                          float offset, int in, int blocksize, int quant_type, const F& product) {
    LK_SHARED(float, lut, [16]);
    LK_SHARED(float, dyn8, [256]);
    lk_load_tables(lut, dyn8, quant_type, absmax == nullptr, kMmaThreads);
    __syncthreads();
    product(QuantOperand<kContiguousK>{{codes, absmax, qabsmax, absmax2, offset, lk_log2(blocksize), lut, dyn8}, in});
}

// ---- forward, decode (M <= 16): the decode engine (decode_engine.cuh) over 4-bit rows ---------------
constexpr int kDecodeGroup = 32;       // weights per 16-byte code load
constexpr int kDecodeTableWords = kLkQuantTableWords;  // the layout's table prefix: code table, dynamic map
static_assert(kDecodeChunk % kDecodeGroup == 0, "chunks hold whole groups");
static_assert(kDecodeTableWords % 4 == 0, "x stays 16-byte aligned after the tables");

struct alignas(16) Codes16 {
    lk_u32 word[4];
};
struct alignas(16) Float4 {
    float v[4];
};

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
    const DecodeLayout s = lk_decode_layout(M, in, out, r, kDecodeTableWords);
    float* const lut = s.tables;
    float* const dyn8 = s.tables + 16;
    const int row_begin = (int)blockIdx.x * s.rows_per_block;
    const int row_end = lk_min(out, row_begin + s.rows_per_block);
    const float keep = dropout_p > 0.0f ? 1.0f / (1.0f - dropout_p) : 1.0f;  // as lk_dropout_factor
    const QuantView q{codes, absmax, qabsmax, absmax2, offset, lk_log2(blocksize), lut, dyn8};
    const bool vectorized = in % kDecodeGroup == 0 && (reinterpret_cast<lk_u64>(codes) & 15ull) == 0;

    lk_load_tables(lut, dyn8, quant_type, absmax == nullptr, kDecodeThreads);
    lk_decode_zero(s, M, r);
    for (int c0 = 0; c0 < in; c0 += kDecodeChunk) {
        const int cols = lk_min(kDecodeChunk, in - c0);
        __syncthreads();  // tables and zeroed sums are visible; the previous chunk's readers are done
        lk_decode_stage(x, M, in, c0, cols, s, r > 0, dropout_p, seed);
        __syncthreads();
        if (r > 0) lk_decode_rows_scalar<true>(DenseRows<T>{A, in}, 0, r, c0, cols, s, keep, M, s.u, r);
        if (vectorized)
            lk_decode_quant_rows_vec(q, in, row_begin, row_end, c0, cols, s, M, s.ypart, s.rows_per_block);
        else
            lk_decode_rows_scalar<false>(QuantRows{q, in}, row_begin, row_end, c0, cols, s, keep, M, s.ypart,
                                         s.rows_per_block);
    }
    __syncthreads();
    lk_decode_epilogue(s, bias, B, y, u, M, out, r, scale, row_begin, lk_max(row_end - row_begin, 0));
}

// ---- QDoRA's projection, P = deq(W) Aᵀ in double ------------------------------------------------------
constexpr int kProjectThreads = 256;
constexpr int kProjectWarps = kProjectThreads / 32;  // rows of W per block, one per warp

// P[row, a] = Σ_k deq(W)[row, k]·A[a, k] for the warp's row (see the file comment).
LK_DEVICE void lk_nf4_project(const lk_u8* codes, const float* absmax, const lk_u8* qabsmax, const float* absmax2,
                              float offset, const float* A, double* P, int out, int in, int r, int blocksize,
                              int quant_type) {
    LK_SHARED(float, lut, [16]);
    LK_SHARED(float, dyn8, [256]);
    lk_load_tables(lut, dyn8, quant_type, absmax == nullptr, kProjectThreads);
    __syncthreads();
    const QuantView q{codes, absmax, qabsmax, absmax2, offset, lk_log2(blocksize), lut, dyn8};
    const int row = (int)blockIdx.x * kProjectWarps + (int)threadIdx.x / 32;
    if (row >= out) return;  // warp-uniform; no barrier follows
    const lk_i64 base = (lk_i64)row * in;
    lk_project_row([&](int k) { return lk_quant_weight(q, base + k); }, A, P + (lk_i64)row * r, in, r, false);
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

extern "C" __global__ void __launch_bounds__(kMmaThreads, 2) lk_nf4_matmul_mma_bf16(
    const lk_bf16* x, const unsigned char* codes, const float* absmax, const unsigned char* qabsmax,
    const float* absmax2, float offset, const lk_bf16* bias, lk_bf16* y, int M, int in, int out, int blocksize,
    int quant_type) {
    lk_nf4_mma<true>(codes, absmax, qabsmax, absmax2, offset, in, blocksize, quant_type, [&](const QuantOperand<true>& w) {
        lk_mma_adapted_forward(x, w, bias, nullptr, nullptr, y, M, in, out, 0, 0.0f);
    });
}
LK_KERNEL(lk_nf4_matmul_mma_bf16);

extern "C" __global__ void __launch_bounds__(kMmaThreads, 2) lk_nf4_qlora_forward_mma_bf16(
    const lk_bf16* x, const unsigned char* codes, const float* absmax, const unsigned char* qabsmax,
    const float* absmax2, float offset, const lk_bf16* bias, const float* u, const lk_bf16* B, lk_bf16* y, int M,
    int in, int out, int r, int blocksize, int quant_type, float scale) {
    lk_nf4_mma<true>(codes, absmax, qabsmax, absmax2, offset, in, blocksize, quant_type, [&](const QuantOperand<true>& w) {
        lk_mma_adapted_forward(x, w, bias, u, B, y, M, in, out, r, scale);
    });
}
LK_KERNEL(lk_nf4_qlora_forward_mma_bf16);

extern "C" __global__ void __launch_bounds__(kMmaThreads, 1) lk_nf4_grad_x_mma_bf16(
    const lk_bf16* dy, const unsigned char* codes, const float* absmax, const unsigned char* qabsmax,
    const float* absmax2, float offset, const float* du, const lk_bf16* A, lk_bf16* dx, int M, int in, int out,
    int r, int blocksize, int quant_type, float dropout_p, unsigned long long seed) {
    lk_nf4_mma<false>(codes, absmax, qabsmax, absmax2, offset, in, blocksize, quant_type, [&](const QuantOperand<false>& w) {
        lk_mma_adapted_grad_x(dy, w, du, A, dx, M, in, out, r, dropout_p, seed);
    });
}
LK_KERNEL(lk_nf4_grad_x_mma_bf16);

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
