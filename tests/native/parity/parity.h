// parity.h: what the emulator parity tests share: launching a kernel by name the way
// cuLaunchKernel does, the launch geometry of the C# launchers (bindings/LoraKernels/Backends/Gpu),
// fp32/bf16 test buffers, and element-wise comparison against the CPU kernels with tolerances
// written as formulas.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "launch_geometry.cuh"
#include "lora_kernels.h"

namespace parity {

// ---- launching -----------------------------------------------------------------------------------
struct Grid {
    uint32_t x, y;
    uint32_t z = 1;
};

// Launches `kernel` through lk_simt_launch with args[i] pointing at parameter i's value, as
// cuLaunchKernel reads them. Each argument must already have the kernel parameter's exact type.
template <class... Args>
::testing::AssertionResult Launch(const char* kernel, Grid grid, uint32_t block, uint32_t shared_bytes, Args... args) {
    void* pointers[] = {static_cast<void*>(&args)...};
    const lk_status status = lk_simt_launch(kernel, grid.x, grid.y, grid.z, block, 1, 1, shared_bytes, pointers);
    if (status == LK_OK) return ::testing::AssertionSuccess();
    char message[2048];
    lk_simt_last_error(message, sizeof message);
    return ::testing::AssertionFailure() << kernel << " failed: " << lk_status_name(status) << ": " << message;
}

// ---- the C# launchers' geometry (Backends/Gpu), from the constants in kernels/launch_geometry.cuh ---
using ::kDecodeChunk;
using ::kDecodeThreads;
using ::kDecodeXAlign;
using ::kElementwiseThreads;
using ::kTileThreads;
constexpr int kTile = kTileM;
static_assert(kTileM == kTileN, "square tiles: one tile size for rows and columns");
constexpr int kDecodeMaxTokens = kDecodeMaxM;
constexpr int kDecodeRowsPerPass = kDecodeWarps * kDecodeRowsPerWarp;
constexpr int kElementwiseBlocksPerMultiprocessor = kElementwiseBlocksPerSm;

inline int64_t CeilDiv(int64_t a, int64_t b) {
    return (a + b - 1) / b;
}

// GpuBackend.LoraTileGrid: X over 64-row tiles of the output, Y over 64-column tiles.
inline Grid TileGrid(int rows, int columns) {
    return {(uint32_t)CeilDiv(rows, kTile), (uint32_t)CeilDiv(columns, kTile)};
}

// GpuLaunch.MmaTileGrid: the tensor-core engine's 128 x 128 tiles (tile_mma.cuh), block kMmaThreads,
// kMmaSharedBytes of dynamic shared memory.
using ::kMmaSharedBytes;
using ::kMmaThreads;
inline Grid MmaTileGrid(int rows, int columns) {
    return {(uint32_t)CeilDiv(rows, kMmaTileM), (uint32_t)CeilDiv(columns, kMmaTileN)};
}

struct DecodeGeometry {
    bool fits;
    uint32_t blocks, shared_bytes;
};

// GpuBackend.LoraDecodeGeometry.
inline DecodeGeometry DecodeGeometryFor(int M, int in, int out, int r, int multiprocessors,
                                        int max_dynamic_shared_bytes) {
    if (M < 1 || M > kDecodeMaxTokens || out < 1) return {false, 0, 0};
    const int64_t x_stride = CeilDiv(std::min(in, kDecodeChunk), kDecodeXAlign) * kDecodeXAlign;
    const int64_t fixed_words = (int64_t)M * (x_stride + CeilDiv(x_stride, 32) + r);
    const int64_t available_words = max_dynamic_shared_bytes / 4 - fixed_words;
    if (available_words < M) return {false, 0, 0};
    const int64_t max_rows_per_block = available_words / M;
    int64_t blocks = std::min<int64_t>(std::max(multiprocessors, 1), CeilDiv(out, kDecodeRowsPerPass));
    blocks = std::max(blocks, CeilDiv(out, max_rows_per_block));
    const int64_t rows_per_block = CeilDiv(out, blocks);
    return {true, (uint32_t)blocks, (uint32_t)(4 * (fixed_words + (int64_t)M * rows_per_block))};
}

// GpuBackend.ElementwiseGrid.
inline Grid ElementwiseGrid(int64_t n, int multiprocessors) {
    const int64_t blocks = std::min<int64_t>(
        CeilDiv(n, kElementwiseThreads), (int64_t)std::max(multiprocessors, 1) * kElementwiseBlocksPerMultiprocessor);
    return {(uint32_t)std::max<int64_t>(blocks, 1), 1};
}

// GpuLaunch.RowGrid: one block per row at a time, capped like the element-wise grid.
inline Grid RowGrid(int64_t rows, int multiprocessors) {
    const int64_t blocks = std::min<int64_t>(rows, (int64_t)std::max(multiprocessors, 1) * kElementwiseBlocksPerMultiprocessor);
    return {(uint32_t)std::max<int64_t>(blocks, 1), 1};
}

// ---- buffers --------------------------------------------------------------------------------------
enum class DType { F32, BF16 };
inline const char* Suffix(DType dtype) {
    return dtype == DType::F32 ? "f32" : "bf16";
}
inline std::string KernelName(const char* family_op, DType dtype) {
    return std::string(family_op) + "_" + Suffix(dtype);
}

// A tensor as a kernel sees it: fp32 or bf16 storage in host memory (the emulator's device memory).
class Buffer {
public:
    Buffer() = default;
    // Stores `values` in `dtype`; a bf16 buffer holds them rounded (values() returns the rounded ones).
    Buffer(DType dtype, const std::vector<float>& values) : dtype_(dtype) {
        if (dtype == DType::F32) {
            f32_ = values;
        } else {
            bf16_.resize(values.size());
            lk_cpu_f32_to_bf16((int64_t)values.size(), values.data(), bf16_.data());
        }
    }
    // n elements of all-ones bits: NaN in fp32 and bf16, so an element the kernel never writes fails.
    static Buffer Poisoned(DType dtype, size_t n) {
        Buffer b;
        b.dtype_ = dtype;
        if (dtype == DType::F32) {
            b.f32_.resize(n);
            std::memset(b.f32_.data(), 0xff, n * sizeof(float));
        } else {
            b.bf16_.assign(n, 0xffffu);
        }
        return b;
    }

    void* data() { return dtype_ == DType::F32 ? (void*)f32_.data() : (void*)bf16_.data(); }
    size_t size() const { return dtype_ == DType::F32 ? f32_.size() : bf16_.size(); }
    DType dtype() const { return dtype_; }

    std::vector<float> values() const {
        if (dtype_ == DType::F32) return f32_;
        std::vector<float> v(bf16_.size());
        lk_cpu_bf16_to_f32((int64_t)bf16_.size(), bf16_.data(), v.data());
        return v;
    }

private:
    DType dtype_ = DType::F32;
    std::vector<float> f32_;
    std::vector<uint16_t> bf16_;
};

// n values with magnitudes in [0.25, 1] and random signs: never zero, so no product vanishes.
inline std::vector<float> RandomValues(size_t n, uint32_t seed) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> magnitude(0.25f, 1.0f);
    std::bernoulli_distribution negative(0.5);
    std::vector<float> v(n);
    for (float& e : v) e = negative(rng) ? -magnitude(rng) : magnitude(rng);
    return v;
}

inline std::vector<float> Abs(std::vector<float> v) {
    for (float& e : v) e = std::fabs(e);
    return v;
}

// ---- comparison -----------------------------------------------------------------------------------
// Two fp32 implementations of a sum of K products each err by at most about K·2^-24·Σ|terms|
// (Higham's γ_K bound), so they differ by at most
//     tol = atol + 2·K·2^-24·bound + out_rounding·(|want| + 2·K·2^-24·bound)
// where bound[i] = Σ|terms| of element i (the same computation on absolute values) and
// out_rounding = 2^-8 when the kernel stores bf16 (half an ulp of bf16's 8-bit significand),
// else 0. A wrong index or a missing term errs by O(|terms|), far above K·2^-24. A kernel that
// rounds one factor of every term to bf16 first (the tensor-core 4-bit path's deq(W): relative
// 2^-9 each) adds term_rounding·bound, term_rounding = 2^-9.
constexpr double kAtol = 1e-6;
constexpr double kF32Unit = 1.0 / 16777216.0;  // 2^-24
constexpr double kBf16Rounding = 1.0 / 256.0;  // 2^-8
constexpr double kBf16TermRounding = 1.0 / 512.0;  // 2^-9: a factor rounded to nearest bf16

inline ::testing::AssertionResult Near(const std::string& what, const std::vector<float>& got,
                                       const std::vector<float>& want, const std::vector<float>& bound, double K,
                                       double out_rounding, double term_rounding = 0.0) {
    if (got.size() != want.size() || want.size() != bound.size())
        return ::testing::AssertionFailure()
               << what << ": sizes differ (" << got.size() << " vs " << want.size() << ")";
    double max_want = 0.0;
    int failures = 0;
    std::ostringstream report;
    for (size_t i = 0; i < want.size(); ++i) {
        const double accumulation = (2.0 * K * kF32Unit + term_rounding) * bound[i];
        const double tol = kAtol + accumulation + out_rounding * (std::fabs((double)want[i]) + accumulation);
        const double err = std::fabs((double)got[i] - (double)want[i]);
        max_want = std::max(max_want, std::fabs((double)want[i]));
        if (!(err <= tol)) {  // NaN fails too
            if (failures < 8)
                report << "\n  [" << i << "] got " << got[i] << " want " << want[i] << " err " << err << " tol " << tol;
            ++failures;
        }
    }
    if (failures > 0)
        return ::testing::AssertionFailure() << what << ": " << failures << " of " << want.size()
                                             << " elements outside tolerance (K = " << K << ")" << report.str();
    if (!(max_want > 1e-3))
        return ::testing::AssertionFailure()
               << what << ": the reference is all (near) zero, the check would be vacuous";
    return ::testing::AssertionSuccess();
}

// Near's tolerance plus extra·extra_bound[i]: for a kernel sequence that rounds an intermediate to
// bf16 where the CPU keeps fp32 (extra = 2^-8 per such rounding, extra_bound = Σ|terms| it touches).
inline ::testing::AssertionResult NearWithExtra(const std::string& what, const std::vector<float>& got,
                                                const std::vector<float>& want, const std::vector<float>& bound, double K,
                                                double out_rounding, const std::vector<float>& extra_bound, double extra) {
    std::vector<float> widened = bound;  // Near's accumulation term is 2·K·2^-24·bound
    for (size_t i = 0; i < widened.size(); ++i) widened[i] += (float)(extra * extra_bound[i] / (2.0 * K * kF32Unit));
    return Near(what, got, want, widened, K, out_rounding);
}

}  // namespace parity
