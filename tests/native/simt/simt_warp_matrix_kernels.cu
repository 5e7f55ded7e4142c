// simt_warp_matrix_kernels.cu: kernels that run kernels/common.cuh's warp-matrix wrappers (mma.sync,
// ldmatrix, cp.async) under the emulator with fragments the host wrote, and hand back what each lane
// received, so simt_warp_matrix_test.cpp can compare with its own table of the PTX ISA's layouts.
// These kernels know no layout: they move registers between lanes' slots and the instructions.
#include "common.cuh"

namespace {

LK_DEVICE int lane_id() { return (int)threadIdx.x % 32; }

}  // namespace

// One mma per warp: lane l's A words are a[l·4 ..], B words b[l·2 ..], C floats c[l·4 ..]; D goes to
// d[l·4 ..]. f16 selects the .f16 instruction (else .bf16). Warp w of the block uses slot w·32 + l.
extern "C" __global__ void simt_test_mma(const unsigned* a, const unsigned* b, const float* c, float* d, int f16) {
    const int slot = (int)threadIdx.x;
    const lk_u32 aw[4] = {a[4 * slot], a[4 * slot + 1], a[4 * slot + 2], a[4 * slot + 3]};
    const lk_u32 bw[2] = {b[2 * slot], b[2 * slot + 1]};
    const float cw[4] = {c[4 * slot], c[4 * slot + 1], c[4 * slot + 2], c[4 * slot + 3]};
    float dw[4];
    if (f16) lk_mma_m16n8k16<lk_f16>(dw, aw, bw, cw);
    else lk_mma_m16n8k16<lk_bf16>(dw, aw, bw, cw);
    for (int i = 0; i < 4; ++i) d[4 * slot + i] = dw[i];
}
LK_KERNEL(simt_test_mma);

// ldmatrix from shared memory laid out by the host: `shared_rows` rows of 8 halves are copied into
// shared memory (row p at element 8p, so each row is 16 bytes and 16-byte aligned), and lane l
// passes the address of shared row row_of_lane[l]. words[l·4 + j] = the lane's word j.
template <int kCount, bool kTranspose>
LK_DEVICE void load_matrices(const lk_u16* shared, const int* row_of_lane, unsigned* words) {
    lk_u32 w[kCount];
    lk_ldmatrix<kCount, kTranspose>(w, shared + 8 * row_of_lane[lane_id()]);
    for (int j = 0; j < kCount; ++j) words[4 * lane_id() + j] = w[j];
}

extern "C" __global__ void simt_test_ldmatrix(const unsigned short* rows, int shared_rows, const int* row_of_lane,
                                              unsigned* words, int count, int transpose) {
    LK_SHARED(lk_u16, shared, [64 * 8]);
    for (int i = (int)threadIdx.x; i < shared_rows * 8; i += 32) shared[i] = rows[i];
    __syncthreads();
    if (count == 1 && !transpose) load_matrices<1, false>(shared, row_of_lane, words);
    if (count == 1 && transpose) load_matrices<1, true>(shared, row_of_lane, words);
    if (count == 2 && !transpose) load_matrices<2, false>(shared, row_of_lane, words);
    if (count == 2 && transpose) load_matrices<2, true>(shared, row_of_lane, words);
    if (count == 4 && !transpose) load_matrices<4, false>(shared, row_of_lane, words);
    if (count == 4 && transpose) load_matrices<4, true>(shared, row_of_lane, words);
}
LK_KERNEL(simt_test_ldmatrix);

// The tensor-core path of a GEMM tile end to end: A [16][16] and B (as [8][16], K contiguous, or as
// [16][8], N contiguous when b_n_contiguous) arrive in shared memory by cp.async (16-byte chunks,
// one group each, waited for in order), ldmatrix.x4 takes A's fragments and ldmatrix.x2 (.trans for
// an N-contiguous B) B's, one bf16 mma with C = 0 runs, and each lane's D goes to d[l·4 ..]. Which
// shared row each lane addresses follows the ISA's rule (lanes 8j..8j+7 give matrix j's rows).
extern "C" __global__ void simt_test_cp_async_ldmatrix_mma(const lk_u16* a, const lk_u16* b, int b_n_contiguous, float* d) {
    LK_SHARED(lk_u16, a_shared, [16 * 16]);
    LK_SHARED(lk_u16, b_shared, [16 * 8]);
    const int l = lane_id();
    // 32 chunks of 8 halves for A, 16 for B: lane l copies A's chunk l (group 0) and B's chunk l (group 1).
    lk_cp_async_16<false>(a_shared + 8 * l, a + 8 * l, 16);
    lk_cp_async_commit();
    if (l < 16) lk_cp_async_16<true>(b_shared + 8 * l, b + 8 * l, 16);
    lk_cp_async_commit();
    lk_cp_async_wait<0>();
    __syncthreads();

    // A's matrices: j = 0 rows 0-7 / k 0-7, 1 rows 8-15 / k 0-7, 2 rows 0-7 / k 8-15, 3 rows 8-15 / k 8-15.
    const int j = l / 8, r = l % 8;
    lk_u32 aw[4];
    lk_ldmatrix<4, false>(aw, a_shared + 16 * (r + 8 * (j & 1)) + 8 * (j >> 1));
    lk_u32 bw[2];
    if (b_n_contiguous) {
        // B as [k][n]: matrix 0 is k 0-7, matrix 1 is k 8-15 (rows of 8 n); .trans gives the col fragments.
        lk_ldmatrix<2, true>(bw, b_shared + 8 * (r + 8 * (j & 1)));
    } else {
        // B as [n][k]: matrix 0 is k 0-7, matrix 1 is k 8-15 of the 8 rows n.
        lk_ldmatrix<2, false>(bw, b_shared + 16 * r + 8 * (j & 1));
    }
    const float zero[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    float dw[4];
    lk_mma_m16n8k16<lk_bf16>(dw, aw, bw, zero);
    for (int i = 0; i < 4; ++i) d[4 * l + i] = dw[i];
}
LK_KERNEL(simt_test_cp_async_ldmatrix_mma);

// cp.async groups: src holds three 16-byte chunks; each lane 0 copies chunk g in group g (three
// commits), then records the shared chunks after wait_group 2, 1 and 0 in seen[0..2][0..2] (the first
// 4-byte word of each chunk), and finally a copy with src_bytes = 5 (zero fill) in seen[3].
extern "C" __global__ void simt_test_cp_async_groups(const unsigned* src, unsigned* seen) {
    LK_SHARED(unsigned, chunks, [4 * 4]);
    for (int i = (int)threadIdx.x; i < 16; i += (int)blockDim.x) chunks[i] = 0xdeadbeefu;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int g = 0; g < 3; ++g) {
            lk_cp_async_16<false>(chunks + 4 * g, src + 4 * g, 16);
            lk_cp_async_commit();
        }
        lk_cp_async_wait<2>();
        for (int g = 0; g < 3; ++g) seen[g] = chunks[4 * g];
        lk_cp_async_wait<1>();
        for (int g = 0; g < 3; ++g) seen[3 + g] = chunks[4 * g];
        lk_cp_async_wait<0>();
        for (int g = 0; g < 3; ++g) seen[6 + g] = chunks[4 * g];
        lk_cp_async_16<true>(chunks + 12, src, 5);
        lk_cp_async_commit();
        lk_cp_async_wait<0>();
        for (int i = 0; i < 4; ++i) seen[9 + i] = chunks[12 + i];
    }
}
LK_KERNEL(simt_test_cp_async_groups);

// ---- misuse: each commits one error the emulator must report ---------------------------------------

// A copy is issued and the thread ends without waiting for it.
extern "C" __global__ void simt_test_cp_async_never_waited(const unsigned* src) {
    LK_SHARED(unsigned, chunk, [4]);
    if (threadIdx.x == 0) {
        lk_cp_async_16<false>(chunk, src, 16);
        lk_cp_async_commit();
    }
}
LK_KERNEL(simt_test_cp_async_never_waited);

// The destination is global memory (out), not shared.
extern "C" __global__ void simt_test_cp_async_to_global(const unsigned* src, unsigned* out) {
    lk_cp_async_16<false>(out, src, 16);
    lk_cp_async_wait<0>();
}
LK_KERNEL(simt_test_cp_async_to_global);

// The shared destination is 8 bytes past a 16-byte boundary.
extern "C" __global__ void simt_test_cp_async_misaligned(const unsigned* src) {
    LK_SHARED(unsigned, chunk, [8]);
    lk_cp_async_16<false>(chunk + 2, src, 16);
    lk_cp_async_wait<0>();
}
LK_KERNEL(simt_test_cp_async_misaligned);

// Lane 5 gives ldmatrix a global address.
extern "C" __global__ void simt_test_ldmatrix_global_row(const unsigned short* rows) {
    LK_SHARED(lk_u16, shared, [8 * 8]);
    for (int i = (int)threadIdx.x; i < 64; i += 32) shared[i] = rows[i];
    __syncthreads();
    lk_u32 w[1];
    lk_ldmatrix<1, false>(w, lane_id() == 5 ? (const void*)rows : (const void*)(shared + 8 * (lane_id() % 8)));
}
LK_KERNEL(simt_test_ldmatrix_global_row);

// Lanes 0-15 load two matrices, lanes 16-31 four.
extern "C" __global__ void simt_test_ldmatrix_mixed_shapes() {
    LK_SHARED(lk_u16, shared, [32 * 8]);
    for (int i = (int)threadIdx.x; i < 256; i += 32) shared[i] = (lk_u16)i;
    __syncthreads();
    const lk_u16* row = shared + 8 * lane_id();
    if (lane_id() < 16) {
        lk_u32 w[2];
        lk_ldmatrix<2, false>(w, row);
    } else {
        lk_u32 w[4];
        lk_ldmatrix<4, false>(w, row);
    }
}
LK_KERNEL(simt_test_ldmatrix_mixed_shapes);

// An mma in a block of 16 threads: the warp has no lanes 16-31.
extern "C" __global__ void simt_test_mma_partial_warp() {
    const lk_u32 a[4] = {0, 0, 0, 0}, b[2] = {0, 0};
    const float c[4] = {0, 0, 0, 0};
    float d[4];
    lk_mma_m16n8k16<lk_bf16>(d, a, b, c);
}
LK_KERNEL(simt_test_mma_partial_warp);
