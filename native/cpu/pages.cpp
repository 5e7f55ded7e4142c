// pages.cpp: page hints for paged optimizer state in a shared file mapping (lk_cpu_pages_readahead,
// lk_cpu_pages_release; lora_kernels_optim.h). madvise works on whole pages, so each range is widened
// to the pages it touches. Only Linux offers the calls; elsewhere both are no-ops.
#include <cerrno>
#include <cstring>

#include "check.h"

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>

namespace {

// Applies `advice` to the whole pages [address, address + bytes) touches.
int advise(void* address, int64_t bytes, int advice) {
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    const uintptr_t begin = (uintptr_t)address & ~(page - 1);
    const uintptr_t end = ((uintptr_t)address + (uintptr_t)bytes + page - 1) & ~(page - 1);
    return madvise((void*)begin, end - begin, advice);
}

lk_status check_range(const char* function, void* address, int64_t bytes) {
    lk::cpu::ArgCheck check(function);
    check.nonnegative("bytes", bytes).not_null("address", address, bytes > 0);
    return check.status();
}

}  // namespace

LK_API lk_status lk_cpu_pages_readahead(void* address, int64_t bytes) {
    if (lk_status status = check_range("lk_cpu_pages_readahead", address, bytes); status != LK_OK) return status;
    if (bytes == 0 || advise(address, bytes, MADV_WILLNEED) == 0) return LK_OK;
    return lk::fail(LK_ERR_INTERNAL, "lk_cpu_pages_readahead: madvise of %lld bytes failed: %s", (long long)bytes,
                    std::strerror(errno));
}

LK_API lk_status lk_cpu_pages_release(void* address, int64_t bytes) {
    if (lk_status status = check_range("lk_cpu_pages_release", address, bytes); status != LK_OK) return status;
    if (bytes == 0 || advise(address, bytes, MADV_DONTNEED) == 0) return LK_OK;
    return lk::fail(LK_ERR_INTERNAL, "lk_cpu_pages_release: madvise of %lld bytes failed: %s", (long long)bytes,
                    std::strerror(errno));
}

#else

LK_API lk_status lk_cpu_pages_readahead(void*, int64_t) { return LK_OK; }
LK_API lk_status lk_cpu_pages_release(void*, int64_t) { return LK_OK; }

#endif
