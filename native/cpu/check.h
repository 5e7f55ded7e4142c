// check.h: argument validation and the no-throw guard shared by every lk_cpu_* export.
//
// Every export validates its arguments before touching memory and reports the first bad one as
// LK_ERR_INVALID_ARGUMENT with a message naming the function, the argument and its value; its
// body runs inside lk::cpu::guarded so no exception ever crosses the C ABI.
#pragma once

#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <new>

#include "last_error.h"
#include "lora_kernels.h"

namespace lk::cpu {

// Collects the first failed check of one call:
//   ArgCheck check("lk_cpu_axpy");
//   check.nonnegative("n", n).not_null("x", x, n > 0);
//   if (!check.ok()) return check.status();
class ArgCheck {
public:
    explicit ArgCheck(const char* function) : function_(function) {}

    bool ok() const { return status_ == LK_OK; }
    lk_status status() const { return status_; }

    ArgCheck& nonnegative(const char* name, int64_t value) {
        if (ok() && value < 0) fail("%s: %s = %lld is negative", function_, name, (long long)value);
        return *this;
    }
    // A pointer that must not be NULL when `required` (typically: the array has elements).
    ArgCheck& not_null(const char* name, const void* pointer, bool required = true) {
        if (ok() && required && pointer == nullptr) fail("%s: %s is NULL", function_, name);
        return *this;
    }
    // A leading dimension must hold a stored row of `row_length` elements (and be at least 1).
    ArgCheck& leading_dimension(const char* name, int64_t ld, int64_t row_length) {
        int64_t minimum = row_length > 1 ? row_length : 1;
        if (ok() && ld < minimum)
            fail("%s: %s = %lld is smaller than the stored row length %lld", function_, name,
                 (long long)ld, (long long)minimum);
        return *this;
    }
    // lo <= value < hi; NaN fails.
    ArgCheck& in_half_open_range(const char* name, float value, float lo, float hi) {
        if (ok() && !(value >= lo && value < hi))
            fail("%s: %s = %g is outside [%g, %g)", function_, name, (double)value, (double)lo,
                 (double)hi);
        return *this;
    }
    // value >= lo; NaN fails.
    ArgCheck& at_least(const char* name, double value, double lo) {
        if (ok() && !(value >= lo))
            fail("%s: %s = %g is smaller than %g", function_, name, value, lo);
        return *this;
    }
    ArgCheck& finite(const char* name, float value) {
        if (ok() && !std::isfinite(value))
            fail("%s: %s = %g is not finite", function_, name, (double)value);
        return *this;
    }

private:
    __attribute__((format(printf, 2, 3))) void fail(const char* format, ...) {
        char buffer[512];
        va_list args;
        va_start(args, format);
        std::vsnprintf(buffer, sizeof buffer, format, args);
        va_end(args);
        status_ = lk::fail(LK_ERR_INVALID_ARGUMENT, "%s", buffer);
    }

    const char* function_;
    lk_status status_ = LK_OK;
};

// Runs `body` (which returns an lk_status) and turns any escaping exception into a status, so
// nothing is thrown across the C ABI.
template <class Body>
lk_status guarded(const char* function, Body&& body) noexcept {
    try {
        return body();
    } catch (const std::bad_alloc&) {
        return lk::fail(LK_ERR_OUT_OF_MEMORY, "%s: out of memory", function);
    } catch (...) {
        return lk::fail(LK_ERR_INTERNAL, "%s: unexpected C++ exception", function);
    }
}

}  // namespace lk::cpu
