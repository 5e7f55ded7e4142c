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

// ---- f16 storage type --------------------------------------------------------------------------
// IEEE binary16 in a 16-bit container, for the f16 tensor-core path; the same bit-level conversions
// under NVRTC, nvcc and g++. Rounding is round-to-nearest-even with overflow to infinity, NaN quiet.
struct lk_f16 {
    lk_u16 bits;
};

LK_HD float lk_f16_to_f32(lk_f16 h) {
    const lk_u32 sign = ((lk_u32)h.bits & 0x8000u) << 16, exponent = (h.bits >> 10) & 31u, fraction = h.bits & 1023u;
    if (exponent == 31u) return lk_bits_f32(sign | 0x7f800000u | (fraction << 13));  // inf, NaN (payload kept)
    if (exponent != 0u) return lk_bits_f32(sign | ((exponent + 112u) << 23) | (fraction << 13));
    // Subnormal (or zero): fraction·2^-24, exact in fp32.
    const float magnitude = (float)fraction * (1.0f / 16777216.0f);
    return sign ? -magnitude : magnitude;
}

LK_HD lk_f16 lk_f32_to_f16(float f) {
    const lk_u32 u = lk_f32_bits(f), sign = (u >> 16) & 0x8000u, magnitude = u & 0x7fffffffu;
    lk_f16 h;
    if (magnitude > 0x7f800000u) {  // NaN: keep the sign, force a quiet payload
        h.bits = (lk_u16)(sign | 0x7e00u | ((magnitude >> 13) & 0x1ffu));
        return h;
    }
    if (magnitude >= 0x477ff000u) {  // rounds to 65520 or more: infinity
        h.bits = (lk_u16)(sign | 0x7c00u);
        return h;
    }
    if (magnitude < 0x38800000u) {  // below 2^-14: a subnormal half, fraction·2^-24 rounded to nearest even
        const lk_u32 shift = 126u - (magnitude >> 23);  // fp32 exponent e: value = m·2^(e-150), half unit 2^-24
        if (shift > 24u) {
            h.bits = (lk_u16)sign;
            return h;
        }
        const lk_u32 mantissa = (magnitude & 0x7fffffu) | 0x800000u;
        const lk_u32 kept = mantissa >> shift, rest = mantissa & ((1u << shift) - 1u), half = 1u << (shift - 1u);
        h.bits = (lk_u16)(sign | (kept + (rest > half || (rest == half && (kept & 1u)))));
        return h;
    }
    const lk_u32 rounded = magnitude + 0xfffu + ((magnitude >> 13) & 1u);  // nearest even at bit 13
    h.bits = (lk_u16)(sign | ((rounded - 0x38000000u) >> 13));
    return h;
}

// Two 16-bit elements in one 32-bit register, the first in the low half: the fragment word of
// mma and ldmatrix.
LK_HD lk_u32 lk_pack_b16x2(lk_u16 first, lk_u16 second) { return (lk_u32)first | ((lk_u32)second << 16); }

// std::is_same without <type_traits> (NVRTC ships no standard headers).
template <class A, class B>
struct lk_same_type {
    static constexpr bool value = false;
};
template <class A>
struct lk_same_type<A, A> {
    static constexpr bool value = true;
};

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

// The first index and the stride of a grid-stride loop, in 64 bits: the grid is capped (a few
// blocks per SM), the element count is not, so a 32-bit index would wrap past 2^31 - 1.
LK_DEVICE lk_i64 lk_grid_first() { return (lk_i64)blockIdx.x * blockDim.x + threadIdx.x; }
LK_DEVICE lk_i64 lk_grid_stride() { return (lk_i64)gridDim.x * blockDim.x; }

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

// ---- warp-level matrix primitives: tensor cores and asynchronous copies ---------------------------
// The only inline PTX in kernels/ (DESIGN.md): each wrapper is the PTX instruction under NVRTC and
// nvcc, and under the emulator the same instruction computed from the PTX ISA's fragment layouts
// (native/simt/warp_matrix.cpp; cp.async in block.cpp). Fragments are 32-bit words holding two
// 16-bit elements, the first in the low half (lk_pack_b16x2). Architecture guards:
//   * mma.sync m16n8k16 with bf16 or f16 inputs and cp.async need sm_80; ldmatrix needs sm_75.
//     Compiled for an older GPU, mma and ldmatrix trap (the launchers pick the tensor-core kernels
//     only on sm_80 and newer: GpuLaunch.TensorCores) and cp.async is a plain synchronous copy.
//   * cp.async's L2::128B prefetch hint needs PTX ISA 7.4 (CUDA 11.4): LK_CP_ASYNC_L2_PREFETCH is 1
//     from that version on (a build may define it to 0); older NVRTC (11.2, 11.3) gets the plain form.
#if defined(LK_MODE_CUDA) && defined(__CUDA_ARCH__)
#define LK_SM80_PTX (__CUDA_ARCH__ >= 800)
#define LK_SM75_PTX (__CUDA_ARCH__ >= 750)
#else
#define LK_SM80_PTX 0
#define LK_SM75_PTX 0
#endif
#if !defined(LK_CP_ASYNC_L2_PREFETCH)
#if defined(LK_MODE_CUDA) && (__CUDACC_VER_MAJOR__ > 11 || (__CUDACC_VER_MAJOR__ == 11 && __CUDACC_VER_MINOR__ >= 4))
#define LK_CP_ASYNC_L2_PREFETCH 1
#else
#define LK_CP_ASYNC_L2_PREFETCH 0
#endif
#endif

#if defined(LK_MODE_CUDA)
// The .shared state-space address of a generic pointer into shared memory (what ldmatrix and
// cp.async take), without the SDK's __cvta_generic_to_shared declaration.
LK_DEVICE lk_u32 lk_shared_address(const void* p) {
    lk_u32 address;
    asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(address) : "l"(p));
    return address;
}
#endif

// D = A·B + C for one warp: A 16x16 (row), B 16x8 (col), C and D 16x8 fp32; T = lk_bf16 or lk_f16, the
// type of A's and B's elements. a: 4 words, b: 2, c and d: 4 (d may alias c). Every lane of the warp
// must call it together.
template <class T>
LK_DEVICE void lk_mma_m16n8k16(float (&d)[4], const lk_u32 (&a)[4], const lk_u32 (&b)[2], const float (&c)[4]) {
    constexpr bool kBf16 = lk_same_type<T, lk_bf16>::value;
    static_assert(kBf16 || lk_same_type<T, lk_f16>::value, "mma inputs are lk_bf16 or lk_f16");
#if LK_SM80_PTX
    if constexpr (kBf16)
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
            "{%10, %11, %12, %13};\n"
            : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
    else
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
            "{%10, %11, %12, %13};\n"
            : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
#elif defined(LK_MODE_SIMT)
    ::lk_simt::warp_matrix_lane lane{kBf16 ? ::lk_simt::matrix_op::mma_m16n8k16_bf16 : ::lk_simt::matrix_op::mma_m16n8k16_f16,
                                     0, false, a, b, c, d, nullptr, nullptr};
    ::lk_simt::warp_matrix(&lane);
#else
    (void)d, (void)a, (void)b, (void)c;
    __trap();
#endif
}

// ldmatrix.sync.aligned.m8n8.x{kCount}{.trans}.shared.b16: lanes 8j .. 8j+7 give the shared-memory
// addresses of rows 0..7 (16 bytes each, 16-byte aligned) of matrix j; word j of lane l gets row
// l/4, columns 2(l%4), 2(l%4)+1 of matrix j (with kTranspose, of its transpose). All 32 lanes call it.
template <int kCount, bool kTranspose>
LK_DEVICE void lk_ldmatrix(lk_u32 (&words)[kCount], const void* row) {
    static_assert(kCount == 1 || kCount == 2 || kCount == 4, "ldmatrix loads 1, 2 or 4 matrices");
#if LK_SM75_PTX
    const lk_u32 address = lk_shared_address(row);
    if constexpr (kCount == 1 && !kTranspose)
        asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(words[0]) : "r"(address) : "memory");
    else if constexpr (kCount == 1)
        asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n" : "=r"(words[0]) : "r"(address) : "memory");
    else if constexpr (kCount == 2 && !kTranspose)
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
                     : "=r"(words[0]), "=r"(words[1]) : "r"(address) : "memory");
    else if constexpr (kCount == 2)
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
                     : "=r"(words[0]), "=r"(words[1]) : "r"(address) : "memory");
    else if constexpr (!kTranspose)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(words[0]), "=r"(words[1]), "=r"(words[2]), "=r"(words[3]) : "r"(address) : "memory");
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(words[0]), "=r"(words[1]), "=r"(words[2]), "=r"(words[3]) : "r"(address) : "memory");
#elif defined(LK_MODE_SIMT)
    ::lk_simt::warp_matrix_lane lane{::lk_simt::matrix_op::ldmatrix_m8n8_b16, kCount, kTranspose, nullptr, nullptr,
                                     nullptr, nullptr, row, words};
    ::lk_simt::warp_matrix(&lane);
#else
    (void)words, (void)row;
    __trap();
#endif
}

// cp.async of 16 bytes from global to shared memory (both 16-byte aligned); bytes at or past
// src_bytes (0..16) are zero-filled, so a tile's out-of-range rows cost no branch. kCacheAll: .ca
// (cache in L1 too), else .cg (L2 only: streamed tiles). Completes at lk_cp_async_wait.
template <bool kCacheAll>
LK_DEVICE void lk_cp_async_16(void* shared, const void* global, int src_bytes) {
#if LK_SM80_PTX
    const lk_u32 address = lk_shared_address(shared);
#if LK_CP_ASYNC_L2_PREFETCH
    if constexpr (kCacheAll)
        asm volatile("cp.async.ca.shared.global.L2::128B [%0], [%1], 16, %2;\n" ::"r"(address), "l"(global), "r"(src_bytes)
                     : "memory");
    else
        asm volatile("cp.async.cg.shared.global.L2::128B [%0], [%1], 16, %2;\n" ::"r"(address), "l"(global), "r"(src_bytes)
                     : "memory");
#else
    if constexpr (kCacheAll)
        asm volatile("cp.async.ca.shared.global [%0], [%1], 16, %2;\n" ::"r"(address), "l"(global), "r"(src_bytes) : "memory");
    else
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(address), "l"(global), "r"(src_bytes) : "memory");
#endif
#elif defined(LK_MODE_SIMT)
    ::lk_simt::cp_async(shared, global, (unsigned)src_bytes);
#else
    // Before sm_80: the same bytes, copied now.
    const unsigned char* from = static_cast<const unsigned char*>(global);
    unsigned char* to = static_cast<unsigned char*>(shared);
    for (int i = 0; i < 16; ++i) to[i] = i < src_bytes ? from[i] : (unsigned char)0;
#endif
}

// cp.async.commit_group: the copies issued since the last commit become one group.
LK_DEVICE void lk_cp_async_commit() {
#if LK_SM80_PTX
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#elif defined(LK_MODE_SIMT)
    ::lk_simt::cp_async_commit();
#endif
}

// cp.async.wait_group kPending: waits until at most the newest kPending committed groups are in flight.
template <int kPending>
LK_DEVICE void lk_cp_async_wait() {
#if LK_SM80_PTX
    asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
#elif defined(LK_MODE_SIMT)
    ::lk_simt::cp_async_wait(kPending);
#endif
}
#endif
