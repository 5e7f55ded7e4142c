// fiber.h: execution contexts and stacks for the emulator's fibers (one fiber per CUDA thread).
//
// The threads of a block switch at every __syncthreads and warp collective, so a block of 256
// threads with a few barriers makes thousands of switches; swapcontext makes a sigprocmask system
// call on each, so on x86-64 the switch is a dozen instructions of assembly instead (callee-saved
// registers, MXCSR and the x87 control word, then the stack pointer). Other architectures use
// ucontext (as does x86-64 when LK_SIMT_UCONTEXT is defined, to test that path). Stacks are mmap'ed once per worker thread with a guard page below each and reused for
// every block that worker runs. Under AddressSanitizer every switch is announced to ASan (its
// fiber API) and the stacks are larger, because instrumented frames carry redzones.
#pragma once

#include <cstddef>
#include <vector>

#if !defined(__x86_64__) || defined(LK_SIMT_UCONTEXT)
#define LK_SIMT_USE_UCONTEXT 1
#include <ucontext.h>
#endif

#if defined(__SANITIZE_ADDRESS__)
#define LK_SIMT_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define LK_SIMT_ASAN 1
#endif
#endif

namespace lk_simt {

#if defined(LK_SIMT_ASAN)
constexpr std::size_t fiber_stack_bytes = 1024 * 1024;
#else
constexpr std::size_t fiber_stack_bytes = 256 * 1024;
#endif

struct fiber_stack {
    unsigned char* lowest = nullptr;  // usable bytes are [lowest, lowest + fiber_stack_bytes)
    // A fiber abandoned mid-kernel (its block faulted) leaves ASan redzones of live frames
    // poisoned; the next fiber on this stack must clear them first.
    bool abandoned = false;
};

// Fiber stacks of one worker thread, grown on demand and reused across blocks.
class stack_pool {
public:
    stack_pool() = default;
    stack_pool(const stack_pool&) = delete;
    stack_pool& operator=(const stack_pool&) = delete;
    ~stack_pool();

    // Makes at least `count` stacks available; false when the memory cannot be mapped.
    bool reserve(std::size_t count);
    fiber_stack& operator[](std::size_t i) { return stacks_[i]; }

private:
    std::vector<fiber_stack> stacks_;
};

// A suspended flow of control: a fiber, or a worker thread's own stack (the scheduler).
struct execution_context {
#if defined(LK_SIMT_USE_UCONTEXT)
    ucontext_t ucontext;
#else
    void* stack_pointer = nullptr;
#endif
#if defined(LK_SIMT_ASAN)
    void* fake_stack = nullptr;
    const void* stack_bottom = nullptr;
    std::size_t stack_size = 0;
#endif
};

using fiber_entry = void (*)(void* argument);

// Records the calling OS thread's own stack in `context`, which then stands for that thread when
// fibers switch back to it.
void init_thread_context(execution_context& context);

// Makes `context` start entry(argument) on `stack` when first switched to. `entry` must never
// return: a fiber ends by switch_context_final.
void prepare_context(execution_context& context, fiber_stack& stack, fiber_entry entry, void* argument);

// Suspends the caller into `from` and resumes `to`; returns when something switches back to `from`.
void switch_context(execution_context& from, execution_context& to);

// Leaves the calling fiber for good and resumes `to`.
[[noreturn]] void switch_context_final(execution_context& from, execution_context& to);

// The first call of every fiber's entry function (completes ASan's switch bookkeeping).
void fiber_started();

}  // namespace lk_simt
