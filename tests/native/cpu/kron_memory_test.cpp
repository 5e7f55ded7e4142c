// The Kronecker adapter never allocates an [out, in] buffer: every heap allocation the CPU library makes is counted
// (this test program replaces the global operator new and delete, which the library's allocations resolve to), and
// the peak of what lk_cpu_kron_forward and lk_cpu_kron_backward allocate is compared with out·in·4 bytes, at the
// issue's benchmark shape (in = out = 4096, 64 x 64 factors, M = 512). A warm-up call first allocates what the
// library keeps between calls (each thread's GEMM packing panels), which is reported apart. The caller-owned
// workspace (M·in_m·out_k floats, a tensor of the C# device) is not on this heap and is reported from its formula.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <vector>

#include "lora_kernels.h"
#include "reference.h"

namespace {

std::atomic<long long> g_live{0}, g_peak{0};

void* counted(size_t bytes, size_t alignment) {
    // A header of `alignment` bytes (at least 16) in front of the block remembers its size.
    const size_t header = alignment < 16 ? 16 : alignment;
    void* raw = nullptr;
    if (posix_memalign(&raw, header, bytes + header) != 0) throw std::bad_alloc();
    *static_cast<size_t*>(raw) = bytes;
    const long long live = g_live.fetch_add((long long)bytes) + (long long)bytes;
    long long peak = g_peak.load();
    while (live > peak && !g_peak.compare_exchange_weak(peak, live)) {
    }
    return static_cast<char*>(raw) + header;
}

void release(void* block, size_t alignment) {
    if (block == nullptr) return;
    const size_t header = alignment < 16 ? 16 : alignment;
    void* raw = static_cast<char*>(block) - header;
    g_live.fetch_sub((long long)*static_cast<size_t*>(raw));
    std::free(raw);
}

}  // namespace

void* operator new(size_t bytes) { return counted(bytes, 16); }
void* operator new[](size_t bytes) { return counted(bytes, 16); }
void* operator new(size_t bytes, std::align_val_t a) { return counted(bytes, (size_t)a); }
void* operator new[](size_t bytes, std::align_val_t a) { return counted(bytes, (size_t)a); }
void operator delete(void* p) noexcept { release(p, 16); }
void operator delete[](void* p) noexcept { release(p, 16); }
void operator delete(void* p, size_t) noexcept { release(p, 16); }
void operator delete[](void* p, size_t) noexcept { release(p, 16); }
void operator delete(void* p, std::align_val_t a) noexcept { release(p, (size_t)a); }
void operator delete[](void* p, std::align_val_t a) noexcept { release(p, (size_t)a); }
void operator delete(void* p, size_t, std::align_val_t a) noexcept { release(p, (size_t)a); }
void operator delete[](void* p, size_t, std::align_val_t a) noexcept { release(p, (size_t)a); }

namespace {

TEST(KronMemory, ForwardAndBackwardNeverAllocateAnOutByInBuffer) {
    const int64_t M = 512, f = 64, in = f * f, out = f * f;
    cpu_test::Rng rng(7);
    const std::vector<float> x = rng.vector(M * in), W0 = rng.vector(out * in), bias = rng.vector(out),
                             w1 = rng.vector(f * f), w2 = rng.vector(f * f), dy = rng.vector(M * out);
    std::vector<float> y(M * out), dx(M * in), dw1(f * f), dw2(f * f), workspace(M * f * f);
    auto run = [&] {
        ASSERT_EQ(lk_cpu_kron_forward(M, f, f, f, f, x.data(), W0.data(), bias.data(), w1.data(), w2.data(), 0.5f,
                                      workspace.data(), y.data()),
                  LK_OK);
        ASSERT_EQ(lk_cpu_kron_backward(M, f, f, f, f, x.data(), W0.data(), w1.data(), w2.data(), dy.data(), 0.5f,
                                       workspace.data(), dx.data(), dw1.data(), dw2.data()),
                  LK_OK);
    };
    const long long before_warm_up = g_live.load();
    run();
    const long long kept = g_live.load() - before_warm_up;  // packing panels each thread keeps between calls
    const long long before = g_live.load();
    g_peak.store(before);
    run();
    const long long transient = g_peak.load() - before;
    const long long dense = out * in * (long long)sizeof(float);
    std::printf("Kronecker adapter at %lldx%lld, M = %lld: peak allocated during forward + backward %lld bytes; kept between "
                "calls %lld bytes; caller's workspace %lld bytes; an [out, in] buffer would be %lld bytes\n",
                (long long)out, (long long)in, (long long)M, transient, kept, (long long)(M * f * f * sizeof(float)), dense);
    EXPECT_LT(transient, dense / 16) << "something the size of [out, in] was allocated";
    EXPECT_LT(kept, dense / 4);
}

}  // namespace
