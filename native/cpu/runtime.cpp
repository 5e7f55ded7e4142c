// runtime.cpp: library-wide state: the ISA chosen at load, the thread count, the last error.
#include <omp.h>

#include <atomic>
#include <cstdlib>
#include <cstring>

#include "check.h"
#include "isa.h"

namespace lk::cpu {
namespace {

#if defined(LK_CPU_X86)
int isa_rank(const IsaKernels& kernels) {
    return &kernels == &avx512_kernels() ? 2 : &kernels == &avx2_kernels() ? 1 : 0;
}
#endif

const IsaKernels& select_kernels() {
#if !defined(LK_CPU_X86)
    return portable_kernels();
#else
    __builtin_cpu_init();
    const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    const IsaKernels* best = has_avx2 && __builtin_cpu_supports("avx512f") ? &avx512_kernels()
                             : has_avx2                                    ? &avx2_kernels()
                                                                           : &portable_kernels();
    // The override may only lower the choice, so it can never select unsupported instructions.
    if (const char* requested = std::getenv("LORAKERNELS_CPU_ISA")) {
        for (const IsaKernels* candidate :
             {&avx512_kernels(), &avx2_kernels(), &portable_kernels()})
            if (std::strcmp(requested, candidate->name) == 0 &&
                isa_rank(*candidate) < isa_rank(*best))
                best = candidate;
    }
    return *best;
#endif
}

// Chosen once, when the library is loaded.
const IsaKernels& g_kernels = select_kernels();

int default_thread_count() {
    int n = omp_get_num_procs();
    return n > 0 ? n : 1;
}

std::atomic<int> g_thread_count{default_thread_count()};

}  // namespace

const IsaKernels& active_kernels() { return g_kernels; }

int thread_count() { return g_thread_count.load(std::memory_order_relaxed); }

}  // namespace lk::cpu

LK_API int64_t lk_cpu_last_error(char* buffer, int64_t capacity) {
    return lk::copy_last_error(buffer, capacity);
}

LK_API int32_t lk_cpu_isa(void) { return lk::cpu::active_kernels().isa_bits; }

LK_API lk_status lk_cpu_set_num_threads(int32_t n) {
    if (n > LK_CPU_MAX_THREADS)
        return lk::fail(LK_ERR_INVALID_ARGUMENT, "lk_cpu_set_num_threads: %d threads requested; at most %d", n,
                        LK_CPU_MAX_THREADS);
    lk::cpu::g_thread_count.store(n > 0 ? n : lk::cpu::default_thread_count(),
                                  std::memory_order_relaxed);
    return LK_OK;
}

LK_API int32_t lk_cpu_get_num_threads(void) { return lk::cpu::thread_count(); }
