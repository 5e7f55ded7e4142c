// launch_geometry.cuh: the shared engines' launch constants, the one place they are written.
//
// The tile engine (tile_engine.cuh) and the decode engine (decode_engine.cuh) read them, and so do
// the emulator parity tests (tests/native/parity/parity.h includes this file, in host mode). The
// C# launchers (Backends/Gpu) cannot include C++; KernelConstantsTests reads every `constexpr int`
// of kernels/ and compares it with the launchers' constants, so a change here that the launchers
// miss fails the tests.
#pragma once

#include "common.cuh"

// ---- tile engine: one 64 x 64 output tile per 256-thread block ------------------------------------
constexpr int kTileM = 64;         // output rows per block
constexpr int kTileN = 64;         // output columns per block
constexpr int kTileK = 16;         // reduction depth staged per shared-memory pass
constexpr int kTileThreads = 256;  // 16 x 16 threads, each owning a 4 x 4 sub-tile

// ---- tensor-core tile engine (tile_mma.cuh): one 128 x 128 output tile per 256-thread block -------
constexpr int kMmaTileM = 128;     // output rows per block
constexpr int kMmaTileN = 128;     // output columns per block
constexpr int kMmaTileK = 32;      // reduction depth of one shared-memory slice
constexpr int kMmaThreads = 256;   // 8 warps, each 64 x 32 of the tile
constexpr int kMmaStages = 3;      // slices in the cp.async ring: two in flight while one is multiplied
constexpr int kMmaSharedBytes = kMmaStages * 2 * kMmaTileM * kMmaTileK * 2;  // the ring (dynamic shared), 48 KiB

// ---- decode engine (M <= kDecodeMaxM tokens): one 256-thread block per SM -------------------------
constexpr int kDecodeThreads = 256;
constexpr int kDecodeWarps = kDecodeThreads / 32;
constexpr int kDecodeMaxM = 16;
constexpr int kDecodeChunk = 2048;     // x columns staged per pass: 16 x 2048 fp32 = 128 KiB
constexpr int kDecodeRowsPerWarp = 2;  // weight rows a warp streams together (x reuse vs registers)
constexpr int kDecodeXAlign = 8;       // staged x row stride multiple: 32 bytes, any vector width
// 16-byte vectors of each streamed row a lane loads before it consumes any. Little's law: the bytes
// in flight an SM needs are bandwidth x latency / SMs, about 3.35 TB/s x 700 ns / 132 = 18 KiB on an
// H100 and 4.8 TB/s x 700 ns / 132 = 26 KiB on an H200; 256 threads x 2 rows x 4 x 16 B = 32 KiB covers both.
constexpr int kDecodeVectorsInFlight = 4;

// ---- element-wise geometry: grid-stride loops, the grid capped at a few blocks per SM ------------
// (kernels/elementwise.cu, optim.cu, nf4.cu's dequantize and the families' element-wise kernels)
constexpr int kElementwiseThreads = 256;
constexpr int kElementwiseBlocksPerSm = 8;  // enough resident warps to saturate memory; the loop covers the rest

// ---- multi-tensor optimizers (optim.cu): one block per run of a segment --------------------------
constexpr int kOptimThreads = 256;    // threads per block, every lk_optim_* entry point
constexpr int kOptimChunk = 4096;     // elements per block of the fp32 kernels (16 per thread)
constexpr int kOptim8bitBlock = 256;  // bitsandbytes' 8-bit state block: one grid block each
