// simt_device.h: the CUDA built-ins that kernels/*.cu use, for g++ under the SIMT emulator.
//
// kernels/common.cuh includes this file when LK_SIMT is defined, so the same kernel source that
// NVRTC compiles also compiles as plain C++. Everything a kernel calls that depends on "which
// thread am I" or that must wait for other threads (barriers, warp collectives, block-shared
// memory, traps) is a call into libloraknl_simt.so (namespace lk_simt, exported with default
// visibility); everything else (atomics, math, keywords) is inline here. The runtime behind these
// calls is described in block.h (fibers, barriers, collectives) and launch.cpp (workers).
//
// Semantics are CUDA's (Volta and later, independent thread scheduling), made strict: misuse that
// is undefined behaviour on a GPU (a barrier not reached by every thread, a collective whose mask
// names a missing or exited lane, lanes meeting at different collectives) is reported as
// LK_ERR_KERNEL_FAULT by lk_simt_launch instead of producing garbage or a hang.
#pragma once

#include <math.h>  // libstdc++'s <math.h> also puts the float overloads (sqrt(float), ...) in ::

#include <cmath>
#include <cstddef>
#include <cstdio>  // device-side printf
#include <cstring>
#include <utility>

#define LK_SIMT_EXPORT __attribute__((visibility("default")))

// ---- CUDA keywords ------------------------------------------------------------------------------
// __shared__ is deliberately left undefined: block-shared memory is declared with LK_SHARED, and a
// stray __shared__ must fail to compile rather than silently become per-thread memory.
// __restrict__ is a g++ keyword already.
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

// threadIdx and blockIdx are uint3s, as in CUDA.
struct uint3 {
    unsigned int x, y, z;
};

namespace lk_simt {

// The calling thread's position, one record per emulated thread. current_coords() is constant for
// the whole life of an emulated thread (each runs on its own fiber), so it is declared `const` and
// the compiler calls it once per kernel function however often threadIdx is read.
struct thread_coords {
    uint3 thread_idx;
    uint3 block_idx;
    uint3 block_dim;
    uint3 grid_dim;
};
LK_SIMT_EXPORT const thread_coords* current_coords() noexcept __attribute__((const));

// The collectives a warp's lanes can meet at; lanes named in one mask must meet at the same kind.
// warp_matrix is mma.sync / ldmatrix (warp_matrix.cpp), which every lane of the warp executes together.
enum class collective : int { sync_warp, shfl_idx, shfl_up, shfl_down, shfl_xor, ballot, any, all, warp_matrix };

// Barrier of all threads of the block. Never returns if the block faults (the block is abandoned).
LK_SIMT_EXPORT void sync_threads() noexcept;
// Every lane of `mask` contributes `value` (an 8-byte payload) and gets its result: the source
// lane's payload for shuffles (all ones when the source lane is not in `mask`), the ballot for
// votes. `lane_or_delta` and `width` are the shuffle's operands (ignored by votes and __syncwarp).
LK_SIMT_EXPORT unsigned long long warp_collective(collective kind, unsigned int mask,
                                                  unsigned long long value, int lane_or_delta,
                                                  int width) noexcept;
// The block's instance of the static shared array identified by `key` (fresh, 0xFF-filled).
LK_SIMT_EXPORT void* block_shared(const void* key, std::size_t bytes, std::size_t alignment) noexcept;
// The block's dynamic shared memory: exactly the launch's dynamic_shared_bytes (fresh, 0xFF-filled).
LK_SIMT_EXPORT void* dynamic_shared() noexcept;
// Reports a kernel fault naming the calling thread and abandons its block.
[[noreturn]] LK_SIMT_EXPORT void trap() noexcept;

// ---- warp-level matrix instructions (kernels/common.cuh's lk_mma_*, lk_ldmatrix, lk_cp_async_*) ----
// What one lane hands to a warp-wide mma.sync or ldmatrix: the instruction and pointers to its own
// registers (fragments of 32-bit words, two 16-bit elements each, the first in the low half). The
// warp's last lane to arrive computes every lane's result from the PTX ISA's fragment layouts
// (warp_matrix.cpp) and writes it through the lanes' output pointers.
enum class matrix_op : int { mma_m16n8k16_bf16, mma_m16n8k16_f16, ldmatrix_m8n8_b16 };
struct warp_matrix_lane {
    matrix_op op;
    int matrices;               // ldmatrix: .x1, .x2 or .x4
    bool transpose;             // ldmatrix: .trans
    const unsigned* a;          // mma: 4 words of A (16 x 16, row)
    const unsigned* b;          // mma: 2 words of B (16 x 8, col)
    const float* c;             // mma: 4 floats of C (16 x 8)
    float* d;                   // mma: 4 floats of D
    const void* row_address;    // ldmatrix: this lane's row (lanes 8j..8j+7 give matrix j's rows)
    unsigned* words;            // ldmatrix: `matrices` words out
};
// Every lane of the warp calls this with its own record (mma.sync and ldmatrix are .aligned: all 32
// lanes execute the same instruction); faults on a partial warp, mismatched instructions, or an
// ldmatrix row outside the block's shared memory or not 16-byte aligned.
LK_SIMT_EXPORT void warp_matrix(warp_matrix_lane* lane) noexcept;

// cp.async: a 16-byte copy from global to shared memory that completes only when the thread waits
// for its group. The emulator performs it at that wait (so a read before the wait sees the old
// shared bytes); bytes past src_bytes are zero-filled. Destination in the block's shared memory,
// both addresses 16-byte aligned, src_bytes <= 16, else a fault. A thread that exits with copies
// never waited for faults.
LK_SIMT_EXPORT void cp_async(void* shared_destination, const void* global_source, unsigned src_bytes) noexcept;
// cp.async.commit_group: the copies issued since the last commit form a group.
LK_SIMT_EXPORT void cp_async_commit() noexcept;
// cp.async.wait_group n: completes every committed group but the newest `newest_pending`.
LK_SIMT_EXPORT void cp_async_wait(int newest_pending) noexcept;

// Kernel registry: lk_simt_launch("name", ..., args) calls the trampoline with the args array.
using kernel_trampoline = void (*)(void** args);
LK_SIMT_EXPORT void register_kernel(const char* name, kernel_trampoline trampoline,
                                    int parameter_count) noexcept;

// A static local of this type marks one LK_SHARED declaration; its address is the key.
struct shared_key {
    char unused;
};

struct kernel_registration {
    kernel_registration(const char* name, kernel_trampoline trampoline, int parameter_count) noexcept {
        register_kernel(name, trampoline, parameter_count);
    }
};

template <class... P>
constexpr int parameter_count(void (*)(P...)) {
    return (int)sizeof...(P);
}

// Calls kernel(*(P0*)args[0], *(P1*)args[1], ...), which is how cuLaunchKernel reads its args.
template <class... P, std::size_t... I>
inline void call_with_args(void (*kernel)(P...), void** args, std::index_sequence<I...>) {
    kernel(*static_cast<P*>(args[I])...);
}

template <auto Kernel>
void kernel_trampoline_for(void** args) {
    call_with_args(Kernel, args, std::make_index_sequence<parameter_count(Kernel)>{});
}

template <class T>
inline unsigned long long to_payload(T v) {
    static_assert(sizeof(T) <= 8, "warp collectives exchange at most 8 bytes");
    unsigned long long bits = 0;
    std::memcpy(&bits, &v, sizeof v);
    return bits;
}

template <class T>
inline T from_payload(unsigned long long bits) {
    T v;
    std::memcpy(&v, &bits, sizeof v);
    return v;
}

template <class T>
inline T shuffle(collective kind, unsigned int mask, T var, int lane_or_delta, int width) {
    return from_payload<T>(warp_collective(kind, mask, to_payload(var), lane_or_delta, width));
}

// Atomic read-modify-write through a compare-and-swap loop, for the operations x86 has no
// instruction for (float/double add, min, max).
template <class T, class F>
inline T atomic_update(T* address, F update) {
    T old;
    __atomic_load(address, &old, __ATOMIC_RELAXED);
    T desired;
    do {
        desired = update(old);
    } while (!__atomic_compare_exchange(address, &old, &desired, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    return old;
}

}  // namespace lk_simt

// ---- built-in variables ---------------------------------------------------------------------------
#define threadIdx (::lk_simt::current_coords()->thread_idx)
#define blockIdx (::lk_simt::current_coords()->block_idx)
#define blockDim (::lk_simt::current_coords()->block_dim)
#define gridDim (::lk_simt::current_coords()->grid_dim)
constexpr int warpSize = 32;

// ---- block-shared memory --------------------------------------------------------------------------
// LK_SHARED(float, tile, [32][33]); declares `tile` as a reference to the block's instance of the
// array. Every thread of a block gets the same storage; each block gets a fresh allocation of
// exactly sizeof(T dims) bytes, filled with 0xFF (NaN for floats), freed when the block ends.
#define LK_SHARED(T, name, dims)                                                                    \
    static ::lk_simt::shared_key lk_simt_shared_key_##name;                                         \
    T(&name) dims = *static_cast<T(*) dims>(                                                        \
        ::lk_simt::block_shared(&lk_simt_shared_key_##name, sizeof(T dims), alignof(T)))

// ---- kernel registration --------------------------------------------------------------------------
// Placed after `extern "C" __global__ void name(...) { ... }`: lk_simt_launch("name", ...) can then
// launch it with a cuLaunchKernel-style args array.
#define LK_KERNEL(name)                                                                             \
    static const ::lk_simt::kernel_registration lk_simt_registration_##name(                        \
        #name, &::lk_simt::kernel_trampoline_for<&name>, ::lk_simt::parameter_count(&name))

// ---- synchronization --------------------------------------------------------------------------------
inline void __syncthreads() { ::lk_simt::sync_threads(); }
inline void __syncwarp(unsigned int mask = 0xffffffffu) {
    ::lk_simt::warp_collective(::lk_simt::collective::sync_warp, mask, 0, 0, 32);
}
// All threads of a block run on one OS thread, so ordering within the block needs only the
// compiler barrier; other blocks run on other OS threads and need a real fence.
inline void __threadfence_block() { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
[[noreturn]] inline void __trap() { ::lk_simt::trap(); }

// ---- warp shuffles and votes ------------------------------------------------------------------------
#define LK_SIMT_SHUFFLES(T)                                                                         \
    inline T __shfl_sync(unsigned int mask, T var, int srcLane, int width = 32) {                  \
        return ::lk_simt::shuffle(::lk_simt::collective::shfl_idx, mask, var, srcLane, width);     \
    }                                                                                               \
    inline T __shfl_up_sync(unsigned int mask, T var, unsigned int delta, int width = 32) {        \
        return ::lk_simt::shuffle(::lk_simt::collective::shfl_up, mask, var, (int)delta, width);   \
    }                                                                                               \
    inline T __shfl_down_sync(unsigned int mask, T var, unsigned int delta, int width = 32) {      \
        return ::lk_simt::shuffle(::lk_simt::collective::shfl_down, mask, var, (int)delta, width); \
    }                                                                                               \
    inline T __shfl_xor_sync(unsigned int mask, T var, int laneMask, int width = 32) {             \
        return ::lk_simt::shuffle(::lk_simt::collective::shfl_xor, mask, var, laneMask, width);    \
    }
LK_SIMT_SHUFFLES(int)
LK_SIMT_SHUFFLES(unsigned int)
LK_SIMT_SHUFFLES(long)
LK_SIMT_SHUFFLES(unsigned long)
LK_SIMT_SHUFFLES(long long)
LK_SIMT_SHUFFLES(unsigned long long)
LK_SIMT_SHUFFLES(float)
LK_SIMT_SHUFFLES(double)
#undef LK_SIMT_SHUFFLES

inline unsigned int __ballot_sync(unsigned int mask, int predicate) {
    return (unsigned int)::lk_simt::warp_collective(::lk_simt::collective::ballot, mask,
                                                    predicate != 0, 0, 32);
}
inline int __any_sync(unsigned int mask, int predicate) {
    return (int)::lk_simt::warp_collective(::lk_simt::collective::any, mask, predicate != 0, 0, 32);
}
inline int __all_sync(unsigned int mask, int predicate) {
    return (int)::lk_simt::warp_collective(::lk_simt::collective::all, mask, predicate != 0, 0, 32);
}

// ---- atomics (real atomics: blocks run in parallel on OS threads; relaxed, as CUDA's are) ---------
inline int atomicAdd(int* address, int val) { return __atomic_fetch_add(address, val, __ATOMIC_RELAXED); }
inline unsigned int atomicAdd(unsigned int* address, unsigned int val) {
    return __atomic_fetch_add(address, val, __ATOMIC_RELAXED);
}
inline unsigned long long atomicAdd(unsigned long long* address, unsigned long long val) {
    return __atomic_fetch_add(address, val, __ATOMIC_RELAXED);
}
inline float atomicAdd(float* address, float val) {
    return ::lk_simt::atomic_update(address, [val](float old) { return old + val; });
}
inline double atomicAdd(double* address, double val) {
    return ::lk_simt::atomic_update(address, [val](double old) { return old + val; });
}
inline int atomicSub(int* address, int val) { return __atomic_fetch_sub(address, val, __ATOMIC_RELAXED); }
inline unsigned int atomicSub(unsigned int* address, unsigned int val) {
    return __atomic_fetch_sub(address, val, __ATOMIC_RELAXED);
}
inline int atomicMax(int* address, int val) {
    return ::lk_simt::atomic_update(address, [val](int old) { return old > val ? old : val; });
}
inline unsigned int atomicMax(unsigned int* address, unsigned int val) {
    return ::lk_simt::atomic_update(address, [val](unsigned int old) { return old > val ? old : val; });
}
inline int atomicMin(int* address, int val) {
    return ::lk_simt::atomic_update(address, [val](int old) { return old < val ? old : val; });
}
inline unsigned int atomicMin(unsigned int* address, unsigned int val) {
    return ::lk_simt::atomic_update(address, [val](unsigned int old) { return old < val ? old : val; });
}
template <class T>
inline T lk_simt_atomic_cas(T* address, T compare, T val) {
    __atomic_compare_exchange_n(address, &compare, val, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    return compare;  // the old value, whether or not the swap happened
}
inline int atomicCAS(int* address, int compare, int val) { return lk_simt_atomic_cas(address, compare, val); }
inline unsigned int atomicCAS(unsigned int* address, unsigned int compare, unsigned int val) {
    return lk_simt_atomic_cas(address, compare, val);
}
inline unsigned long long atomicCAS(unsigned long long* address, unsigned long long compare,
                                    unsigned long long val) {
    return lk_simt_atomic_cas(address, compare, val);
}
inline int atomicExch(int* address, int val) { return __atomic_exchange_n(address, val, __ATOMIC_RELAXED); }
inline unsigned int atomicExch(unsigned int* address, unsigned int val) {
    return __atomic_exchange_n(address, val, __ATOMIC_RELAXED);
}
inline float atomicExch(float* address, float val) {
    float old;
    __atomic_exchange(address, &val, &old, __ATOMIC_RELAXED);
    return old;
}

// ---- loads, bit tricks and fast math ------------------------------------------------------------
template <class T>
inline T __ldg(const T* p) {
    return *p;
}
inline int __popc(unsigned int x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned int)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline unsigned int __float_as_uint(float x) { return ::lk_simt::to_payload(x) & 0xffffffffu; }
inline int __float_as_int(float x) { return (int)__float_as_uint(x); }
inline float __uint_as_float(unsigned int x) { return ::lk_simt::from_payload<float>(x); }
inline float __int_as_float(int x) { return __uint_as_float((unsigned int)x); }

inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __fmaf_rn(float x, float y, float z) { return fmaf(x, y, z); }
// Clamps to [0, 1]; NaN becomes 0 (CUDA's definition).
inline float __saturatef(float x) { return x > 0.0f ? (x < 1.0f ? x : 1.0f) : 0.0f; }

// CUDA's device-side min/max overloads.
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned int min(unsigned int a, unsigned int b) { return a < b ? a : b; }
inline unsigned int max(unsigned int a, unsigned int b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }
