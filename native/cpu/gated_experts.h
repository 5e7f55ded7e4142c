// gated_experts.h: the expert-index check every top-k export of the gated family runs first.
// Expert indices travel as exact integers in fp32 (the C# tensors have no integer dtype), so an
// index must be an integer in [0, E) before any kernel uses it as an offset.
#pragma once

#include <cmath>
#include <cstdint>

#include "last_error.h"
#include "lora_kernels.h"

namespace lk::cpu {

// Every expert index must be an integer in [0, E): else names the first bad one.
inline lk_status check_experts(const char* fn, int64_t M, int64_t k, int64_t E, const float* expert) {
    for (int64_t i = 0; i < M * k; ++i) {
        const float e = expert[i];
        if (!(e >= 0.0f && e < (float)E && e == std::floor(e)))
            return lk::fail(LK_ERR_INVALID_ARGUMENT,
                            "%s: expert[%lld] (token %lld, slot %lld) = %g is not an expert index in [0, %lld)",
                            fn, (long long)i, (long long)(i / k), (long long)(i % k), (double)e,
                            (long long)E);
    }
    return LK_OK;
}

}  // namespace lk::cpu
