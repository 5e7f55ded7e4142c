// simt_test_util.h: launching the test kernels (simt_test_kernels.cu) through the public C ABI
// exactly as the C# layer does (lk_simt_launch with a void** args array), and checking faults.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "lora_kernels.h"

namespace simt_test {

struct dims {
    std::uint32_t x = 1, y = 1, z = 1;
};

inline std::string last_error() {
    const int64_t length = lk_simt_last_error(nullptr, 0);
    std::string message((std::size_t)length + 1, '\0');
    lk_simt_last_error(message.data(), (int64_t)message.size());
    message.resize((std::size_t)length);
    return message;
}

// Launches `kernel` with args[i] = &params[i], as cuLaunchKernel takes them.
template <class... P>
lk_status launch(const char* kernel, dims grid, dims block, std::uint32_t dynamic_shared_bytes, P&... params) {
    void* args[] = {static_cast<void*>(&params)..., nullptr};
    return lk_simt_launch(kernel, grid.x, grid.y, grid.z, block.x, block.y, block.z, dynamic_shared_bytes, args);
}

// The launch failed with `status` and a message containing every fragment.
inline void expect_failure(lk_status got, lk_status status, std::initializer_list<const char*> fragments) {
    EXPECT_EQ(got, status) << "got " << lk_status_name(got) << ", expected " << lk_status_name(status)
                           << "; last error: " << last_error();
    const std::string message = last_error();
    for (const char* fragment : fragments)
        EXPECT_NE(message.find(fragment), std::string::npos) << "message \"" << message << "\" lacks \"" << fragment << "\"";
}

// A correct multi-block barrier kernel still gives the right answer (after a failed launch).
inline void expect_normal_launch_works() {
    const std::uint32_t blocks = 3, threads = 64;
    std::vector<float> in(blocks * threads);
    for (std::size_t i = 0; i < in.size(); ++i) in[i] = (float)(i % 13) + 1.0f;
    std::vector<float> out(blocks, 0.0f);
    std::vector<int> phases(blocks, 0);
    const float* in_ptr = in.data();
    float* out_ptr = out.data();
    int* phases_ptr = phases.data();
    ASSERT_EQ(launch("simt_test_block_sum", {blocks}, {threads}, 0, in_ptr, out_ptr, phases_ptr), LK_OK) << last_error();
    for (std::uint32_t b = 0; b < blocks; ++b) {
        float expected = 0.0f;
        for (std::uint32_t t = 0; t < threads; ++t) expected += in[b * threads + t];
        EXPECT_EQ(out[b], expected) << "block " << b;
    }
}

}  // namespace simt_test
