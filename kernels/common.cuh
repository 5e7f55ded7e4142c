// common.cuh: the only header a kernel in kernels/ may include.
//
// Every kernel source is compiled three ways (docs/DESIGN.md in ../shared, docs/KERNELS.md here):
//   * LK_MODE_CUDA  - NVRTC at run time or nvcc ahead of time (__CUDACC__ / __CUDACC_RTC__);
//   * LK_MODE_SIMT  - g++ on the CPU under the SIMT emulator (LK_SIMT defined by CMake); the
//                     CUDA built-ins then come from native/simt/simt_device.h;
//   * LK_MODE_HOST  - plain C++ (native/cpu includes this file for the portable pieces: bf16
//                     rounding and the dropout hash, so the CPU kernels and the GPU kernels
//                     round and drop exactly alike).
// Nothing here includes a CUDA SDK header, so NVRTC needs no toolkit on disk.
#pragma once

#if defined(__CUDACC_RTC__) || defined(__CUDACC__)
#define LK_MODE_CUDA 1
#elif defined(LK_SIMT)
#define LK_MODE_SIMT 1
#else
#define LK_MODE_HOST 1
#endif

// ---- fixed-width integers (NVRTC ships no <cstdint>) ----------------------------------------
typedef unsigned char lk_u8;
typedef unsigned short lk_u16;
typedef unsigned int lk_u32;
typedef unsigned long long lk_u64;
typedef long long lk_i64;

#if defined(LK_MODE_CUDA)
#define LK_HD __host__ __device__ __forceinline__
#define LK_DEVICE __device__ __forceinline__
#elif defined(LK_MODE_SIMT)
#include "simt_device.h"  // threadIdx, __syncthreads, __shfl_*_sync, atomics, LK_KERNEL, ...
#define LK_HD inline
#define LK_DEVICE inline
#else
#define LK_HD inline
#define LK_DEVICE inline
#endif

#if !defined(LK_MODE_SIMT)
// Registers an entry point with the emulator; a no-op for NVRTC and nvcc.
#define LK_KERNEL(name)
#endif

// ---- bit casts -------------------------------------------------------------------------------
LK_HD lk_u32 lk_f32_bits(float f) {
#if defined(LK_MODE_CUDA)
    return __float_as_uint(f);
#else
    lk_u32 u;
    __builtin_memcpy(&u, &f, sizeof u);
    return u;
#endif
}

LK_HD float lk_bits_f32(lk_u32 u) {
#if defined(LK_MODE_CUDA)
    return __uint_as_float(u);
#else
    float f;
    __builtin_memcpy(&f, &u, sizeof f);
    return f;
#endif
}

// ---- bf16 storage type ------------------------------------------------------------------------
// A plain 16-bit container with explicit conversions, so it means the same under NVRTC, nvcc
// and g++. Rounding is round-to-nearest-even, NaN stays NaN (quiet bit forced), as PyTorch does.
struct lk_bf16 {
    lk_u16 bits;
};

LK_HD float lk_bf16_to_f32(lk_bf16 h) { return lk_bits_f32(((lk_u32)h.bits) << 16); }

LK_HD lk_bf16 lk_f32_to_bf16(float f) {
    lk_u32 u = lk_f32_bits(f);
    lk_bf16 h;
    if ((u & 0x7fffffffu) > 0x7f800000u) {  // NaN: keep the sign, force a quiet payload
        h.bits = (lk_u16)((u >> 16) | 0x0040u);
        return h;
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    h.bits = (lk_u16)(u >> 16);
    return h;
}

// Loads and stores that let one kernel template serve fp32 and bf16 storage; arithmetic is
// always fp32.
LK_HD float lk_load(const float* p) { return *p; }
LK_HD float lk_load(const lk_bf16* p) { return lk_bf16_to_f32(*p); }
LK_HD void lk_store(float* p, float v) { *p = v; }
LK_HD void lk_store(lk_bf16* p, float v) { *p = lk_f32_to_bf16(v); }

LK_HD int lk_min(int a, int b) { return a < b ? a : b; }
LK_HD int lk_max(int a, int b) { return a > b ? a : b; }
LK_HD int lk_ceil_div(int a, int b) { return (a + b - 1) / b; }

// ---- dropout mask -----------------------------------------------------------------------------
// LoRA dropout applies to the input of the adapter branch only (REFERENCE.md 1.5). The mask is
// never stored: element (row, col) of the [M, in] input is kept iff
//     lk_dropout_uniform(seed, row * in + col) >= p
// and a kept element is scaled by 1 / (1 - p). Forward and backward regenerate the same mask
// from (seed, index), on every backend, so the CPU and GPU kernels agree bit for bit.
// The hash is SplitMix64's finaliser over seed + index * golden-ratio constant.
LK_HD float lk_dropout_uniform(lk_u64 seed, lk_u64 index) {
    lk_u64 z = seed + (index + 1ull) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z = z ^ (z >> 31);
    return (float)(lk_u32)(z >> 40) * (1.0f / 16777216.0f);  // 24 random bits -> [0, 1)
}

// The factor that multiplies input element `index`: 0 when dropped, 1/(1-p) when kept, 1 when
// dropout is off (p == 0).
LK_HD float lk_dropout_factor(lk_u64 seed, lk_u64 index, float p) {
    if (p <= 0.0f) return 1.0f;
    return lk_dropout_uniform(seed, index) >= p ? 1.0f / (1.0f - p) : 0.0f;
}

#if !defined(LK_MODE_HOST)
// ---- device helpers (CUDA and SIMT) -----------------------------------------------------------

// Dynamic shared memory: the one way a kernel reaches it (the emulator gives each block a fresh,
// poisoned arena of the launch's dynamic size).
template <class T>
LK_DEVICE T* lk_dynamic_shared() {
#if defined(LK_MODE_CUDA)
    extern __shared__ __align__(16) unsigned char lk_dynamic_smem[];
    return reinterpret_cast<T*>(lk_dynamic_smem);
#else
    return reinterpret_cast<T*>(::lk_simt::dynamic_shared());
#endif
}

// Static shared memory: LK_SHARED(float, tile, [32][33]); declares `tile` as a block-shared
// array. Under the emulator it is a fresh, poisoned allocation per block.
#if defined(LK_MODE_CUDA)
#define LK_SHARED(T, name, dims) __shared__ T name dims
#endif

// Sum over the 32 lanes of a full warp; every lane gets the total.
LK_DEVICE float lk_warp_sum(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

// Sum over the 32 lanes of a full warp, in double; every lane gets the total.
LK_DEVICE double lk_warp_sum_f64(double v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

LK_DEVICE float lk_warp_max(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        float o = __shfl_xor_sync(0xffffffffu, v, offset);
        v = v > o ? v : o;
    }
    return v;
}
#endif
