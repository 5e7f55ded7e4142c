// registry.cpp: name -> kernel trampoline. Registrations arrive from static initializers, possibly
// of several modules, so the table is a function-local static behind a mutex, and entries live in
// a deque so the names handed out by lk_simt_kernel_name never move.
#include "registry.h"

#include <deque>
#include <mutex>
#include <string>
#include <unordered_map>

namespace lk_simt {
namespace {

struct stored_kernel {
    std::string name;
    kernel_trampoline trampoline;
    int parameter_count;
    bool registered_twice;
};

struct kernel_table {
    std::mutex mutex;
    std::deque<stored_kernel> kernels;
    std::unordered_map<std::string, std::size_t> index_by_name;
};

kernel_table& table() {
    static kernel_table instance;
    return instance;
}

}  // namespace

void register_kernel(const char* name, kernel_trampoline trampoline, int parameter_count) noexcept {
    kernel_table& t = table();
    try {
        std::lock_guard<std::mutex> lock(t.mutex);
        auto found = t.index_by_name.find(name);
        if (found != t.index_by_name.end()) {
            // Two definitions of one name: launching it is ambiguous, so lk_simt_launch refuses.
            t.kernels[found->second].registered_twice = true;
            return;
        }
        t.kernels.push_back({name, trampoline, parameter_count, false});
        t.index_by_name.emplace(name, t.kernels.size() - 1);
    } catch (...) {
        // Out of memory during static initialization: the kernel stays unregistered, and
        // lk_simt_launch reports it as not found rather than the process dying here.
    }
}

bool find_kernel(const char* name, kernel_entry& entry) {
    kernel_table& t = table();
    std::lock_guard<std::mutex> lock(t.mutex);
    auto found = t.index_by_name.find(name);
    if (found == t.index_by_name.end()) return false;
    const stored_kernel& k = t.kernels[found->second];
    entry.name = k.name.c_str();
    entry.trampoline = k.trampoline;
    entry.parameter_count = k.parameter_count;
    entry.registered_twice = k.registered_twice;
    return true;
}

int kernel_count() {
    kernel_table& t = table();
    std::lock_guard<std::mutex> lock(t.mutex);
    return (int)t.kernels.size();
}

const char* kernel_name(int index) {
    kernel_table& t = table();
    std::lock_guard<std::mutex> lock(t.mutex);
    if (index < 0 || (std::size_t)index >= t.kernels.size()) return nullptr;
    return t.kernels[(std::size_t)index].name.c_str();
}

}  // namespace lk_simt
