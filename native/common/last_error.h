// The calling thread's last error message, set by a failing native call and copied out through
// lk_cpu_last_error / lk_simt_last_error (STYLE.md: error text copied into the caller's buffer).
// Each library compiles this into itself with hidden visibility, so each keeps its own message.
#pragma once

#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>

#include "lora_kernels.h"

namespace lk {

inline std::string& last_error_message() {
    thread_local std::string message;
    return message;
}

// Records a printf-style message and returns `status`, so a check reads
//   if (!x) return lk::fail(LK_ERR_INVALID_ARGUMENT, "lk_cpu_sgemm: A is NULL");
__attribute__((format(printf, 2, 3))) inline lk_status fail(lk_status status, const char* format, ...) {
    char buffer[1024];
    va_list args;
    va_start(args, format);
    std::vsnprintf(buffer, sizeof buffer, format, args);
    va_end(args);
    last_error_message() = buffer;
    return status;
}

inline int64_t copy_last_error(char* buffer, int64_t capacity) {
    const std::string& message = last_error_message();
    if (buffer != nullptr && capacity > 0) {
        size_t n = message.size() < (size_t)(capacity - 1) ? message.size() : (size_t)(capacity - 1);
        std::memcpy(buffer, message.data(), n);
        buffer[n] = '\0';
    }
    return (int64_t)message.size();
}

}  // namespace lk
