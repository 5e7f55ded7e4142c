// parallel.h: how many threads an element-wise loop over n elements should use.
#pragma once

#include <algorithm>
#include <cstdint>

#include "isa.h"

namespace lk::cpu {

// Element-wise loops are memory-bound; below this many elements per thread a fork/join
// (a few microseconds) costs more than a second core's bandwidth saves.
constexpr int64_t kElementsPerThread = 1 << 16;

inline int elementwise_threads(int64_t n) {
    return (int)std::max<int64_t>(1, std::min<int64_t>(thread_count(), n / kElementsPerThread));
}

// The [begin, end) share of `count` items that thread `tid` of a team of `team` takes.
inline void thread_share(int64_t count, int tid, int team, int64_t& begin, int64_t& end) {
    begin = count * tid / team;
    end = count * (tid + 1) / team;
}

}  // namespace lk::cpu
