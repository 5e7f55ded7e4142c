// segment_tables.h: the segment tables the CPU and the emulator-parity segmented tests share
// (lora_kernels_segmented.h fixes the format: (start, length, adapter) triples).
//
// Layouts: Random partitions the rows into segments of 0..5 rows (empty segments included), leaves
// some rows out and gives some segments adapter -1 (unless `cover`, which a W0 table needs: every row
// in a segment of an adapter >= 0); RowPerAdapter gives every row its own segment (decode); LongSegment
// puts rows 2..M-1 in one segment past the dot-product cutoff of 16 rows. Row 0 always has an adapter,
// so every table exercises one. The triples are shuffled: any order is allowed.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace segment_tables {

enum class Layout { Random, RowPerAdapter, LongSegment };

inline const char* LayoutName(Layout layout) {
    return layout == Layout::Random ? "random" : layout == Layout::RowPerAdapter ? "perrow" : "long";
}

// next() returns uniformly distributed 32-bit values (each test's own generator).
template <class Next>
std::vector<int32_t> Make(Next next, int64_t M, int64_t n_adapters, bool cover, Layout layout) {
    std::vector<int32_t> t;
    auto push = [&](int64_t start, int64_t length, int64_t adapter) {
        t.insert(t.end(), {(int32_t)start, (int32_t)length, (int32_t)adapter});
    };
    auto adapter = [&] {
        return cover ? (int64_t)(next() % n_adapters) : (int64_t)(next() % (n_adapters + 1)) - 1;
    };
    int64_t cursor = 0;
    if (layout == Layout::LongSegment && M > 3) {
        push(0, 2, cover ? 0 : (int64_t)(next() % n_adapters));
        push(2, M - 2, 1 % n_adapters);
        push(M, 0, adapter());  // an empty segment at the very end
        cursor = M;
    }
    while (cursor < M) {
        if (next() % 5 == 0) push(cursor, 0, adapter());  // an empty segment
        if (!cover && cursor > 0 && next() % 4 == 0) {    // a row in no segment
            ++cursor;
            continue;
        }
        const int64_t length = layout == Layout::RowPerAdapter ? 1 : std::min<int64_t>(M - cursor, 1 + next() % 5);
        const int64_t chosen = layout == Layout::RowPerAdapter && cover ? cursor % n_adapters : adapter();
        push(cursor, length, cursor == 0 && chosen < 0 ? 0 : chosen);
        cursor += length;
    }
    const int64_t n = (int64_t)t.size() / 3;
    for (int64_t i = n - 1; i > 0; --i) {
        const int64_t j = next() % (i + 1);
        for (int c = 0; c < 3; ++c) std::swap(t[(size_t)(3 * i + c)], t[(size_t)(3 * j + c)]);
    }
    return t;
}

// The adapter of each row (-1: none).
inline std::vector<int64_t> RowAdapters(int64_t M, const std::vector<int32_t>& segments) {
    std::vector<int64_t> a((size_t)M, -1);
    for (size_t s = 0; s + 2 < segments.size(); s += 3)
        for (int32_t m = segments[s]; m < segments[s] + segments[s + 1]; ++m) a[(size_t)m] = segments[s + 2];
    return a;
}

// The longest segment (the launchers' row-tile slots).
inline int64_t LongestSegment(const std::vector<int32_t>& segments) {
    int64_t longest = 0;
    for (size_t s = 0; s + 2 < segments.size(); s += 3) longest = std::max<int64_t>(longest, segments[s + 1]);
    return longest;
}

}  // namespace segment_tables
