// block.h: runs one thread block of a kernel on the calling OS thread.
//
// Each CUDA thread is a fiber (fiber.h). Fibers are cooperative: one runs until it waits at
// __syncthreads or a warp collective or exits, then hands the OS thread directly to the next
// fiber of a FIFO ready queue (no detour through a scheduler, so a switch costs one context
// switch). The last thread to arrive at a barrier, or the last lane of a collective's mask,
// completes it, queues the others and carries on. Because nothing runs unless it is queued, "no
// fiber is ready yet some have not exited" is exactly a deadlock, which is reported instead of
// hanging; the common misuses (an exited thread that others wait for, a collective naming a
// missing lane, lanes meeting at different collectives) are detected at the moment they happen
// so the message names the threads involved.
#pragma once

#include <cstdarg>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "fiber.h"
#include "lora_kernels.h"
#include "simt_device.h"

namespace lk_simt {

// What one lk_simt_launch runs; shared read-only by every worker.
struct kernel_call {
    const char* name;
    kernel_trampoline trampoline;
    void** args;
    uint3 grid;
    uint3 block;
    std::uint32_t dynamic_shared_bytes;
};

enum class fiber_state : std::uint8_t { ready, running, at_barrier, at_collective, exited };

// A cp.async issued and not yet performed; `group` is the issuing thread's count of commits at the
// time (so it belongs to the next group that thread commits).
struct async_copy {
    void* destination;
    const void* source;
    std::uint32_t src_bytes;
    std::uint32_t group;
};
// The emulator's bound on a thread's copies in flight (a multi-stage pipeline keeps a few per stage).
constexpr std::uint32_t max_pending_copies = 64;

class block_runner;

struct fiber {
    thread_coords coords;  // first member: current_coords() hands out its address
    execution_context context;
    block_runner* runner;
    std::uint32_t linear_id;  // x + y*bx + z*bx*by; warp = linear_id / 32, lane = linear_id % 32
    fiber_state state;
    std::uint32_t pending_copies;    // this thread's entries in block_runner's copy table
    std::uint32_t committed_groups;  // cp.async.commit_group calls so far
};

// The lanes of one warp and the collective each waiting lane is at.
struct warp_state {
    std::uint32_t lanes_mask;    // lanes that exist (a block's last warp may be partial)
    std::uint32_t waiting_mask;  // lanes waiting at a warp collective
    std::uint32_t barrier_mask;  // lanes waiting at __syncthreads
    std::uint32_t exited_mask;
    // True while every waiting lane waits at the same (kind, mask) — the common case, in which an
    // arriving lane needs no per-lane scan.
    bool uniform;
    collective uniform_kind;
    std::uint32_t uniform_mask;
    collective kind[32];
    std::uint32_t mask[32];
    unsigned long long value[32];
    int operand[32];
    int width[32];
    unsigned long long result[32];
};

class block_runner {
public:
    block_runner();
    ~block_runner();
    block_runner(const block_runner&) = delete;
    block_runner& operator=(const block_runner&) = delete;

    // Runs block `block_linear` (x fastest) of `call` to completion. Returns LK_OK, or the fault's
    // status with message() naming the block, thread and problem. May throw std::bad_alloc while
    // setting up (never while fibers run).
    lk_status run(const kernel_call& call, std::uint64_t block_linear);
    const char* message() const { return message_; }

    // The built-ins, called on the running fiber `self`.
    void sync_threads(fiber& self);
    unsigned long long warp_collective(fiber& self, collective kind, std::uint32_t mask,
                                       unsigned long long value, int operand, int width);
    void* static_shared(fiber& self, const void* key, std::size_t bytes, std::size_t alignment);
    void* dynamic_shared() const { return dynamic_shared_; }
    // mma.sync / ldmatrix: a warp collective whose last lane computes every lane's result.
    void warp_matrix(fiber& self, warp_matrix_lane* lane);
    void cp_async(fiber& self, void* destination, const void* source, std::uint32_t src_bytes);
    void cp_async_commit(fiber& self);
    void cp_async_wait(fiber& self, int newest_pending);
    [[noreturn]] void fault(fiber& self, lk_status status, const char* format, ...)
        __attribute__((format(printf, 4, 5)));

    // Body of every fiber: the kernel, then the thread's exit.
    [[noreturn]] void run_thread(fiber& self);

private:
    struct shared_array {
        const void* key;
        void* storage;
        std::size_t alignment;
        std::size_t bytes;
    };

    bool call_kernel();
    [[noreturn]] void finish_thread(fiber& self);
    void suspend(fiber& self);
    void make_ready(fiber& f);
    fiber& pop_ready();
    void complete_collective(warp_state& w, collective kind, std::uint32_t mask, std::uint32_t self_lane,
                             std::uint32_t warp_index);
    [[noreturn]] void report_deadlock(fiber& self);
    // Records the fault (naming `blamed`, or only the block when null) and leaves `running`'s
    // fiber for the worker's own stack; no fiber of the block runs again.
    [[noreturn]] void fail_block(fiber& running, const fiber* blamed, lk_status status, const char* format,
                                 va_list args);
    [[noreturn]] void fail_blockf(fiber& running, const fiber* blamed, lk_status status, const char* format, ...)
        __attribute__((format(printf, 5, 6)));
    void release_shared_memory();
    // True when [address, address + bytes) lies inside one of the block's shared arrays or its dynamic shared memory.
    bool in_shared(const void* address, std::size_t bytes) const;
    // Computes a completed warp_matrix collective (warp_matrix.cpp); `self` is the completing lane.
    void complete_warp_matrix(warp_state& w, std::uint32_t warp_index, fiber& self);

    const kernel_call* call_ = nullptr;
    uint3 block_idx_{};
    std::uint32_t thread_count_ = 0;
    std::vector<fiber> fibers_;
    std::vector<warp_state> warps_;
    std::vector<std::uint32_t> ready_;  // ring buffer of fiber indices
    std::uint32_t ready_head_ = 0;
    std::uint32_t ready_count_ = 0;
    std::uint32_t barrier_arrived_ = 0;
    std::uint32_t exited_count_ = 0;
    const fiber* first_exited_ = nullptr;
    std::vector<shared_array> shared_arrays_;
    std::size_t static_shared_bytes_ = 0;
    void* dynamic_shared_ = nullptr;
    std::vector<async_copy> copies_;  // max_pending_copies entries per thread
    lk_status status_ = LK_OK;
    char message_[896] = {};
    char exception_text_[256] = {};
    stack_pool stacks_;
    execution_context scheduler_;  // the worker thread's own stack
};

// The calling OS thread's block runner (one per worker thread, reused for every block it runs).
block_runner& this_thread_runner();

// True when called from kernel code (on a fiber), where a nested launch would deadlock.
bool inside_kernel();

}  // namespace lk_simt
