// launch.cpp: lk_simt_launch and the rest of the emulator's C ABI (native/include/lora_kernels.h).
//
// A launch validates the geometry as the CUDA driver would, then hands out block numbers from an
// atomic counter to a pool of worker threads; the calling thread is one of the workers, so with
// one worker (lk_simt_set_num_threads(1)) blocks run on the caller, in block order. Helper
// threads persist between launches (the C# parity tests make thousands of small launches, and
// starting threads for each would dominate). After a block fails no new block starts, and the
// error of the lowest failing block number is returned, so with one worker it is the first.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <new>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "block.h"
#include "last_error.h"
#include "lora_kernels.h"
#include "registry.h"

namespace lk_simt {
namespace {

constexpr std::uint32_t max_block_x = 1024;
constexpr std::uint32_t max_block_y = 1024;
constexpr std::uint32_t max_block_z = 64;
constexpr std::uint32_t max_grid_x = 2147483647u;
constexpr std::uint32_t max_grid_yz = 65535;
constexpr int max_worker_threads = 4096;

struct launch_job {
    kernel_call call;
    std::uint64_t block_count = 0;
    std::atomic<std::uint64_t> next_block{0};
    std::atomic<bool> failed{false};
    std::mutex error_mutex;
    std::uint64_t error_block = UINT64_MAX;
    lk_status error_status = LK_OK;
    std::string error_message;

    void record_failure(std::uint64_t block, lk_status status, const char* message) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (block < error_block) {
            error_block = block;
            error_status = status;
            error_message = message;
        }
        failed.store(true, std::memory_order_relaxed);
    }
};

// Runs blocks of `job` on the calling thread until none are left or one has failed.
void run_blocks(launch_job& job) noexcept {
    while (!job.failed.load(std::memory_order_relaxed)) {
        const std::uint64_t block = job.next_block.fetch_add(1, std::memory_order_relaxed);
        if (block >= job.block_count) return;
        lk_status status;
        const char* message;
        try {
            block_runner& runner = this_thread_runner();
            status = runner.run(job.call, block);
            message = runner.message();
        } catch (const std::bad_alloc&) {
            status = LK_ERR_OUT_OF_MEMORY;
            message = "out of memory while setting up a block";
        }
        if (status != LK_OK) {
            try {
                job.record_failure(block, status, message);
            } catch (const std::bad_alloc&) {
                job.record_failure(block, LK_ERR_OUT_OF_MEMORY, "");
            }
        }
    }
}

class worker_pool {
public:
    ~worker_pool() { stop_helpers(); }

    // Serializes launches and thread-count changes (one emulated stream).
    std::mutex& launch_mutex() { return launch_mutex_; }

    // Call with launch_mutex() held.
    void set_thread_count(int count) {
        stop_helpers();
        requested_threads_ = count;
    }

    // Call with launch_mutex() held.
    void run(launch_job& job) {
        const int threads = requested_threads_ > 0
                                ? requested_threads_
                                : std::max(1, (int)std::thread::hardware_concurrency());
        if ((int)helpers_.size() != threads - 1) {
            stop_helpers();
            start_helpers(threads - 1);
        }
        const int wanted = (int)std::min<std::uint64_t>(helpers_.size(), job.block_count - 1);
        if (wanted > 0) {
            std::lock_guard<std::mutex> lock(mutex_);
            job_ = &job;
            helpers_wanted_ = wanted;
            helpers_busy_ = wanted;
            ++generation_;
        }
        if (wanted > 0) wake_.notify_all();
        run_blocks(job);
        if (wanted > 0) {
            std::unique_lock<std::mutex> lock(mutex_);
            done_.wait(lock, [this] { return helpers_busy_ == 0; });
            job_ = nullptr;
        }
    }

private:
    void start_helpers(int count) {
        std::uint64_t current_generation;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            stopping_ = false;
            current_generation = generation_;
        }
        for (int i = 0; i < count; ++i) {
            try {
                // The helper starts from the generation current now, not when it first runs:
                // the launch that created it may already have announced its job by then.
                helpers_.emplace_back([this, i, current_generation] { helper_loop(i, current_generation); });
            } catch (const std::system_error&) {
                break;  // the system refuses more threads: run with the helpers we have
            }
        }
    }

    void stop_helpers() {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            stopping_ = true;
        }
        wake_.notify_all();
        for (std::thread& t : helpers_) t.join();
        helpers_.clear();
    }

    void helper_loop(int index, std::uint64_t seen) {
        for (;;) {
            launch_job* job;
            {
                std::unique_lock<std::mutex> lock(mutex_);
                wake_.wait(lock, [&] { return stopping_ || generation_ != seen; });
                if (stopping_) return;
                seen = generation_;
                if (index >= helpers_wanted_) continue;
                job = job_;
            }
            run_blocks(*job);
            std::lock_guard<std::mutex> lock(mutex_);
            if (--helpers_busy_ == 0) done_.notify_one();
        }
    }

    std::mutex launch_mutex_;
    int requested_threads_ = 0;  // 0: one per hardware thread
    std::vector<std::thread> helpers_;
    std::mutex mutex_;
    std::condition_variable wake_;
    std::condition_variable done_;
    launch_job* job_ = nullptr;
    std::uint64_t generation_ = 0;
    int helpers_wanted_ = 0;
    int helpers_busy_ = 0;
    bool stopping_ = false;
};

worker_pool& pool() {
    static worker_pool instance;
    return instance;
}

lk_status launch(const char* kernel, uint3 grid, uint3 block, std::uint32_t dynamic_shared_bytes, void** args) {
    if (kernel == nullptr) return lk::fail(LK_ERR_INVALID_ARGUMENT, "lk_simt_launch: kernel name is NULL");
    if (inside_kernel())
        return lk::fail(LK_ERR_UNSUPPORTED,
                        "lk_simt_launch(%s): called from inside a kernel; device-side launches are not emulated",
                        kernel);
    kernel_entry entry;
    if (!find_kernel(kernel, entry))
        return lk::fail(LK_ERR_NOT_FOUND, "lk_simt_launch: no kernel named '%s' is registered (%d kernels are)",
                        kernel, kernel_count());
    if (entry.registered_twice)
        return lk::fail(LK_ERR_INTERNAL, "lk_simt_launch(%s): two modules register a kernel of this name", kernel);

    const std::uint64_t threads = (std::uint64_t)block.x * block.y * block.z;
    if (block.x == 0 || block.y == 0 || block.z == 0 || block.x > max_block_x || block.y > max_block_y ||
        block.z > max_block_z || threads > LK_SIMT_MAX_THREADS_PER_BLOCK)
        return lk::fail(LK_ERR_INVALID_ARGUMENT,
                        "lk_simt_launch(%s): block (%u,%u,%u) has %llu threads; each dimension must be at least 1 "
                        "and at most (%u,%u,%u), and the total at most %d",
                        kernel, block.x, block.y, block.z, (unsigned long long)threads, max_block_x, max_block_y,
                        max_block_z, LK_SIMT_MAX_THREADS_PER_BLOCK);
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > max_grid_x || grid.y > max_grid_yz ||
        grid.z > max_grid_yz)
        return lk::fail(LK_ERR_INVALID_ARGUMENT,
                        "lk_simt_launch(%s): grid (%u,%u,%u) is invalid; each dimension must be at least 1, x at "
                        "most %u, y and z at most %u",
                        kernel, grid.x, grid.y, grid.z, max_grid_x, max_grid_yz);
    if (dynamic_shared_bytes > LK_SIMT_MAX_DYNAMIC_SHARED_BYTES)
        return lk::fail(LK_ERR_INVALID_ARGUMENT,
                        "lk_simt_launch(%s): %u bytes of dynamic shared memory exceed the limit of %d "
                        "(LK_SIMT_MAX_DYNAMIC_SHARED_BYTES)",
                        kernel, dynamic_shared_bytes, LK_SIMT_MAX_DYNAMIC_SHARED_BYTES);
    if (entry.parameter_count > 0) {
        if (args == nullptr)
            return lk::fail(LK_ERR_INVALID_ARGUMENT, "lk_simt_launch(%s): args is NULL but the kernel takes %d parameters",
                            kernel, entry.parameter_count);
        for (int i = 0; i < entry.parameter_count; ++i) {
            if (args[i] == nullptr)
                return lk::fail(LK_ERR_INVALID_ARGUMENT, "lk_simt_launch(%s): args[%d] is NULL", kernel, i);
        }
    }

    launch_job job;
    job.call = kernel_call{entry.name, entry.trampoline, args, grid, block, dynamic_shared_bytes};
    job.block_count = (std::uint64_t)grid.x * grid.y * grid.z;
    worker_pool& workers = pool();
    {
        std::lock_guard<std::mutex> lock(workers.launch_mutex());
        workers.run(job);
    }
    if (job.error_status != LK_OK)
        return lk::fail(job.error_status, "lk_simt_launch(%s): %s", kernel, job.error_message.c_str());
    return LK_OK;
}

}  // namespace
}  // namespace lk_simt

LK_API int64_t lk_simt_last_error(char* buffer, int64_t capacity) { return lk::copy_last_error(buffer, capacity); }

LK_API lk_status lk_simt_launch(const char* kernel, uint32_t grid_x, uint32_t grid_y, uint32_t grid_z,
                                uint32_t block_x, uint32_t block_y, uint32_t block_z, uint32_t dynamic_shared_bytes,
                                void** args) {
    try {
        return lk_simt::launch(kernel, uint3{grid_x, grid_y, grid_z}, uint3{block_x, block_y, block_z},
                               dynamic_shared_bytes, args);
    } catch (const std::bad_alloc&) {
        return lk::fail(LK_ERR_OUT_OF_MEMORY, "lk_simt_launch: out of memory");
    } catch (const std::exception& e) {
        return lk::fail(LK_ERR_INTERNAL, "lk_simt_launch: %s", e.what());
    } catch (...) {
        return lk::fail(LK_ERR_INTERNAL, "lk_simt_launch: an exception not derived from std::exception");
    }
}

LK_API int32_t lk_simt_kernel_count(void) {
    try {
        return lk_simt::kernel_count();
    } catch (const std::exception& e) {
        lk::fail(LK_ERR_INTERNAL, "lk_simt_kernel_count: %s", e.what());
        return 0;
    }
}

LK_API const char* lk_simt_kernel_name(int32_t index) {
    try {
        return lk_simt::kernel_name(index);
    } catch (const std::exception& e) {
        lk::fail(LK_ERR_INTERNAL, "lk_simt_kernel_name: %s", e.what());
        return nullptr;
    }
}

LK_API lk_status lk_simt_set_num_threads(int32_t n) {
    if (n > lk_simt::max_worker_threads)
        return lk::fail(LK_ERR_INVALID_ARGUMENT, "lk_simt_set_num_threads: %d threads requested; at most %d", n,
                        lk_simt::max_worker_threads);
    if (lk_simt::inside_kernel())
        return lk::fail(LK_ERR_UNSUPPORTED, "lk_simt_set_num_threads: called from inside a kernel");
    try {
        lk_simt::worker_pool& workers = lk_simt::pool();
        std::lock_guard<std::mutex> lock(workers.launch_mutex());
        workers.set_thread_count(n > 0 ? n : 0);
        return LK_OK;
    } catch (const std::exception& e) {
        return lk::fail(LK_ERR_INTERNAL, "lk_simt_set_num_threads: %s", e.what());
    }
}
