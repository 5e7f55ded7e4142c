// lk_tucker_batched_matmul (kernels/tucker.cu) under the SIMT emulator against
// lk_cpu_tucker_batched_matmul on the same inputs, with the C# launcher's grid
// (Families/Tucker/GpuTuckerKernels.cs: x over column tiles of C, y over row tiles, z over the batch,
// capped at 65535, 1 when the batch is reduced).
//
// Cases: every (trans_a, trans_b); shared and per-batch operands; independent and reduced batches;
// beta 0 (C poisoned, so reading it fails) and beta 1; M, N, K past one 64 tile and one 16-deep
// slice, primes and 1; fp32 and bf16 storage.
// Tolerance: parity::Near with K = the reduction length (times the batch when reduced).
#include "parity.h"

namespace {

using parity::Buffer;
using parity::DType;
using parity::Launch;

constexpr int kMaxGridZ = 65535;

struct BatchedCase {
    int batch, M, N, K, trans_a, trans_b, shared_a, shared_b, reduce;
    float beta;
    DType dtype;
};

std::string CaseName(const BatchedCase& c) {
    std::ostringstream s;
    s << "b" << c.batch << "_M" << c.M << "_N" << c.N << "_K" << c.K << (c.trans_a ? "_At" : "_A") << (c.shared_a ? "s" : "")
      << (c.trans_b ? "_Bt" : "_B") << (c.shared_b ? "s" : "") << (c.reduce ? "_sum" : "") << (c.beta != 0.0f ? "_beta" : "")
      << "_" << parity::Suffix(c.dtype);
    return s.str();
}

std::vector<BatchedCase> AllCases() {
    std::vector<BatchedCase> cases;
    for (DType dtype : {DType::F32, DType::BF16})
        for (int ta : {0, 1})
            for (int tb : {0, 1}) {
                cases.push_back({1, 70, 65, 17, ta, tb, 0, 0, 0, 0.0f, dtype});
                cases.push_back({3, 1, 13, 33, ta, tb, 1, 0, 0, 1.0f, dtype});
                cases.push_back({5, 9, 1, 7, ta, tb, 0, 1, 0, 0.0f, dtype});
                cases.push_back({19, 5, 66, 3, ta, tb, 0, 0, 1, 1.0f, dtype});
                cases.push_back({2, 64, 64, 1, ta, tb, 1, 0, 1, 0.0f, dtype});
            }
    return cases;
}

class TuckerParity : public ::testing::TestWithParam<BatchedCase> {};

TEST_P(TuckerParity, BatchedMatmulMatchesCpu) {
    const BatchedCase c = GetParam();
    const uint32_t seed = (uint32_t)(c.batch * 7919 + c.M * 104729 + c.N * 131 + c.K * 7 + c.trans_a * 2 + c.trans_b);
    const size_t a_size = (size_t)c.M * c.K, b_size = (size_t)c.K * c.N, c_size = (size_t)c.M * c.N;
    const long long stride_a = c.shared_a ? 0 : (long long)a_size, stride_b = c.shared_b ? 0 : (long long)b_size;
    const long long stride_c = c.reduce ? 0 : (long long)c_size;
    const size_t outputs = c.reduce ? 1 : (size_t)c.batch;
    Buffer A(c.dtype, parity::RandomValues(c.shared_a ? a_size : c.batch * a_size, seed + 1));
    Buffer B(c.dtype, parity::RandomValues(c.shared_b ? b_size : c.batch * b_size, seed + 2));
    Buffer C0(c.dtype, parity::RandomValues(outputs * c_size, seed + 3));
    const float alpha = 0.875f;
    auto cpu = [&](const std::vector<float>& a, const std::vector<float>& b, std::vector<float> out) {
        EXPECT_EQ(LK_OK, lk_cpu_tucker_batched_matmul(c.batch, c.M, c.N, c.K, c.trans_a, a.data(), stride_a, c.trans_b,
                                                      b.data(), stride_b, alpha, c.beta, out.data(), stride_c, c.reduce));
        return out;
    };
    const std::vector<float> want = cpu(A.values(), B.values(), C0.values());
    const std::vector<float> bound = cpu(parity::Abs(A.values()), parity::Abs(B.values()), parity::Abs(C0.values()));
    Buffer C = c.beta == 0.0f ? Buffer::Poisoned(c.dtype, outputs * c_size) : C0;
    const parity::Grid grid{(uint32_t)parity::CeilDiv(c.N, parity::kTile), (uint32_t)parity::CeilDiv(c.M, parity::kTile),
                            c.reduce ? 1u : (uint32_t)std::min(c.batch, kMaxGridZ)};
    ASSERT_TRUE(Launch(parity::KernelName("lk_tucker_batched_matmul", c.dtype).c_str(), grid, parity::kTileThreads, 0,
                       c.batch, c.M, c.N, c.K, c.trans_a, A.data(), stride_a, c.trans_b, B.data(), stride_b, alpha,
                       c.beta, C.data(), stride_c, c.reduce));
    const double K = (double)c.K * (c.reduce ? c.batch : 1) + 2;
    EXPECT_TRUE(parity::Near("C", C.values(), want, bound, K, c.dtype == DType::BF16 ? parity::kBf16Rounding : 0.0));
}

INSTANTIATE_TEST_SUITE_P(Cases, TuckerParity, ::testing::ValuesIn(AllCases()),
                         [](const ::testing::TestParamInfo<BatchedCase>& info) { return CaseName(info.param); });

}  // namespace
