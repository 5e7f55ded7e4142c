// block.cpp: one thread block as cooperating fibers: barriers, warp collectives, block-shared
// memory, faults and deadlock reports. See block.h for the scheduling model.
#include "block.h"

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <new>

namespace lk_simt {
namespace {

// The fiber running on this OS thread (null outside a block). Fibers of a block never migrate
// between OS threads, so this is also "the emulated thread running now".
thread_local fiber* tls_current = nullptr;

const char* collective_name(collective kind) {
    switch (kind) {
        case collective::sync_warp: return "__syncwarp";
        case collective::shfl_idx: return "__shfl_sync";
        case collective::shfl_up: return "__shfl_up_sync";
        case collective::shfl_down: return "__shfl_down_sync";
        case collective::shfl_xor: return "__shfl_xor_sync";
        case collective::ballot: return "__ballot_sync";
        case collective::any: return "__any_sync";
        case collective::all: return "__all_sync";
        case collective::warp_matrix: return "a warp-wide matrix instruction (mma.sync / ldmatrix)";
    }
    return "an unknown collective";
}

bool is_shuffle(collective kind) {
    return kind == collective::shfl_idx || kind == collective::shfl_up || kind == collective::shfl_down ||
           kind == collective::shfl_xor;
}

inline std::uint32_t lowest_lane(std::uint32_t mask) { return (std::uint32_t)__builtin_ctz(mask); }

struct thread_label {
    char text[80];
};

thread_label label_of(const fiber& f) {
    thread_label label;
    std::snprintf(label.text, sizeof label.text, "thread (%u,%u,%u) (warp %u, lane %u)", f.coords.thread_idx.x,
                  f.coords.thread_idx.y, f.coords.thread_idx.z, f.linear_id / 32, f.linear_id % 32);
    return label;
}

// The lane whose value `lane` receives, by the CUDA programming guide: idx reads lane
// operand mod width of its own width-segment; up/down read lane -/+ delta when that stays in the
// segment; xor reads lane ^ laneMask unless that lies in a later segment (an earlier one is
// allowed). Otherwise the lane keeps its own value.
int shuffle_source(collective kind, int lane, int operand, int width) {
    const int segment_start = lane & ~(width - 1);
    const int segment_end = segment_start + width - 1;
    switch (kind) {
        case collective::shfl_idx: return segment_start + (operand & (width - 1));
        case collective::shfl_up: {
            const unsigned delta = (unsigned)operand;
            return delta <= (unsigned)(lane - segment_start) ? lane - (int)delta : lane;
        }
        case collective::shfl_down: {
            const unsigned delta = (unsigned)operand;
            return delta <= (unsigned)(segment_end - lane) ? lane + (int)delta : lane;
        }
        default: {
            const int source = lane ^ operand;
            return source < 0 || source > segment_end ? lane : source;
        }
    }
}

void fiber_main(void* argument) {
    fiber_started();
    fiber& self = *static_cast<fiber*>(argument);
    self.runner->run_thread(self);
}

// Appends printf-style text at message + *length, never past capacity.
void append(char* message, std::size_t capacity, std::size_t* length, const char* format, va_list args) {
    if (*length >= capacity - 1) return;
    int n = std::vsnprintf(message + *length, capacity - *length, format, args);
    if (n > 0) *length = *length + (std::size_t)n < capacity - 1 ? *length + (std::size_t)n : capacity - 1;
}

__attribute__((format(printf, 4, 5))) void appendf(char* message, std::size_t capacity, std::size_t* length,
                                                   const char* format, ...) {
    va_list args;
    va_start(args, format);
    append(message, capacity, length, format, args);
    va_end(args);
}

}  // namespace

block_runner::block_runner() {
    init_thread_context(scheduler_);
    shared_arrays_.reserve(16);
}

block_runner::~block_runner() = default;

block_runner& this_thread_runner() {
    thread_local block_runner runner;
    return runner;
}

bool inside_kernel() { return tls_current != nullptr; }

lk_status block_runner::run(const kernel_call& call, std::uint64_t block_linear) {
    call_ = &call;
    const uint3 b = call.block;
    const uint3 g = call.grid;
    thread_count_ = b.x * b.y * b.z;
    block_idx_ = {(unsigned)(block_linear % g.x), (unsigned)((block_linear / g.x) % g.y),
                  (unsigned)(block_linear / ((std::uint64_t)g.x * g.y))};
    status_ = LK_OK;
    message_[0] = '\0';

    if (!stacks_.reserve(thread_count_)) {
        std::snprintf(message_, sizeof message_, "block (%u,%u,%u): cannot map %u fiber stacks of %zu KiB",
                      block_idx_.x, block_idx_.y, block_idx_.z, thread_count_, fiber_stack_bytes / 1024);
        return LK_ERR_OUT_OF_MEMORY;
    }
    fibers_.resize(thread_count_);
    ready_.resize(thread_count_);
    copies_.resize((std::size_t)thread_count_ * max_pending_copies);
    const std::uint32_t warp_count = (thread_count_ + 31) / 32;
    warps_.resize(warp_count);
    for (std::uint32_t w = 0; w < warp_count; ++w) {
        const std::uint32_t lanes = thread_count_ - 32 * w < 32 ? thread_count_ - 32 * w : 32;
        warp_state& ws = warps_[w];
        ws.lanes_mask = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1;
        ws.waiting_mask = 0;
        ws.barrier_mask = 0;
        ws.exited_mask = 0;
        ws.uniform = true;
    }

    dynamic_shared_ = ::operator new(call.dynamic_shared_bytes, std::align_val_t(16), std::nothrow);
    if (dynamic_shared_ == nullptr) {
        std::snprintf(message_, sizeof message_, "block (%u,%u,%u): cannot allocate %u bytes of dynamic shared memory",
                      block_idx_.x, block_idx_.y, block_idx_.z, call.dynamic_shared_bytes);
        return LK_ERR_OUT_OF_MEMORY;
    }
    std::memset(dynamic_shared_, 0xFF, call.dynamic_shared_bytes);
    static_shared_bytes_ = 0;

    ready_head_ = 0;
    ready_count_ = 0;
    barrier_arrived_ = 0;
    exited_count_ = 0;
    first_exited_ = nullptr;
    for (std::uint32_t i = 0; i < thread_count_; ++i) {
        fiber& f = fibers_[i];
        f.coords.thread_idx = {i % b.x, (i / b.x) % b.y, i / (b.x * b.y)};
        f.coords.block_idx = block_idx_;
        f.coords.block_dim = b;
        f.coords.grid_dim = g;
        f.runner = this;
        f.linear_id = i;
        f.pending_copies = 0;
        f.committed_groups = 0;
        prepare_context(f.context, stacks_[i], &fiber_main, &f);
        make_ready(f);
    }

    fiber& first = pop_ready();
    first.state = fiber_state::running;
    tls_current = &first;
    switch_context(scheduler_, first.context);
    // Back on the worker's stack: every thread exited, or the block faulted and its fibers are
    // abandoned where they stand (kernel code holds no resources a destructor must free).
    tls_current = nullptr;
    release_shared_memory();
    if (status_ != LK_OK) {
        for (std::uint32_t i = 0; i < thread_count_; ++i) stacks_[i].abandoned = true;
    }
    return status_;
}

void block_runner::release_shared_memory() {
    for (const shared_array& a : shared_arrays_) ::operator delete(a.storage, std::align_val_t(a.alignment));
    shared_arrays_.clear();
    ::operator delete(dynamic_shared_, std::align_val_t(16));
    dynamic_shared_ = nullptr;
}

void block_runner::make_ready(fiber& f) {
    f.state = fiber_state::ready;
    std::uint32_t slot = ready_head_ + ready_count_;
    if (slot >= thread_count_) slot -= thread_count_;
    ready_[slot] = f.linear_id;
    ++ready_count_;
}

fiber& block_runner::pop_ready() {
    fiber& f = fibers_[ready_[ready_head_]];
    if (++ready_head_ == thread_count_) ready_head_ = 0;
    --ready_count_;
    return f;
}

void block_runner::suspend(fiber& self) {
    if (ready_count_ == 0) report_deadlock(self);
    fiber& next = pop_ready();
    next.state = fiber_state::running;
    tls_current = &next;
    switch_context(self.context, next.context);
    // Resumed: whoever switched here set tls_current back to &self.
}

bool block_runner::call_kernel() {
    try {
        call_->trampoline(call_->args);
        return true;
    } catch (const std::exception& e) {
        std::snprintf(exception_text_, sizeof exception_text_, "%s", e.what());
    } catch (...) {
        std::snprintf(exception_text_, sizeof exception_text_, "an exception not derived from std::exception");
    }
    // The fault is raised by the caller, outside the handler: leaving a fiber for good from inside
    // a catch block would leave the OS thread's C++ exception state pointing at a dead frame.
    return false;
}

void block_runner::run_thread(fiber& self) {
    if (!call_kernel()) fault(self, LK_ERR_INTERNAL, "the kernel threw a C++ exception: %s", exception_text_);
    finish_thread(self);
}

void block_runner::finish_thread(fiber& self) {
    const std::uint32_t lane = self.linear_id % 32;
    const std::uint32_t bit = 1u << lane;
    warp_state& w = warps_[self.linear_id / 32];
    for (std::uint32_t waiting = w.waiting_mask; waiting != 0; waiting &= waiting - 1) {
        const std::uint32_t j = lowest_lane(waiting);
        if ((w.mask[j] & bit) != 0) {
            fault(self, LK_ERR_KERNEL_FAULT,
                  "exited while lane %u waits for it at %s(mask 0x%08x): every lane named in a mask must "
                  "reach the collective",
                  j, collective_name(w.kind[j]), w.mask[j]);
        }
    }
    if (self.pending_copies > 0) {
        fault(self, LK_ERR_KERNEL_FAULT,
              "exited with %u cp.async copies never waited for: wait for every group (cp.async.wait_group 0) "
              "before the thread ends",
              self.pending_copies);
    }
    if (barrier_arrived_ > 0) {
        fault(self, LK_ERR_KERNEL_FAULT,
              "exited while %u other threads wait at __syncthreads: every thread of the block must reach each "
              "barrier (a barrier in divergent code, or an early return)",
              barrier_arrived_);
    }
    self.state = fiber_state::exited;
    w.exited_mask |= bit;
    if (first_exited_ == nullptr) first_exited_ = &self;
    if (++exited_count_ == thread_count_) switch_context_final(self.context, scheduler_);
    if (ready_count_ == 0) report_deadlock(self);
    fiber& next = pop_ready();
    next.state = fiber_state::running;
    tls_current = &next;
    switch_context_final(self.context, next.context);
}

void block_runner::sync_threads(fiber& self) {
    if (first_exited_ != nullptr) {
        fault(self, LK_ERR_KERNEL_FAULT,
              "reached __syncthreads after %s exited: every thread of the block must reach each barrier "
              "(a barrier in divergent code, or an early return)",
              label_of(*first_exited_).text);
    }
    const std::uint32_t lane = self.linear_id % 32;
    const std::uint32_t bit = 1u << lane;
    warp_state& w = warps_[self.linear_id / 32];
    for (std::uint32_t waiting = w.waiting_mask; waiting != 0; waiting &= waiting - 1) {
        const std::uint32_t j = lowest_lane(waiting);
        if ((w.mask[j] & bit) != 0) {
            fault(self, LK_ERR_KERNEL_FAULT,
                  "reached __syncthreads while lane %u of its warp waits for it at %s(mask 0x%08x): nothing "
                  "can proceed",
                  j, collective_name(w.kind[j]), w.mask[j]);
        }
    }
    if (++barrier_arrived_ == thread_count_) {
        barrier_arrived_ = 0;
        for (fiber& f : fibers_) {
            if (f.state == fiber_state::at_barrier) make_ready(f);
        }
        for (warp_state& ws : warps_) ws.barrier_mask = 0;
        return;
    }
    self.state = fiber_state::at_barrier;
    w.barrier_mask |= bit;
    suspend(self);
}

unsigned long long block_runner::warp_collective(fiber& self, collective kind, std::uint32_t mask,
                                                 unsigned long long value, int operand, int width) {
    const std::uint32_t warp_index = self.linear_id / 32;
    const std::uint32_t lane = self.linear_id % 32;
    const std::uint32_t bit = 1u << lane;
    warp_state& w = warps_[warp_index];
    const char* name = collective_name(kind);

    if ((mask & bit) == 0)
        fault(self, LK_ERR_KERNEL_FAULT, "%s with mask 0x%08x, which does not include the calling lane %u", name,
              mask, lane);
    if ((mask & ~w.lanes_mask) != 0)
        fault(self, LK_ERR_KERNEL_FAULT,
              "%s with mask 0x%08x names lanes that do not exist: this warp has %u lanes (block of %u threads)",
              name, mask, (unsigned)__builtin_popcount(w.lanes_mask), thread_count_);
    if ((mask & w.exited_mask) != 0)
        fault(self, LK_ERR_KERNEL_FAULT, "%s with mask 0x%08x names lane %u, which has exited", name, mask,
              lowest_lane(mask & w.exited_mask));
    if (is_shuffle(kind) && (width < 1 || width > 32 || (width & (width - 1)) != 0))
        fault(self, LK_ERR_KERNEL_FAULT, "%s with width %d: the width must be a power of two from 1 to 32", name,
              width);
    if ((mask & w.barrier_mask) != 0)
        fault(self, LK_ERR_KERNEL_FAULT,
              "%s(mask 0x%08x) waits for lane %u, which waits at __syncthreads: nothing can proceed (a barrier "
              "or collective in divergent code)",
              name, mask, lowest_lane(mask & w.barrier_mask));

    w.kind[lane] = kind;
    w.mask[lane] = mask;
    w.value[lane] = value;
    w.operand[lane] = operand;
    w.width[lane] = width;

    if (w.waiting_mask == 0) {
        w.uniform = true;
        w.uniform_kind = kind;
        w.uniform_mask = mask;
    }
    bool complete;
    if (w.uniform && w.uniform_kind == kind && w.uniform_mask == mask) {
        w.waiting_mask |= bit;
        complete = (w.waiting_mask & mask) == mask;
    } else {
        // Other lanes of this warp wait at other collectives. One that this lane's mask names and
        // that itself waits for this lane can never be met: both would wait forever.
        for (std::uint32_t others = mask & w.waiting_mask; others != 0; others &= others - 1) {
            const std::uint32_t j = lowest_lane(others);
            if ((w.kind[j] != kind || w.mask[j] != mask) && (w.mask[j] & bit) != 0) {
                fault(self, LK_ERR_KERNEL_FAULT,
                      "%s(mask 0x%08x) while lane %u waits for it at %s(mask 0x%08x): lanes named in one mask "
                      "must meet at the same collective with the same mask",
                      name, mask, j, collective_name(w.kind[j]), w.mask[j]);
            }
        }
        w.uniform = false;
        w.waiting_mask |= bit;
        complete = (w.waiting_mask & mask) == mask;
        for (std::uint32_t lanes = mask; complete && lanes != 0; lanes &= lanes - 1) {
            const std::uint32_t j = lowest_lane(lanes);
            complete = w.kind[j] == kind && w.mask[j] == mask;
        }
    }
    if (complete) {
        complete_collective(w, kind, mask, lane, warp_index);
    } else {
        self.state = fiber_state::at_collective;
        suspend(self);
    }
    return w.result[lane];
}

void block_runner::complete_collective(warp_state& w, collective kind, std::uint32_t mask, std::uint32_t self_lane,
                                       std::uint32_t warp_index) {
    if (kind == collective::warp_matrix) {
        complete_warp_matrix(w, warp_index, fibers_[warp_index * 32 + self_lane]);
        for (std::uint32_t lanes = mask; lanes != 0; lanes &= lanes - 1) w.result[lowest_lane(lanes)] = 0;
    } else if (kind == collective::sync_warp) {
        for (std::uint32_t lanes = mask; lanes != 0; lanes &= lanes - 1) w.result[lowest_lane(lanes)] = 0;
    } else if (kind == collective::ballot || kind == collective::any || kind == collective::all) {
        std::uint32_t ballot = 0;
        for (std::uint32_t lanes = mask; lanes != 0; lanes &= lanes - 1) {
            const std::uint32_t i = lowest_lane(lanes);
            if (w.value[i] != 0) ballot |= 1u << i;
        }
        const unsigned long long result = kind == collective::ballot ? ballot
                                          : kind == collective::any  ? (ballot != 0)
                                                                     : (ballot == mask);
        for (std::uint32_t lanes = mask; lanes != 0; lanes &= lanes - 1) w.result[lowest_lane(lanes)] = result;
    } else {
        for (std::uint32_t lanes = mask; lanes != 0; lanes &= lanes - 1) {
            const std::uint32_t i = lowest_lane(lanes);
            const int source = shuffle_source(kind, (int)i, w.operand[i], w.width[i]);
            // Reading a lane that does not take part is undefined in CUDA; it reads as all ones
            // (NaN for floats), like unwritten shared memory, so a kernel that uses it shows it.
            w.result[i] = ((mask >> source) & 1u) != 0 ? w.value[source] : ~0ull;
        }
    }
    w.waiting_mask &= ~mask;
    for (std::uint32_t lanes = mask & ~(1u << self_lane); lanes != 0; lanes &= lanes - 1)
        make_ready(fibers_[warp_index * 32 + lowest_lane(lanes)]);
    if (!w.uniform && w.waiting_mask != 0) {
        const std::uint32_t first = lowest_lane(w.waiting_mask);
        bool uniform = true;
        for (std::uint32_t lanes = w.waiting_mask; uniform && lanes != 0; lanes &= lanes - 1) {
            const std::uint32_t j = lowest_lane(lanes);
            uniform = w.kind[j] == w.kind[first] && w.mask[j] == w.mask[first];
        }
        w.uniform = uniform;
        w.uniform_kind = w.kind[first];
        w.uniform_mask = w.mask[first];
    }
}

bool block_runner::in_shared(const void* address, std::size_t bytes) const {
    const auto inside = [&](const void* base, std::size_t size) {
        const auto p = reinterpret_cast<std::uintptr_t>(address), b = reinterpret_cast<std::uintptr_t>(base);
        return p >= b && p - b <= size && size - (p - b) >= bytes;
    };
    if (dynamic_shared_ != nullptr && inside(dynamic_shared_, call_->dynamic_shared_bytes)) return true;
    for (const shared_array& a : shared_arrays_)
        if (inside(a.storage, a.bytes)) return true;
    return false;
}

void block_runner::warp_matrix(fiber& self, warp_matrix_lane* lane) {
    warp_collective(self, collective::warp_matrix, 0xffffffffu, reinterpret_cast<unsigned long long>(lane), 0, 32);
}

void block_runner::cp_async(fiber& self, void* destination, const void* source, std::uint32_t src_bytes) {
    if (src_bytes > 16) fault(self, LK_ERR_KERNEL_FAULT, "cp.async of 16 bytes with a source size of %u bytes", src_bytes);
    if ((reinterpret_cast<std::uintptr_t>(destination) & 15u) != 0 || (reinterpret_cast<std::uintptr_t>(source) & 15u) != 0)
        fault(self, LK_ERR_KERNEL_FAULT, "cp.async of 16 bytes from %p to %p: both addresses must be 16-byte aligned", source,
              destination);
    if (!in_shared(destination, 16))
        fault(self, LK_ERR_KERNEL_FAULT, "cp.async to %p, which is not in the block's shared memory", destination);
    if (self.pending_copies == max_pending_copies)
        fault(self, LK_ERR_KERNEL_FAULT, "more than %u cp.async copies in flight in one thread (the emulator's bound)",
              max_pending_copies);
    copies_[(std::size_t)self.linear_id * max_pending_copies + self.pending_copies++] = {destination, source, src_bytes,
                                                                                          self.committed_groups};
}

void block_runner::cp_async_commit(fiber& self) { ++self.committed_groups; }

void block_runner::cp_async_wait(fiber& self, int newest_pending) {
    if (newest_pending < 0) fault(self, LK_ERR_KERNEL_FAULT, "cp.async.wait_group %d: the count must be >= 0", newest_pending);
    // Groups numbered below `done` complete now; the newest `newest_pending` committed groups and
    // the copies not yet committed stay in flight, in issue order.
    const std::uint32_t pending = (std::uint32_t)newest_pending;
    const std::uint32_t done = self.committed_groups > pending ? self.committed_groups - pending : 0;
    async_copy* mine = &copies_[(std::size_t)self.linear_id * max_pending_copies];
    std::uint32_t kept = 0;
    for (std::uint32_t i = 0; i < self.pending_copies; ++i) {
        const async_copy c = mine[i];
        if (c.group < done) {
            std::memcpy(c.destination, c.source, c.src_bytes);
            std::memset(static_cast<unsigned char*>(c.destination) + c.src_bytes, 0, 16 - c.src_bytes);
        } else {
            mine[kept++] = c;
        }
    }
    self.pending_copies = kept;
}

void* block_runner::static_shared(fiber& self, const void* key, std::size_t bytes, std::size_t alignment) {
    for (const shared_array& a : shared_arrays_) {
        if (a.key == key) return a.storage;
    }
    const std::size_t total_static = static_shared_bytes_ + bytes;
    if (total_static > LK_SIMT_MAX_STATIC_SHARED_BYTES)
        fault(self, LK_ERR_KERNEL_FAULT,
              "static shared memory (LK_SHARED) of %zu bytes exceeds the limit of %d bytes per block "
              "(LK_SIMT_MAX_STATIC_SHARED_BYTES)",
              total_static, LK_SIMT_MAX_STATIC_SHARED_BYTES);
    if (total_static + call_->dynamic_shared_bytes > LK_SIMT_MAX_DYNAMIC_SHARED_BYTES)
        fault(self, LK_ERR_KERNEL_FAULT,
              "static (%zu bytes) plus dynamic (%u bytes) shared memory exceeds the limit of %d bytes per block",
              total_static, call_->dynamic_shared_bytes, LK_SIMT_MAX_DYNAMIC_SHARED_BYTES);
    if (alignment < 16) alignment = 16;
    // Each array is its own allocation of exactly `bytes`, so AddressSanitizer reports an
    // overrun of any one of them.
    void* storage = ::operator new(bytes, std::align_val_t(alignment), std::nothrow);
    bool recorded = false;
    if (storage != nullptr) {
        try {
            shared_arrays_.push_back({key, storage, alignment, bytes});
            recorded = true;
        } catch (const std::bad_alloc&) {
            ::operator delete(storage, std::align_val_t(alignment));
        }
    }
    if (!recorded)
        fault(self, LK_ERR_OUT_OF_MEMORY, "cannot allocate %zu bytes of static shared memory", bytes);
    std::memset(storage, 0xFF, bytes);
    static_shared_bytes_ = total_static;
    return storage;
}

void block_runner::report_deadlock(fiber& self) {
    std::uint32_t at_barrier = 0;
    std::uint32_t at_collective = 0;
    for (const fiber& f : fibers_) {
        at_barrier += f.state == fiber_state::at_barrier;
        at_collective += f.state == fiber_state::at_collective;
    }
    // Find a lane whose collective can never complete, and say what the lane it waits for does.
    for (std::uint32_t wi = 0; wi < warps_.size(); ++wi) {
        const warp_state& w = warps_[wi];
        for (std::uint32_t waiting = w.waiting_mask; waiting != 0; waiting &= waiting - 1) {
            const std::uint32_t i = lowest_lane(waiting);
            const fiber& fi = fibers_[wi * 32 + i];
            for (std::uint32_t partners = w.mask[i] & ~(1u << i); partners != 0; partners &= partners - 1) {
                const std::uint32_t j = lowest_lane(partners);
                const fiber& fj = fibers_[wi * 32 + j];
                if (fj.state == fiber_state::at_barrier)
                    fail_blockf(self, &fi, LK_ERR_KERNEL_FAULT,
                                "deadlock: waits at %s(mask 0x%08x) for lane %u, which waits at __syncthreads",
                                collective_name(w.kind[i]), w.mask[i], j);
                if (fj.state == fiber_state::at_collective && (w.kind[j] != w.kind[i] || w.mask[j] != w.mask[i]))
                    fail_blockf(self, &fi, LK_ERR_KERNEL_FAULT,
                                "deadlock: waits at %s(mask 0x%08x) for lane %u, which waits at %s(mask 0x%08x): "
                                "lanes named in one mask must meet at the same collective with the same mask",
                                collective_name(w.kind[i]), w.mask[i], j, collective_name(w.kind[j]), w.mask[j]);
            }
        }
    }
    // Not reached when the checks above and at each arrival and exit are complete (a stuck
    // barrier always involves an exited thread or a waiting lane); kept so that a gap in them
    // still ends in a report rather than a hang.
    fail_blockf(self, nullptr, LK_ERR_KERNEL_FAULT,
                "deadlock: no thread can proceed (%u threads wait at __syncthreads, %u at warp collectives)",
                at_barrier, at_collective);
}

void block_runner::fault(fiber& self, lk_status status, const char* format, ...) {
    va_list args;
    va_start(args, format);
    fail_block(self, &self, status, format, args);
}

void block_runner::fail_blockf(fiber& running, const fiber* blamed, lk_status status, const char* format, ...) {
    va_list args;
    va_start(args, format);
    fail_block(running, blamed, status, format, args);
}

void block_runner::fail_block(fiber& running, const fiber* blamed, lk_status status, const char* format,
                              va_list args) {
    std::size_t length = 0;
    message_[0] = '\0';
    appendf(message_, sizeof message_, &length, "block (%u,%u,%u)", block_idx_.x, block_idx_.y, block_idx_.z);
    if (blamed != nullptr) appendf(message_, sizeof message_, &length, ", %s", label_of(*blamed).text);
    appendf(message_, sizeof message_, &length, ": ");
    append(message_, sizeof message_, &length, format, args);
    status_ = status;
    switch_context_final(running.context, scheduler_);
}

// ---- the built-ins of simt_device.h -------------------------------------------------------------

const thread_coords* current_coords() noexcept { return &tls_current->coords; }

void sync_threads() noexcept {
    fiber* self = tls_current;
    self->runner->sync_threads(*self);
}

unsigned long long warp_collective(collective kind, unsigned int mask, unsigned long long value, int lane_or_delta,
                                   int width) noexcept {
    fiber* self = tls_current;
    return self->runner->warp_collective(*self, kind, mask, value, lane_or_delta, width);
}

void* block_shared(const void* key, std::size_t bytes, std::size_t alignment) noexcept {
    fiber* self = tls_current;
    return self->runner->static_shared(*self, key, bytes, alignment);
}

void* dynamic_shared() noexcept { return tls_current->runner->dynamic_shared(); }

void warp_matrix(warp_matrix_lane* lane) noexcept {
    fiber* self = tls_current;
    self->runner->warp_matrix(*self, lane);
}

void cp_async(void* shared_destination, const void* global_source, unsigned src_bytes) noexcept {
    fiber* self = tls_current;
    self->runner->cp_async(*self, shared_destination, global_source, src_bytes);
}

void cp_async_commit() noexcept {
    fiber* self = tls_current;
    self->runner->cp_async_commit(*self);
}

void cp_async_wait(int newest_pending) noexcept {
    fiber* self = tls_current;
    self->runner->cp_async_wait(*self, newest_pending);
}

void trap() noexcept {
    fiber* self = tls_current;
    self->runner->fault(*self, LK_ERR_KERNEL_FAULT, "__trap() called");
}

}  // namespace lk_simt
