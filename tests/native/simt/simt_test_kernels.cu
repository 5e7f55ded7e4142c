// simt_test_kernels.cu: CUDA kernels that exercise the emulator itself, compiled into the test
// executable exactly as kernels/*.cu are compiled into libloraknl_simt (g++ -x c++ -DLK_SIMT,
// common.cuh) and registered with LK_KERNEL, so the tests launch them by name with a
// cuLaunchKernel-style args array. Each kernel writes what it observed; the tests compare that
// with values computed on the host. The misuse kernels are deliberately wrong CUDA: each commits
// one error the emulator must report.
#include <stdexcept>

#include "common.cuh"
#include "lora_kernels.h"  // the emulator's limits (these kernels never go to NVRTC)

namespace {

LK_DEVICE unsigned linear_thread() {
    return threadIdx.x + threadIdx.y * blockDim.x + threadIdx.z * blockDim.x * blockDim.y;
}
LK_DEVICE unsigned block_threads() { return blockDim.x * blockDim.y * blockDim.z; }
LK_DEVICE unsigned linear_block() { return blockIdx.x + blockIdx.y * gridDim.x + blockIdx.z * gridDim.x * gridDim.y; }

}  // namespace

// ---- geometry and barriers ------------------------------------------------------------------------

// out[(block * threads + thread) * 12 + i]: threadIdx, blockIdx, blockDim, gridDim (x, y, z each).
extern "C" __global__ void simt_test_coords(unsigned* out) {
    unsigned* o = out + ((unsigned long long)linear_block() * block_threads() + linear_thread()) * 12;
    const uint3 values[4] = {threadIdx, blockIdx, {blockDim.x, blockDim.y, blockDim.z},
                             {gridDim.x, gridDim.y, gridDim.z}};
    for (int i = 0; i < 4; ++i) {
        o[3 * i + 0] = values[i].x;
        o[3 * i + 1] = values[i].y;
        o[3 * i + 2] = values[i].z;
    }
}
LK_KERNEL(simt_test_coords);

// out[block] = sum of the block's `threads` inputs, by a shared-memory tree over any block size:
// fold the part above the largest power of two onto it, then halve; a barrier after each phase.
// phases[block] counts the barriers thread 0 passed (log2 of the power of two, plus two).
extern "C" __global__ void simt_test_block_sum(const float* in, float* out, int* phases) {
    LK_SHARED(float, partial, [1024]);
    const unsigned threads = block_threads();
    const unsigned t = linear_thread();
    const unsigned block = linear_block();
    partial[t] = in[(unsigned long long)block * threads + t];
    __syncthreads();
    int passed = 1;
    unsigned pow2 = 1;
    while (pow2 * 2 <= threads) pow2 *= 2;
    if (t < threads - pow2) partial[t] += partial[t + pow2];
    __syncthreads();
    ++passed;
    for (unsigned stride = pow2 / 2; stride > 0; stride /= 2) {
        if (t < stride) partial[t] += partial[t + stride];
        __syncthreads();
        ++passed;
    }
    if (t == 0) {
        out[block] = partial[0];
        phases[block] = passed;
    }
}
LK_KERNEL(simt_test_block_sum);

// Every thread stores its id, passes `rounds` barriers, and after each reads a neighbour's slot
// that the neighbour rewrote just before the barrier. out[block * threads + t] = number of
// rounds in which the neighbour's value was the expected one.
extern "C" __global__ void simt_test_barrier_rounds(int rounds, int* out) {
    LK_SHARED(int, slots, [1024]);
    const unsigned threads = block_threads();
    const unsigned t = linear_thread();
    const unsigned neighbour = (t + 1) % threads;
    int correct = 0;
    for (int round = 0; round < rounds; ++round) {
        slots[t] = (int)(t * 1000 + round);
        __syncthreads();
        correct += slots[neighbour] == (int)(neighbour * 1000 + round);
        __syncthreads();
    }
    out[linear_block() * threads + t] = correct;
}
LK_KERNEL(simt_test_barrier_rounds);

// ---- warp collectives -----------------------------------------------------------------------------

namespace {

// Lanes in `mask` (within each warp) take part; the others write `absent`. Outputs are laid out
// [4][threads]: idx (per-lane source lanes), up, down, xor (common operand).
template <class T>
LK_DEVICE void shuffle_all(const T* values, const int* src_lanes, T* out, unsigned mask, int operand, int width,
                           T absent) {
    const unsigned t = threadIdx.x;
    const unsigned n = blockDim.x;
    const unsigned lane = t % 32;
    if ((mask >> lane) & 1u) {
        const T v = values[t];
        out[0 * n + t] = __shfl_sync(mask, v, src_lanes[t], width);
        out[1 * n + t] = __shfl_up_sync(mask, v, (unsigned)operand, width);
        out[2 * n + t] = __shfl_down_sync(mask, v, (unsigned)operand, width);
        out[3 * n + t] = __shfl_xor_sync(mask, v, operand, width);
    } else {
        for (int k = 0; k < 4; ++k) out[k * n + t] = absent;
    }
}

}  // namespace

#define SIMT_TEST_SHUFFLE_KERNEL(suffix, T)                                                                 \
    extern "C" __global__ void simt_test_shuffle_##suffix(const T* values, const int* src_lanes, T* out,    \
                                                          unsigned mask, int operand, int width, T absent) { \
        shuffle_all<T>(values, src_lanes, out, mask, operand, width, absent);                                \
    }                                                                                                       \
    LK_KERNEL(simt_test_shuffle_##suffix);
SIMT_TEST_SHUFFLE_KERNEL(i32, int)
SIMT_TEST_SHUFFLE_KERNEL(u32, unsigned)
SIMT_TEST_SHUFFLE_KERNEL(i64, long long)
SIMT_TEST_SHUFFLE_KERNEL(u64, unsigned long long)
SIMT_TEST_SHUFFLE_KERNEL(f32, float)
SIMT_TEST_SHUFFLE_KERNEL(f64, double)
#undef SIMT_TEST_SHUFFLE_KERNEL

// Lanes whose bit is set in `mask` vote with predicates[t]; out is [3][threads]: ballot, any, all
// (0xDEAD for lanes that do not take part). The mask is clipped to the lanes the warp has.
extern "C" __global__ void simt_test_votes(const int* predicates, unsigned mask, unsigned* out) {
    const unsigned t = threadIdx.x;
    const unsigned n = blockDim.x;
    const unsigned lane = t % 32;
    const unsigned warp_lanes = n - (t - lane) < 32 ? n - (t - lane) : 32;
    const unsigned valid = warp_lanes == 32 ? 0xffffffffu : (1u << warp_lanes) - 1;
    const unsigned m = mask & valid;
    if ((m >> lane) & 1u) {
        out[0 * n + t] = __ballot_sync(m, predicates[t]);
        out[1 * n + t] = (unsigned)__any_sync(m, predicates[t]);
        out[2 * n + t] = (unsigned)__all_sync(m, predicates[t]);
    } else {
        for (int k = 0; k < 3; ++k) out[k * n + t] = 0xDEADu;
    }
}
LK_KERNEL(simt_test_votes);

// Legal divergence: the lower half-warp swaps neighbours among itself while the upper half takes
// a ballot of its own (disjoint masks, different collectives), then all 32 lanes reverse the warp
// with one full-mask shuffle, and finish with the common.cuh warp sum. out is [3][threads]:
// after the reversal, the upper half's ballot, and the warp sum of lane ids.
extern "C" __global__ void simt_test_divergent_collectives(int* out) {
    const unsigned t = threadIdx.x;
    const unsigned n = blockDim.x;
    const int lane = (int)(t % 32);
    int v = lane * 10;
    int ballot = -1;
    if (lane < 16) {
        v = __shfl_xor_sync(0x0000ffffu, v, 1);
    } else {
        ballot = (int)__ballot_sync(0xffff0000u, lane % 3 == 0);
        __syncwarp(0xffff0000u);
    }
    v = __shfl_sync(0xffffffffu, v, 31 - lane);
    out[0 * n + t] = v;
    out[1 * n + t] = ballot;
    out[2 * n + t] = (int)lk_warp_sum((float)lane);
}
LK_KERNEL(simt_test_divergent_collectives);

// out[linear thread id] = the linear id of lane 0 of its warp, via a full-warp shuffle: warps are
// formed from linear ids (x fastest), whatever the block's shape.
extern "C" __global__ void simt_test_warp_of_thread(unsigned* out) {
    const unsigned t = linear_thread();
    out[t] = __shfl_sync(0xffffffffu, t, 0);
}
LK_KERNEL(simt_test_warp_of_thread);

// ---- intrinsics -----------------------------------------------------------------------------------

// One thread applies each emulated intrinsic to x[i] / bits[i]; the host recomputes them.
// out_f[i * 8 + k] and out_i[i * 8 + k], k as listed below.
extern "C" __global__ void simt_test_intrinsics(const float* x, const unsigned* bits, int n, float* out_f, int* out_i) {
    for (int i = 0; i < n; ++i) {
        const float v = __ldg(&x[i]);
        float* f = out_f + i * 8;
        f[0] = rsqrtf(fabsf(v) + 1.0f);
        f[1] = __expf(v);
        f[2] = __logf(fabsf(v) + 0.5f);
        f[3] = __fdividef(v, 3.0f);
        f[4] = __fmaf_rn(v, 1.5f, -0.25f);
        f[5] = __saturatef(v);
        f[6] = min(v, 0.5f) + max(v, -0.5f);
        f[7] = __uint_as_float(__float_as_uint(v) ^ 0x80000000u) + __int_as_float(__float_as_int(v));
        const unsigned b = bits[i];
        int* o = out_i + i * 8;
        o[0] = __popc(b);
        o[1] = __popcll(((unsigned long long)b << 32) | b);
        o[2] = __clz((int)b);
        o[3] = __ffs((int)b);
        o[4] = min((int)b, 7) + max((int)b, -7);
        o[5] = (int)(min(b, 100u) + max(b, 50u));
        o[6] = (int)(min(1ll << 40, (long long)b) + max(-(1ll << 40), (long long)b));
        o[7] = (int)(min((unsigned long long)b, 3ull) + max((unsigned long long)b, 2ull));
    }
}
LK_KERNEL(simt_test_intrinsics);

// ---- shared memory --------------------------------------------------------------------------------

namespace {

// A static shared array declared in a helper, not the kernel: still one instance per block.
LK_DEVICE float* helper_shared() {
    LK_SHARED(float, helper_tile, [256]);
    return helper_tile;
}

}  // namespace

// Per block: observed[block * 4 + 0..3] = bits of the first element of the static array, of the
// helper's array and of dynamic shared memory, read before anything is written (0xFFFFFFFF: the
// poison), and the number of threads that then read back what the whole block wrote (the block
// id in every slot of all three arrays, seen through a neighbour's slot after a barrier).
extern "C" __global__ void simt_test_shared_fresh(unsigned* observed, int dynamic_floats) {
    LK_SHARED(float, tile, [256]);
    float* helper = helper_shared();
    float* dynamic = lk_dynamic_shared<float>();
    const unsigned t = threadIdx.x;
    const unsigned n = blockDim.x;
    const unsigned block = blockIdx.x;
    if (t == 0) {
        observed[block * 4 + 0] = lk_f32_bits(tile[0]);
        observed[block * 4 + 1] = lk_f32_bits(helper[0]);
        observed[block * 4 + 2] = lk_f32_bits(dynamic[0]);
    }
    __syncthreads();
    tile[t] = (float)block;
    helper[t] = (float)block + 0.5f;
    for (int i = (int)t; i < dynamic_floats; i += (int)n) dynamic[i] = (float)block + 0.25f;
    __syncthreads();
    const unsigned other = (t + 1) % n;
    bool ok = tile[other] == (float)block && helper[other] == (float)block + 0.5f;
    for (int i = 0; i < dynamic_floats; ++i) ok = ok && dynamic[i] == (float)block + 0.25f;
    if (ok) atomicAdd(&observed[block * 4 + 3], 1u);
}
LK_KERNEL(simt_test_shared_fresh);

// nan_count[block] = how many of the `floats` dynamic shared floats read as NaN before any write.
extern "C" __global__ void simt_test_dynamic_unwritten(int floats, int* nan_count) {
    float* dynamic = lk_dynamic_shared<float>();
    if (threadIdx.x == 0) {
        int count = 0;
        for (int i = 0; i < floats; ++i) count += dynamic[i] != dynamic[i];
        nan_count[blockIdx.x] = count;
    }
}
LK_KERNEL(simt_test_dynamic_unwritten);

// C[M,N] = A[M,K] B[K,N] with 16x16 tiles staged through shared memory (padded to 17 columns).
extern "C" __global__ void simt_test_matmul_tiled(const float* A, const float* B, float* C, int M, int N, int K) {
    LK_SHARED(float, a_tile, [16][17]);
    LK_SHARED(float, b_tile, [16][17]);
    const int tx = (int)threadIdx.x;
    const int ty = (int)threadIdx.y;
    const int row = (int)blockIdx.y * 16 + ty;
    const int col = (int)blockIdx.x * 16 + tx;
    float acc = 0.0f;
    for (int k0 = 0; k0 < K; k0 += 16) {
        a_tile[ty][tx] = row < M && k0 + tx < K ? A[(long long)row * K + k0 + tx] : 0.0f;
        b_tile[ty][tx] = k0 + ty < K && col < N ? B[(long long)(k0 + ty) * N + col] : 0.0f;
        __syncthreads();
        for (int k = 0; k < 16; ++k) acc += a_tile[ty][k] * b_tile[k][tx];
        __syncthreads();
    }
    if (row < M && col < N) C[(long long)row * N + col] = acc;
}
LK_KERNEL(simt_test_matmul_tiled);

// Exactly LK_SIMT_MAX_STATIC_SHARED_BYTES of static shared memory: allowed.
extern "C" __global__ void simt_test_static_shared_at_limit(float* out) {
    LK_SHARED(float, big, [LK_SIMT_MAX_STATIC_SHARED_BYTES / 4]);
    big[threadIdx.x] = 1.0f;
    __syncthreads();
    if (threadIdx.x == 0) out[blockIdx.x] = big[blockDim.x - 1];
}
LK_KERNEL(simt_test_static_shared_at_limit);

// One float more than the static limit, spread over two arrays.
extern "C" __global__ void simt_test_static_shared_over_limit(float* out) {
    LK_SHARED(float, first, [LK_SIMT_MAX_STATIC_SHARED_BYTES / 8]);
    LK_SHARED(float, second, [LK_SIMT_MAX_STATIC_SHARED_BYTES / 8 + 1]);
    first[threadIdx.x] = 1.0f;
    second[threadIdx.x] = 2.0f;
    out[blockIdx.x] = first[0] + second[0];
}
LK_KERNEL(simt_test_static_shared_over_limit);

// ---- atomics --------------------------------------------------------------------------------------

struct atomic_targets {
    int* add_i;
    unsigned* add_u;
    unsigned long long* add_u64;
    float* add_f;
    double* add_d;
    int* sub_i;
    unsigned* sub_u;
    int* max_i;
    unsigned* max_u;
    int* min_i;
    unsigned* min_u;
    int* cas_i;
    unsigned* cas_u;
    unsigned long long* cas_u64;
    int* exch_i_slot;
    long long* exch_i_returned;  // sum of the values atomicExch returned
    unsigned* exch_u_slot;
    float* exch_f_slot;
    double* exch_f_returned;
    int* shared_total;           // sum over blocks of a block-shared atomic counter
};

// Every thread of every block applies each atomic once with a value derived from its global id g
// (the host recomputes the expected results): add 1, 3u, 2^33 + g, float/double 1 / (1 + g % 10);
// sub 2, 5u; max/min of (g * 7919) % 100003 - 50000; CAS-loop increments; exchange g and sum what
// comes back.
extern "C" __global__ void simt_test_atomics(atomic_targets targets) {
    LK_SHARED(int, block_count, [1]);
    const unsigned long long g = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (threadIdx.x == 0) block_count[0] = 0;
    __syncthreads();
    atomicAdd(&block_count[0], 1);

    atomicAdd(targets.add_i, 1);
    atomicAdd(targets.add_u, 3u);
    atomicAdd(targets.add_u64, (1ull << 33) + g);
    atomicAdd(targets.add_f, 1.0f / (float)(1 + g % 10));
    atomicAdd(targets.add_d, 1.0 / (double)(1 + g % 10));
    atomicSub(targets.sub_i, 2);
    atomicSub(targets.sub_u, 5u);
    const int key = (int)((g * 7919) % 100003) - 50000;
    atomicMax(targets.max_i, key);
    atomicMax(targets.max_u, (unsigned)(key + 50000));
    atomicMin(targets.min_i, key);
    atomicMin(targets.min_u, (unsigned)(key + 50000));

    int old_i = *targets.cas_i;
    for (;;) {
        const int seen = atomicCAS(targets.cas_i, old_i, old_i + 1);
        if (seen == old_i) break;
        old_i = seen;
    }
    unsigned old_u = *targets.cas_u;
    for (;;) {
        const unsigned seen = atomicCAS(targets.cas_u, old_u, old_u + 2u);
        if (seen == old_u) break;
        old_u = seen;
    }
    unsigned long long old_u64 = *targets.cas_u64;
    for (;;) {
        const unsigned long long seen = atomicCAS(targets.cas_u64, old_u64, old_u64 + (1ull << 32));
        if (seen == old_u64) break;
        old_u64 = seen;
    }

    const int returned = atomicExch(targets.exch_i_slot, (int)g);
    atomicAdd(reinterpret_cast<unsigned long long*>(targets.exch_i_returned), (unsigned long long)(long long)returned);
    atomicExch(targets.exch_u_slot, (unsigned)g);
    const float returned_f = atomicExch(targets.exch_f_slot, (float)g);
    atomicAdd(targets.exch_f_returned, (double)returned_f);

    __syncthreads();
    if (threadIdx.x == 0) atomicAdd(targets.shared_total, block_count[0]);
}
LK_KERNEL(simt_test_atomics);

// ---- launch behaviour -----------------------------------------------------------------------------

// Thread 0 of each block counts the block as started; thread `trap_thread` of blocks `trap_a`
// and `trap_b` then calls __trap().
extern "C" __global__ void simt_test_trap(int* started, int trap_a, int trap_b, int trap_thread) {
    if (threadIdx.x == 0) atomicAdd(started, 1);
    __syncthreads();
    if (((int)blockIdx.x == trap_a || (int)blockIdx.x == trap_b) && (int)threadIdx.x == trap_thread) __trap();
}
LK_KERNEL(simt_test_trap);

extern "C" __global__ void simt_test_throw(int throwing_thread) {
    if ((int)threadIdx.x == throwing_thread) throw std::runtime_error("thrown by simt_test_throw");
}
LK_KERNEL(simt_test_throw);

// A kernel without parameters (args may be NULL).
extern "C" __global__ void simt_test_no_params() { __syncthreads(); }
LK_KERNEL(simt_test_no_params);

// Tries a launch from kernel code (dynamic parallelism, which the emulator refuses) and records
// the status it got.
extern "C" __global__ void simt_test_nested_launch(int* status) {
    if (threadIdx.x == 0) status[blockIdx.x] = lk_simt_launch("simt_test_no_params", 1, 1, 1, 1, 1, 1, 0, nullptr);
}
LK_KERNEL(simt_test_nested_launch);

// ---- misuse: each kernel below is wrong CUDA, and the emulator must say so ------------------------

// Threads 0..15 wait at a barrier that threads 16.. never reach (they exit).
extern "C" __global__ void simt_test_misuse_divergent_barrier() {
    if (threadIdx.x < 16) __syncthreads();
}
LK_KERNEL(simt_test_misuse_divergent_barrier);

// Thread `leaver` returns before the barrier the others wait at.
extern "C" __global__ void simt_test_misuse_early_exit(int leaver) {
    if ((int)threadIdx.x == leaver) return;
    __syncthreads();
}
LK_KERNEL(simt_test_misuse_early_exit);

// Lane 0 waits at __syncthreads while lanes 1..31 wait for it at a full-warp shuffle.
extern "C" __global__ void simt_test_misuse_barrier_vs_shuffle(int* out) {
    const unsigned lane = threadIdx.x % 32;
    if (lane == 0) {
        __syncthreads();
    } else {
        out[threadIdx.x] = __shfl_sync(0xffffffffu, (int)lane, 0);
    }
}
LK_KERNEL(simt_test_misuse_barrier_vs_shuffle);

// Lane `missing` skips a full-mask shuffle the others perform.
extern "C" __global__ void simt_test_misuse_missing_lane(int missing, float* out) {
    const unsigned lane = threadIdx.x % 32;
    float v = (float)lane;
    if ((int)lane != missing) v = __shfl_xor_sync(0xffffffffu, v, 1);
    out[threadIdx.x] = v;
}
LK_KERNEL(simt_test_misuse_missing_lane);

// Every lane passes a mask without its own bit (lane 0's is missing).
extern "C" __global__ void simt_test_misuse_own_lane(int* out) {
    out[threadIdx.x] = __shfl_sync(0xfffffffeu, (int)threadIdx.x, 1);
}
LK_KERNEL(simt_test_misuse_own_lane);

// Even lanes take a ballot, odd lanes an any-vote, both naming the full warp.
extern "C" __global__ void simt_test_misuse_mismatched_kinds(unsigned* out) {
    if (threadIdx.x % 2 == 0) {
        out[threadIdx.x] = __ballot_sync(0xffffffffu, 1);
    } else {
        out[threadIdx.x] = (unsigned)__any_sync(0xffffffffu, 1);
    }
}
LK_KERNEL(simt_test_misuse_mismatched_kinds);

// Lane 0 syncs with mask 0x3, lanes 1 and 2 with mask 0x7: one collective, two masks.
extern "C" __global__ void simt_test_misuse_mismatched_masks() {
    const unsigned lane = threadIdx.x % 32;
    if (lane == 0) __syncwarp(0x3u);
    if (lane == 1 || lane == 2) __syncwarp(0x7u);
}
LK_KERNEL(simt_test_misuse_mismatched_masks);

// A full-warp sum (common.cuh lk_warp_sum) in a block whose only warp is partial.
extern "C" __global__ void simt_test_misuse_partial_warp_sum(float* out) {
    out[threadIdx.x] = lk_warp_sum((float)threadIdx.x);
}
LK_KERNEL(simt_test_misuse_partial_warp_sum);

// Lane 0 returns at once; the others then shuffle with a mask that still names it.
extern "C" __global__ void simt_test_misuse_exited_lane(int* out) {
    if (threadIdx.x == 0) return;
    out[threadIdx.x] = __shfl_sync(0xffffffffu, (int)threadIdx.x, 1);
}
LK_KERNEL(simt_test_misuse_exited_lane);

// A shuffle width that is not a power of two.
extern "C" __global__ void simt_test_misuse_bad_width(int* out) {
    out[threadIdx.x] = __shfl_sync(0xffffffffu, (int)threadIdx.x, 0, 12);
}
LK_KERNEL(simt_test_misuse_bad_width);

// Registered twice, as if two modules defined a kernel of this name: launching it is refused.
extern "C" __global__ void simt_test_registered_twice() {}
LK_KERNEL(simt_test_registered_twice);
static const ::lk_simt::kernel_registration simt_test_second_registration(
    "simt_test_registered_twice", &::lk_simt::kernel_trampoline_for<&simt_test_registered_twice>, 0);
