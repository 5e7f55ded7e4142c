// registry.h: the kernels lk_simt_launch can find by name. LK_KERNEL (simt_device.h) registers
// each kernel during static initialization of the module that defines it: this library for
// kernels/*.cu, a test executable for its own test kernels.
#pragma once

#include "simt_device.h"

namespace lk_simt {

struct kernel_entry {
    const char* name = nullptr;  // valid for the library's lifetime
    kernel_trampoline trampoline = nullptr;
    int parameter_count = 0;
    bool registered_twice = false;  // two modules define a kernel of this name
};

// Copies the entry named `name` into `entry`; false when there is none.
bool find_kernel(const char* name, kernel_entry& entry);
int kernel_count();
// The name of kernel `index` (registration order), or nullptr when out of range.
const char* kernel_name(int index);

}  // namespace lk_simt
