// segmented.cu: segmented (multi-adapter) LoRA: the rows of x are grouped into segments, each with its
// own adapter (A_a, B_a, s_a) from a table, as Punica's SGMV (shrink = x·Aᵀ, expand = u·Bᵀ), S-LoRA and
// vLLM's multi-LoRA batch them; and grouped expert products (MoE), where each segment's base weight
// comes from a table too. Semantics are those of lk_cpu_segmented_forward / _backward
// (native/include/lora_kernels_segmented.h), which also fixes the segment table:
//   segments [n_seg][3] int: (start, length, adapter), adapter -1 = none; inside [0, M), no overlaps.
//
// Entry points (T = f32 | bf16: storage of x, W0_table, bias, A/B tables, y, dy, dx, dA, dB; u, du and
// scales are fp32; every sum accumulates in fp32):
//   lk_segmented_shrink_T   u_s = x_s·A_aᵀ                                   per segment tile
//   lk_segmented_expand_T   y_s += s_a·u_s·B_aᵀ, or with W0_table y_s = x_s·W_aᵀ + bias + s_a·u_s·B_aᵀ
//   lk_segmented_grad_u_T   du_s = s_a·dy_s·B_a                               per segment tile
//   lk_segmented_grad_x_T   dx_s += du_s·A_a, or with W0_table dx_s = dy_s·W_a + du_s·A_a
//   lk_segmented_grad_b_T   dB_a = s_a·Σ_{segments of a} dy_sᵀ·u_s           per adapter tile
//   lk_segmented_grad_a_T   dA_a = Σ_{segments of a} du_sᵀ·x_s               per adapter tile
//
// Strategy and why: every op is the shared tile engine (tile_engine.cuh: 64x64 output tiles, 16-deep K
// slices staged as fp32, 4x4 register sub-tiles) run over a segment's rows with that segment's
// adapter as the weight operand, so a tile never mixes adapters and each staged slice of A_a or B_a
// serves all 64 rows of a prefill tile. Grid of the per-segment ops: x = segment, y = column tile,
// z = row tile (the launcher sets gridDim.z to the longest segment's tile count, so one long segment is
// spread over many blocks while the blocks past a short segment's end, and those of a segment without
// an adapter, leave at once, the whole block together). The
// dense base of a mixed batch is NOT here: it stays one product for the whole batch (lora.cu's decode
// or tiled kernel with r = 0), so W0 is read once however many adapters the batch mixes; these
// kernels add the adapters on top (expand and grad_x accumulate into y and dx). With a W0 table
// (grouped experts) the base is per segment and fused into the same accumulator as the adapter term
// (s_a·u·Bᵀ first, then x·W_aᵀ, as lora.cu's tiled forward), so y is written once. The weight
// gradients are sums over all segments of an adapter: one block per (adapter, output tile) walks the
// segment table in order and reduces every matching segment into one accumulator, so no atomics are
// needed and the result is deterministic; an adapter without rows gets zeros. Decode (one row per
// segment) wastes 63 of a tile's 64 rows of FMAs but reads each adapter once, which is what bounds it.
//
// Ranks differ by padding (the padded rows of A and columns of B hold zeros). No dropout.
// Assumptions: row-major dense tables; every element count, and each table, < 2^31 (checked in C#);
// the adapter's offset into a table is formed in 64 bits. No alignment is required.
//
// Bytes and FLOPs per call (s = bytes per T element, L = total rows in segments with an adapter,
// D = distinct adapters used):
//   shrink   FLOPs 2·L·r·in;         bytes s·(L·in + D·r·in) + 4·L·r (x re-read ceil(r/64) times)
//   expand   FLOPs 2·L·out·(r [+ in]); bytes s·(D·out·r [+ D·out·in + L·in] + 2·L·out) + 4·L·r
//   grad_u   FLOPs 2·L·out·r;        bytes s·(L·out + D·out·r) + 4·L·r
//   grad_x   FLOPs 2·L·in·(r [+ out]); bytes s·(D·r·in [+ D·out·in + L·out] + 2·L·in) + 4·L·r
//   grad_b   FLOPs 2·L·out·r;        bytes s·(L·out + n_adapters·out·r) + 4·L·r
//   grad_a   FLOPs 2·L·r·in;         bytes s·(L·in + n_adapters·r·in) + 4·L·r
#include "common.cuh"
#include "tile_engine.cuh"

namespace {

// One row of the segment table.
struct SegmentRow {
    int start, length, adapter;
};

LK_DEVICE SegmentRow lk_segment(const int* segments, int s) {
    return SegmentRow{segments[3 * s], segments[3 * s + 1], segments[3 * s + 2]};
}

// The slice of a [n_adapters, rows, cols] table that belongs to adapter a.
template <class T>
LK_DEVICE const T* lk_table_slice(const T* table, int a, int rows, int cols) {
    return table + (lk_i64)a * rows * cols;
}

// ---- shrink: u_s = x_s·A_aᵀ -------------------------------------------------------------------------
template <class T>
LK_DEVICE void lk_segmented_shrink(const T* x, const T* A_table, const int* segments, float* u, int in, int r) {
    LK_SHARED(float, tile_a, [kTileK][kTileStride]);
    LK_SHARED(float, tile_b, [kTileK][kTileStride]);
    const SegmentRow seg = lk_segment(segments, (int)blockIdx.x);
    const int m0 = (int)blockIdx.z * kTileM, n0 = (int)blockIdx.y * kTileN;
    if (seg.adapter < 0 || m0 >= seg.length) return;  // the whole block: no barrier is waited on
    float acc[kTilePerThread][kTilePerThread] = {};
    lk_tile_reduce(acc, lk_operand<T, true>(x + (lk_i64)seg.start * in, in),
                   lk_operand<T, true>(lk_table_slice(A_table, seg.adapter, r, in), in), in, m0, seg.length, n0, r, tile_a,
                   tile_b);
    float* us = u + (lk_i64)seg.start * r;
    lk_tile_for_each(acc, m0, seg.length, n0, r, [&](int m, int j, float v) { us[m * r + j] = v; });
}

// ---- expand: y_s += s_a·u_s·B_aᵀ, or y_s = x_s·W_aᵀ + bias + s_a·u_s·B_aᵀ with a W0 table ----------------
template <class T>
LK_DEVICE void lk_segmented_expand(const T* x, const T* W0_table, const T* bias, const float* u, const T* B_table,
                                   const float* scales, const int* segments, T* y, int in, int out, int r) {
    LK_SHARED(float, tile_a, [kTileK][kTileStride]);
    LK_SHARED(float, tile_b, [kTileK][kTileStride]);
    const SegmentRow seg = lk_segment(segments, (int)blockIdx.x);
    const int m0 = (int)blockIdx.z * kTileM, n0 = (int)blockIdx.y * kTileN;
    if (seg.adapter < 0 || m0 >= seg.length) return;  // the whole block
    float acc[kTilePerThread][kTilePerThread] = {};
    if (r > 0) {
        lk_tile_reduce(acc, lk_operand<float, true>(u + (lk_i64)seg.start * r, r),
                       lk_operand<T, true>(lk_table_slice(B_table, seg.adapter, out, r), r), r, m0, seg.length, n0, out,
                       tile_a, tile_b);
        const float scale = scales[seg.adapter];
        lk_tile_for_each(acc, m0, seg.length, n0, out, [&](int, int, float& v) { v *= scale; });
    }
    T* ys = y + (lk_i64)seg.start * out;
    if (W0_table != nullptr) {
        lk_tile_reduce(acc, lk_operand<T, true>(x + (lk_i64)seg.start * in, in),
                       lk_operand<T, true>(lk_table_slice(W0_table, seg.adapter, out, in), in), in, m0, seg.length, n0,
                       out, tile_a, tile_b);
        lk_tile_for_each(acc, m0, seg.length, n0, out,
                         [&](int m, int n, float v) { lk_store(ys + m * out + n, bias ? v + lk_load(bias + n) : v); });
    } else {
        lk_tile_for_each(acc, m0, seg.length, n0, out,
                         [&](int m, int n, float v) { lk_store(ys + m * out + n, lk_load(ys + m * out + n) + v); });
    }
}

// ---- grad_u: du_s = s_a·dy_s·B_a (B_a read as its transpose) ---------------------------------------------
template <class T>
LK_DEVICE void lk_segmented_grad_u(const T* dy, const T* B_table, const float* scales, const int* segments, float* du,
                                   int out, int r) {
    LK_SHARED(float, tile_a, [kTileK][kTileStride]);
    LK_SHARED(float, tile_b, [kTileK][kTileStride]);
    const SegmentRow seg = lk_segment(segments, (int)blockIdx.x);
    const int m0 = (int)blockIdx.z * kTileM, n0 = (int)blockIdx.y * kTileN;
    if (seg.adapter < 0 || m0 >= seg.length) return;  // the whole block
    float acc[kTilePerThread][kTilePerThread] = {};
    lk_tile_reduce(acc, lk_operand<T, true>(dy + (lk_i64)seg.start * out, out),
                   lk_operand<T, false>(lk_table_slice(B_table, seg.adapter, out, r), r), out, m0, seg.length, n0, r,
                   tile_a, tile_b);
    const float scale = scales[seg.adapter];
    float* dus = du + (lk_i64)seg.start * r;
    lk_tile_for_each(acc, m0, seg.length, n0, r, [&](int m, int j, float v) { dus[m * r + j] = scale * v; });
}

// ---- grad_x: dx_s += du_s·A_a, or dx_s = dy_s·W_a + du_s·A_a with a W0 table ----------------------------
template <class T>
LK_DEVICE void lk_segmented_grad_x(const T* dy, const T* W0_table, const float* du, const T* A_table,
                                   const int* segments, T* dx, int in, int out, int r) {
    LK_SHARED(float, tile_a, [kTileK][kTileStride]);
    LK_SHARED(float, tile_b, [kTileK][kTileStride]);
    const SegmentRow seg = lk_segment(segments, (int)blockIdx.x);
    const int m0 = (int)blockIdx.z * kTileM, n0 = (int)blockIdx.y * kTileN;
    if (seg.adapter < 0 || m0 >= seg.length) return;  // the whole block
    float acc[kTilePerThread][kTilePerThread] = {};
    if (r > 0)
        lk_tile_reduce(acc, lk_operand<float, true>(du + (lk_i64)seg.start * r, r),
                       lk_operand<T, false>(lk_table_slice(A_table, seg.adapter, r, in), in), r, m0, seg.length, n0, in,
                       tile_a, tile_b);
    T* dxs = dx + (lk_i64)seg.start * in;
    if (W0_table != nullptr) {
        lk_tile_reduce(acc, lk_operand<T, true>(dy + (lk_i64)seg.start * out, out),
                       lk_operand<T, false>(lk_table_slice(W0_table, seg.adapter, out, in), in), out, m0, seg.length,
                       n0, in, tile_a, tile_b);
        lk_tile_for_each(acc, m0, seg.length, n0, in, [&](int m, int k, float v) { lk_store(dxs + m * in + k, v); });
    } else {
        lk_tile_for_each(acc, m0, seg.length, n0, in,
                         [&](int m, int k, float v) { lk_store(dxs + m * in + k, lk_load(dxs + m * in + k) + v); });
    }
}

// ---- grad_b: dB_a = s_a·Σ dy_sᵀ·u_s over the segments of adapter a (blockIdx.x) --------------------------
// Grid (n_adapters, ceil(out/64), ceil(r/64)); K = the segment's rows, both operands read transposed.
template <class T>
LK_DEVICE void lk_segmented_grad_b(const T* dy, const float* u, const float* scales, const int* segments, int n_seg,
                                   T* dB_table, int out, int r) {
    LK_SHARED(float, tile_a, [kTileK][kTileStride]);
    LK_SHARED(float, tile_b, [kTileK][kTileStride]);
    const int a = (int)blockIdx.x, m0 = (int)blockIdx.y * kTileM, n0 = (int)blockIdx.z * kTileN;
    float acc[kTilePerThread][kTilePerThread] = {};
    for (int s = 0; s < n_seg; ++s) {
        const SegmentRow seg = lk_segment(segments, s);  // every thread reads the same row: uniform branch
        if (seg.adapter != a || seg.length == 0) continue;
        lk_tile_reduce(acc, lk_operand<T, false>(dy + (lk_i64)seg.start * out, out),
                       lk_operand<float, false>(u + (lk_i64)seg.start * r, r), seg.length, m0, out, n0, r, tile_a,
                       tile_b);
    }
    const float scale = scales[a];
    T* dB = dB_table + (lk_i64)a * out * r;
    lk_tile_for_each(acc, m0, out, n0, r, [&](int o, int j, float v) { lk_store(dB + o * r + j, scale * v); });
}

// ---- grad_a: dA_a = Σ du_sᵀ·x_s over the segments of adapter a (blockIdx.x) --------------------------------
// Grid (n_adapters, ceil(r/64), ceil(in/64)).
template <class T>
LK_DEVICE void lk_segmented_grad_a(const float* du, const T* x, const int* segments, int n_seg, T* dA_table, int in,
                                   int r) {
    LK_SHARED(float, tile_a, [kTileK][kTileStride]);
    LK_SHARED(float, tile_b, [kTileK][kTileStride]);
    const int a = (int)blockIdx.x, m0 = (int)blockIdx.y * kTileM, n0 = (int)blockIdx.z * kTileN;
    float acc[kTilePerThread][kTilePerThread] = {};
    for (int s = 0; s < n_seg; ++s) {
        const SegmentRow seg = lk_segment(segments, s);
        if (seg.adapter != a || seg.length == 0) continue;
        lk_tile_reduce(acc, lk_operand<float, false>(du + (lk_i64)seg.start * r, r),
                       lk_operand<T, false>(x + (lk_i64)seg.start * in, in), seg.length, m0, r, n0, in, tile_a,
                       tile_b);
    }
    T* dA = dA_table + (lk_i64)a * r * in;
    lk_tile_for_each(acc, m0, r, n0, in, [&](int j, int k, float v) { lk_store(dA + j * in + k, v); });
}

}  // namespace

// ---- entry points: thin wrappers instantiating each template for fp32 and bf16 storage -----------
// Written out, each call on its own line: NVRTC 11.8 with -lineinfo crashes compiling for sm_90 when an entry
// point's call into these templates shares a source line with its signature (as a macro stamping the wrappers
// out would put them; docs/DECISIONS.md).
extern "C" __global__ void __launch_bounds__(kTileThreads) lk_segmented_shrink_f32(
    const float* x, const float* A_table, const int* segments, float* u, int in, int r) {
    lk_segmented_shrink<float>(x, A_table, segments, u, in, r);
}
LK_KERNEL(lk_segmented_shrink_f32);

extern "C" __global__ void __launch_bounds__(kTileThreads) lk_segmented_expand_f32(
    const float* x, const float* W0_table, const float* bias, const float* u, const float* B_table, const float* scales,
    const int* segments, float* y, int in, int out, int r) {
    lk_segmented_expand<float>(x, W0_table, bias, u, B_table, scales, segments, y, in, out, r);
}
LK_KERNEL(lk_segmented_expand_f32);

extern "C" __global__ void __launch_bounds__(kTileThreads) lk_segmented_grad_u_f32(
    const float* dy, const float* B_table, const float* scales, const int* segments, float* du, int out, int r) {
    lk_segmented_grad_u<float>(dy, B_table, scales, segments, du, out, r);
}
LK_KERNEL(lk_segmented_grad_u_f32);

extern "C" __global__ void __launch_bounds__(kTileThreads) lk_segmented_grad_x_f32(
    const float* dy, const float* W0_table, const float* du, const float* A_table, const int* segments, float* dx, int in,
    int out, int r) {
    lk_segmented_grad_x<float>(dy, W0_table, du, A_table, segments, dx, in, out, r);
}
LK_KERNEL(lk_segmented_grad_x_f32);

extern "C" __global__ void __launch_bounds__(kTileThreads) lk_segmented_grad_b_f32(
    const float* dy, const float* u, const float* scales, const int* segments, int n_seg, float* dB_table, int out,
    int r) {
    lk_segmented_grad_b<float>(dy, u, scales, segments, n_seg, dB_table, out, r);
}
LK_KERNEL(lk_segmented_grad_b_f32);

extern "C" __global__ void __launch_bounds__(kTileThreads) lk_segmented_grad_a_f32(
    const float* du, const float* x, const int* segments, int n_seg, float* dA_table, int in, int r) {
    lk_segmented_grad_a<float>(du, x, segments, n_seg, dA_table, in, r);
}
LK_KERNEL(lk_segmented_grad_a_f32);

extern "C" __global__ void __launch_bounds__(kTileThreads) lk_segmented_shrink_bf16(
    const lk_bf16* x, const lk_bf16* A_table, const int* segments, float* u, int in, int r) {
    lk_segmented_shrink<lk_bf16>(x, A_table, segments, u, in, r);
}
LK_KERNEL(lk_segmented_shrink_bf16);

extern "C" __global__ void __launch_bounds__(kTileThreads) lk_segmented_expand_bf16(
    const lk_bf16* x, const lk_bf16* W0_table, const lk_bf16* bias, const float* u, const lk_bf16* B_table, const float* scales,
    const int* segments, lk_bf16* y, int in, int out, int r) {
    lk_segmented_expand<lk_bf16>(x, W0_table, bias, u, B_table, scales, segments, y, in, out, r);
}
LK_KERNEL(lk_segmented_expand_bf16);

extern "C" __global__ void __launch_bounds__(kTileThreads) lk_segmented_grad_u_bf16(
    const lk_bf16* dy, const lk_bf16* B_table, const float* scales, const int* segments, float* du, int out, int r) {
    lk_segmented_grad_u<lk_bf16>(dy, B_table, scales, segments, du, out, r);
}
LK_KERNEL(lk_segmented_grad_u_bf16);

extern "C" __global__ void __launch_bounds__(kTileThreads) lk_segmented_grad_x_bf16(
    const lk_bf16* dy, const lk_bf16* W0_table, const float* du, const lk_bf16* A_table, const int* segments, lk_bf16* dx, int in,
    int out, int r) {
    lk_segmented_grad_x<lk_bf16>(dy, W0_table, du, A_table, segments, dx, in, out, r);
}
LK_KERNEL(lk_segmented_grad_x_bf16);

extern "C" __global__ void __launch_bounds__(kTileThreads) lk_segmented_grad_b_bf16(
    const lk_bf16* dy, const float* u, const float* scales, const int* segments, int n_seg, lk_bf16* dB_table, int out,
    int r) {
    lk_segmented_grad_b<lk_bf16>(dy, u, scales, segments, n_seg, dB_table, out, r);
}
LK_KERNEL(lk_segmented_grad_b_bf16);

extern "C" __global__ void __launch_bounds__(kTileThreads) lk_segmented_grad_a_bf16(
    const float* du, const lk_bf16* x, const int* segments, int n_seg, lk_bf16* dA_table, int in, int r) {
    lk_segmented_grad_a<lk_bf16>(du, x, segments, n_seg, dA_table, in, r);
}
LK_KERNEL(lk_segmented_grad_a_bf16);
