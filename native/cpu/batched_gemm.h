// batched_gemm.h: strided batched products on the packed GEMM engine (gemm.h), the CPU half of
// kernels/tucker.cu's lk_tucker_batched_matmul. A mode-n product of a tensor viewed as
// [batch, I, inner] is one of these, and so is every per-token or per-image product of the
// Kronecker, Tucker and convolution adapters:
//
//   independent:  C_b = alpha * op(A_b) * op(B_b) + beta * C_b            for b in [0, batch)
//   reduced:      C   = alpha * sum_b op(A_b) * op(B_b) + beta * C
//
// with X_b = X + b * batch_stride (stride 0: one matrix shared by every b), each X_b dense and
// row-major: op(A_b) is [M, K] (stored [K, M] when transposed), op(B_b) is [K, N] (stored [N, K]
// when transposed), C_b is [M, N].
//
// Strategy: a batch of one is one threaded GEMM. Batches whose products are large enough to
// thread run one after another, each GEMM threaded; small ones run on the OpenMP threads side by
// side, one GEMM per batch element on one thread. A reduced batch is summed in a fixed order that
// depends only on the shapes (fixed chunks of kReduceChunk elements, partial sums per chunk added
// in chunk order), so the result is the same for every thread count.
#pragma once

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <new>

#include "isa.h"

namespace lk::cpu {

struct BatchedMatrix {
    const float* data = nullptr;
    int64_t batch_stride = 0;  // elements between consecutive batch elements; 0 = shared
    bool transposed = false;
};

// Batch elements summed into one partial sum when reducing (a constant, so the summation order
// depends on the batch size only).
constexpr int64_t kReduceChunk = 16;

// A product of at least this many FLOP is threaded by gemm() itself (4 MFLOP per thread is the
// engine's own threshold), so products this large run one after another; smaller ones side by side.
constexpr double kThreadedProductFlop = 8.0e6;

// Whether `count` tasks of `task_flop` FLOP each should run side by side on the threads: each is too small for
// gemm() to thread, and together they are worth a fork (a fork and join costs about what kThreadedProductFlop
// takes to compute on one core; below it the tasks run in order on the calling thread).
inline bool side_by_side(double task_flop, int64_t count) {
    return task_flop < kThreadedProductFlop && task_flop * (double)count >= kThreadedProductFlop;
}

// Runs body(i) for i in [0, count): on the library's threads side by side when `parallel`, else
// in order. An exception inside the parallel loop (an allocation) stops the remaining tasks and is
// rethrown as std::bad_alloc after the loop, so none escapes an OpenMP region.
template <class Body>
void run_tasks(int64_t count, bool parallel, const Body& body) {
    const int threads = parallel ? (int)std::min<int64_t>(thread_count(), count) : 1;
    if (threads <= 1) {
        for (int64_t i = 0; i < count; ++i) body(i);
        return;
    }
    std::atomic<bool> failed{false};
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t i = 0; i < count; ++i) {
        if (failed.load(std::memory_order_relaxed)) continue;
        try {
            body(i);
        } catch (...) {
            failed.store(true, std::memory_order_relaxed);
        }
    }
    if (failed.load()) throw std::bad_alloc();
}

// May throw std::bad_alloc (partial sums of a reduction, packing workspace).
void batched_gemm(int64_t batch, int64_t M, int64_t N, int64_t K, const BatchedMatrix& A,
                  const BatchedMatrix& B, float alpha, float beta, float* C, int64_t c_batch_stride,
                  bool reduce);

}  // namespace lk::cpu
