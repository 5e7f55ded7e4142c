// fiber.cpp: the context switch (x86-64 assembly, ucontext elsewhere), fiber stacks, and the
// AddressSanitizer fiber annotations. See fiber.h for why it is built this way.
#include "fiber.h"

#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>

#if defined(LK_SIMT_ASAN)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

namespace lk_simt {
namespace {

std::size_t page_bytes() {
    static const std::size_t bytes = (std::size_t)sysconf(_SC_PAGESIZE);
    return bytes;
}

}  // namespace

stack_pool::~stack_pool() {
    for (fiber_stack& stack : stacks_) munmap(stack.lowest - page_bytes(), fiber_stack_bytes + page_bytes());
}

bool stack_pool::reserve(std::size_t count) {
    if (stacks_.size() >= count) return true;
    stacks_.reserve(count);
    const std::size_t guard = page_bytes();
    while (stacks_.size() < count) {
        // MAP_NORESERVE: a fiber touches only the few pages its frames use.
        void* mapping = mmap(nullptr, fiber_stack_bytes + guard, PROT_READ | PROT_WRITE,
                             MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
        if (mapping == MAP_FAILED) return false;
        // The lowest page stays inaccessible, so a fiber that overflows its stack faults at once
        // instead of overwriting its neighbour's.
        if (mprotect(mapping, guard, PROT_NONE) != 0) {
            munmap(mapping, fiber_stack_bytes + guard);
            return false;
        }
        fiber_stack stack;
        stack.lowest = static_cast<unsigned char*>(mapping) + guard;
        stacks_.push_back(stack);
    }
    return true;
}

#if defined(LK_SIMT_ASAN)
namespace {
inline void announce_switch(execution_context& from, execution_context& to) {
    __sanitizer_start_switch_fiber(&from.fake_stack, to.stack_bottom, to.stack_size);
}
inline void announce_final_switch(execution_context& to) {
    __sanitizer_start_switch_fiber(nullptr, to.stack_bottom, to.stack_size);  // nullptr: this stack dies
}
inline void switch_arrived(execution_context& self) {
    __sanitizer_finish_switch_fiber(self.fake_stack, nullptr, nullptr);
}
}  // namespace

void fiber_started() { __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr); }

void init_thread_context(execution_context& context) {
    pthread_attr_t attributes;
    void* bottom = nullptr;
    std::size_t size = 0;
    if (pthread_getattr_np(pthread_self(), &attributes) == 0) {
        pthread_attr_getstack(&attributes, &bottom, &size);
        pthread_attr_destroy(&attributes);
    }
    context.stack_bottom = bottom;
    context.stack_size = size;
}
#else
namespace {
inline void announce_switch(execution_context&, execution_context&) {}
inline void announce_final_switch(execution_context&) {}
inline void switch_arrived(execution_context&) {}
}  // namespace

void fiber_started() {}

void init_thread_context(execution_context&) {}
#endif

namespace {
void prepare_stack_for_reuse(fiber_stack& stack) {
#if defined(LK_SIMT_ASAN)
    if (stack.abandoned) __asan_unpoison_memory_region(stack.lowest, fiber_stack_bytes);
#endif
    stack.abandoned = false;
}
}  // namespace

#if !defined(LK_SIMT_USE_UCONTEXT)

// lk_simt_switch_stack(void** save_sp, void* load_sp): pushes the callee-saved registers and the
// floating-point control words on the current stack, stores the stack pointer in *save_sp, loads
// load_sp and pops the same frame from it. lk_simt_start_fiber is where a new fiber's first
// switch "returns" to: it calls entry(argument) with entry in r13 and argument in r12, and marks
// itself the outermost frame for unwinders (.cfi_undefined rip).
extern "C" void lk_simt_switch_stack(void** save_sp, void* load_sp);
extern "C" void lk_simt_start_fiber();

asm(R"(
    .text
    .p2align 4
    .globl lk_simt_switch_stack
    .hidden lk_simt_switch_stack
    .type lk_simt_switch_stack, @function
lk_simt_switch_stack:
    .cfi_startproc
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .cfi_endproc
    .size lk_simt_switch_stack, .-lk_simt_switch_stack

    .p2align 4
    .globl lk_simt_start_fiber
    .hidden lk_simt_start_fiber
    .type lk_simt_start_fiber, @function
lk_simt_start_fiber:
    .cfi_startproc
    .cfi_undefined rip
    movq %r12, %rdi
    callq *%r13
    ud2
    .cfi_endproc
    .size lk_simt_start_fiber, .-lk_simt_start_fiber
)");

void prepare_context(execution_context& context, fiber_stack& stack, fiber_entry entry, void* argument) {
    prepare_stack_for_reuse(stack);
    // The frame lk_simt_switch_stack pops: control words, r15, r14, r13, r12, rbx, rbp, return
    // address. After the `ret` the stack pointer is 16-byte aligned, as the call in
    // lk_simt_start_fiber requires.
    std::uintptr_t top = ((std::uintptr_t)(stack.lowest + fiber_stack_bytes)) & ~(std::uintptr_t)15;
    std::uint64_t* frame = reinterpret_cast<std::uint64_t*>(top - 80);
    std::uint32_t mxcsr;
    std::uint16_t x87_control;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(x87_control));
    frame[0] = (std::uint64_t)mxcsr | ((std::uint64_t)x87_control << 32);
    frame[1] = 0;                                             // r15
    frame[2] = 0;                                             // r14
    frame[3] = (std::uint64_t)(std::uintptr_t)entry;          // r13
    frame[4] = (std::uint64_t)(std::uintptr_t)argument;       // r12
    frame[5] = 0;                                             // rbx
    frame[6] = 0;                                             // rbp: ends frame-pointer walks
    frame[7] = (std::uint64_t)(std::uintptr_t)&lk_simt_start_fiber;
    frame[8] = 0;
    frame[9] = 0;
    context.stack_pointer = frame;
#if defined(LK_SIMT_ASAN)
    context.stack_bottom = stack.lowest;
    context.stack_size = fiber_stack_bytes;
    context.fake_stack = nullptr;
#endif
}

void switch_context(execution_context& from, execution_context& to) {
    announce_switch(from, to);
    lk_simt_switch_stack(&from.stack_pointer, to.stack_pointer);
    switch_arrived(from);
}

void switch_context_final(execution_context& from, execution_context& to) {
    announce_final_switch(to);
    lk_simt_switch_stack(&from.stack_pointer, to.stack_pointer);
    __builtin_unreachable();
}

#else  // ucontext

namespace {
// makecontext passes only int arguments, so the entry and its argument travel as 32-bit halves.
void ucontext_start(unsigned entry_high, unsigned entry_low, unsigned argument_high, unsigned argument_low) {
    auto join = [](unsigned high, unsigned low) { return ((std::uintptr_t)high << 32) | low; };
    fiber_entry entry = reinterpret_cast<fiber_entry>(join(entry_high, entry_low));
    entry(reinterpret_cast<void*>(join(argument_high, argument_low)));
    __builtin_unreachable();  // fiber entries end with switch_context_final
}
}  // namespace

void prepare_context(execution_context& context, fiber_stack& stack, fiber_entry entry, void* argument) {
    prepare_stack_for_reuse(stack);
    getcontext(&context.ucontext);
    context.ucontext.uc_stack.ss_sp = stack.lowest;
    context.ucontext.uc_stack.ss_size = fiber_stack_bytes;
    context.ucontext.uc_link = nullptr;
    std::uintptr_t e = (std::uintptr_t)entry;
    std::uintptr_t a = (std::uintptr_t)argument;
    makecontext(&context.ucontext, reinterpret_cast<void (*)()>(&ucontext_start), 4,
                (unsigned)(e >> 32), (unsigned)e, (unsigned)(a >> 32), (unsigned)a);
#if defined(LK_SIMT_ASAN)
    context.stack_bottom = stack.lowest;
    context.stack_size = fiber_stack_bytes;
    context.fake_stack = nullptr;
#endif
}

void switch_context(execution_context& from, execution_context& to) {
    announce_switch(from, to);
    swapcontext(&from.ucontext, &to.ucontext);
    switch_arrived(from);
}

void switch_context_final(execution_context& from, execution_context& to) {
    announce_final_switch(to);
    swapcontext(&from.ucontext, &to.ucontext);
    __builtin_unreachable();
}

#endif

}  // namespace lk_simt
