// file_runs.cpp: positioned file transfers for paged optimizer state (lk_cpu_file_read,
// lk_cpu_file_write; lora_kernels_optim.h). Strategy: one pread/pwrite loop per run, the runs handed
// out one at a time to the library's threads (schedule(dynamic): a run is megabytes, so the handing out
// costs nothing, and a slow write does not hold up the other thread's runs). The kernel copies through
// its own mapping of the page cache, so no page-table entry of the process changes: on a virtual
// machine without nested paging a changed entry costs microseconds at its first access (DECISIONS.md,
// "Paged state on the CPU"). Each call retries short transfers and EINTR; the first failure is kept.
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>

#include <omp.h>

#include "check.h"
#include "isa.h"
#include "lora_kernels_optim.h"

#if defined(__unix__)
#include <unistd.h>

namespace {

// Moves one run; 0 on success, else the errno of the failure (EIO standing for a read past the end).
int transfer(const lk_file_run& run, bool write) {
    auto* memory = (char*)run.memory;
    for (int64_t done = 0; done < run.bytes;) {
        const size_t piece = (size_t)(run.bytes - done);
        const ssize_t moved = write ? pwrite(run.fd, memory + done, piece, (off_t)(run.file_offset + done))
                                    : pread(run.fd, memory + done, piece, (off_t)(run.file_offset + done));
        if (moved < 0) {
            if (errno == EINTR) continue;
            return errno;
        }
        if (moved == 0) return EIO;  // the file ends inside the run
        done += moved;
    }
    return 0;
}

lk_status transfer_all(const char* function, const lk_file_run* runs, int64_t count, bool write) {
    lk::cpu::ArgCheck check(function);
    check.nonnegative("count", count).not_null("runs", runs, count > 0);
    for (int64_t i = 0; check.ok() && i < count; ++i) {
        check.nonnegative("run file_offset", runs[i].file_offset).nonnegative("run bytes", runs[i].bytes)
            .nonnegative("run fd", runs[i].fd).not_null("run memory", runs[i].memory, runs[i].bytes > 0);
    }
    if (!check.ok()) return check.status();
    std::atomic<int64_t> failed_run{-1};
    std::atomic<int> failed_errno{0};
    const int threads = (int)std::min<int64_t>(lk::cpu::thread_count(), count);
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1)
    for (int64_t i = 0; i < count; ++i) {
        if (failed_run.load(std::memory_order_relaxed) >= 0) continue;
        if (const int error = transfer(runs[i], write); error != 0) {
            int64_t none = -1;
            if (failed_run.compare_exchange_strong(none, i)) failed_errno.store(error);
        }
    }
    const int64_t bad = failed_run.load();
    if (bad < 0) return LK_OK;
    const lk_file_run& run = runs[bad];
    return lk::fail(LK_ERR_INTERNAL, "%s: run %lld (fd %d, %lld bytes at file offset %lld) failed: %s", function,
                    (long long)bad, run.fd, (long long)run.bytes, (long long)run.file_offset,
                    failed_errno.load() == EIO && !write ? "the file ends inside the run" : std::strerror(failed_errno.load()));
}

}  // namespace

LK_API lk_status lk_cpu_file_read(const lk_file_run* runs, int64_t count) {
    return transfer_all("lk_cpu_file_read", runs, count, false);
}

LK_API lk_status lk_cpu_file_write(const lk_file_run* runs, int64_t count) {
    return transfer_all("lk_cpu_file_write", runs, count, true);
}

#else

LK_API lk_status lk_cpu_file_read(const lk_file_run*, int64_t) {
    return lk::fail(LK_ERR_UNSUPPORTED, "lk_cpu_file_read: needs pread (POSIX)");
}
LK_API lk_status lk_cpu_file_write(const lk_file_run*, int64_t) {
    return lk::fail(LK_ERR_UNSUPPORTED, "lk_cpu_file_write: needs pwrite (POSIX)");
}

#endif
