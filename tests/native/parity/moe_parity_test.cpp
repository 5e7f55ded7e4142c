// Every lk_moe_* entry point of kernels/moe.cu under the SIMT emulator, with the C# launcher's geometry
// (Families/Moe/GpuMoeKernels.cs: the element-wise grid, one warp per assignment for combine_backward),
// against lk_cpu_moe_* on the same inputs. Routing tables: each token's k distinct experts of E = 6,
// sorted by expert, as the MoE layer builds them.
//
// Tolerances: gather and the products of combine_backward's d_o are exact; combine sums k + 1 terms
// (K = k + 1), dgates a dot product over the width (K = width), SwiGLU one exponential, a division and
// two products: parity::Near with K = 8 (a few ulps of each side's libm).
#include <numeric>

#include "parity.h"

namespace {

using parity::Buffer;
using parity::DType;
using parity::Launch;

constexpr uint32_t kMoeThreads = 256;
constexpr int kMoeWarps = 8;
constexpr int kEmulatedMultiprocessors = 4;  // what SimtKernelDevice reports
constexpr int kExperts = 6;

struct MoeCase {
    int T, k, width;
};

struct Routing {
    std::vector<int32_t> tokens, positions;
    std::vector<float> gates;
};

Routing MakeRouting(const MoeCase& c) {
    std::mt19937 rng((uint32_t)(c.T * 131 + c.k * 17 + c.width));
    std::vector<std::vector<int>> choice(c.T);
    for (auto& ch : choice) {
        std::vector<int> experts(kExperts);
        std::iota(experts.begin(), experts.end(), 0);
        std::shuffle(experts.begin(), experts.end(), rng);
        ch.assign(experts.begin(), experts.begin() + c.k);
    }
    Routing r{std::vector<int32_t>(c.T * c.k), std::vector<int32_t>(c.T * c.k), parity::Abs(parity::RandomValues(c.T * c.k, 5))};
    int p = 0;
    for (int e = 0; e < kExperts; ++e)
        for (int t = 0; t < c.T; ++t)
            for (int j = 0; j < c.k; ++j)
                if (choice[t][j] == e) {
                    r.tokens[p] = t;
                    r.positions[t * c.k + j] = p++;
                }
    return r;
}

class MoeParity : public ::testing::TestWithParam<MoeCase> {};

TEST_P(MoeParity, RowsMatchCpu) {
    const MoeCase c = GetParam();
    const long long P = (long long)c.T * c.k, T = c.T;
    const Routing routing = MakeRouting(c);
    std::vector<int32_t> tokens = routing.tokens, positions = routing.positions;
    Buffer x(DType::F32, parity::RandomValues((size_t)c.T * c.width, 1)), o(DType::F32, parity::RandomValues((size_t)P * c.width, 2));
    Buffer bias(DType::F32, parity::RandomValues((size_t)c.width, 3)), dy(DType::F32, parity::RandomValues((size_t)c.T * c.width, 4));
    Buffer gates(DType::F32, routing.gates);

    Buffer xs = Buffer::Poisoned(DType::F32, (size_t)P * c.width);
    ASSERT_TRUE(Launch("lk_moe_gather_f32", parity::ElementwiseGrid(P * c.width, kEmulatedMultiprocessors), kMoeThreads, 0,
                       x.data(), (const int*)tokens.data(), xs.data(), P, c.width));
    std::vector<float> want_xs((size_t)P * c.width);
    ASSERT_EQ(LK_OK, lk_cpu_moe_gather(P, c.width, x.values().data(), tokens.data(), want_xs.data()));
    EXPECT_EQ(xs.values(), want_xs);

    for (bool weighted : {true, false}) {
        SCOPED_TRACE(weighted ? "weighted, with bias" : "plain sum");
        Buffer y = Buffer::Poisoned(DType::F32, (size_t)c.T * c.width);
        const void* g = weighted ? gates.data() : nullptr;
        const void* b = weighted ? bias.data() : nullptr;
        ASSERT_TRUE(Launch("lk_moe_combine_f32", parity::ElementwiseGrid(T * c.width, kEmulatedMultiprocessors), kMoeThreads, 0,
                           o.data(), (const int*)positions.data(), g, b, y.data(), T, c.k, c.width));
        auto cpu = [&](const std::vector<float>& ov, const std::vector<float>& gv, const std::vector<float>& bv) {
            std::vector<float> out((size_t)c.T * c.width);
            EXPECT_EQ(LK_OK, lk_cpu_moe_combine(T, c.k, c.width, ov.data(), positions.data(), weighted ? gv.data() : nullptr,
                                                weighted ? bv.data() : nullptr, out.data()));
            return out;
        };
        EXPECT_TRUE(parity::Near("y", y.values(), cpu(o.values(), gates.values(), bias.values()),
                                 cpu(parity::Abs(o.values()), gates.values(), parity::Abs(bias.values())), c.k + 1, 0.0));
    }

    Buffer d_o = Buffer::Poisoned(DType::F32, (size_t)P * c.width), dgates = Buffer::Poisoned(DType::F32, (size_t)P);
    ASSERT_TRUE(Launch("lk_moe_combine_backward_f32", {(uint32_t)parity::CeilDiv(P, kMoeWarps), 1}, kMoeThreads, 0, dy.data(),
                       o.data(), (const int*)tokens.data(), gates.data(), d_o.data(), dgates.data(), P, c.width));
    auto cpu_backward = [&](const std::vector<float>& dyv, const std::vector<float>& ov, std::vector<float>* dov) {
        std::vector<float> dg((size_t)P);
        dov->resize((size_t)P * c.width);
        EXPECT_EQ(LK_OK, lk_cpu_moe_combine_backward(P, c.width, dyv.data(), ov.data(), tokens.data(), gates.values().data(),
                                                     dov->data(), dg.data()));
        return dg;
    };
    std::vector<float> want_d_o, bound_d_o;
    const std::vector<float> want_dg = cpu_backward(dy.values(), o.values(), &want_d_o);
    const std::vector<float> bound_dg = cpu_backward(parity::Abs(dy.values()), parity::Abs(o.values()), &bound_d_o);
    EXPECT_TRUE(parity::Near("d_o", d_o.values(), want_d_o, bound_d_o, 1, 0.0));
    EXPECT_TRUE(parity::Near("dgates", dgates.values(), want_dg, bound_dg, c.width, 0.0));
}

INSTANTIATE_TEST_SUITE_P(Cases, MoeParity, ::testing::Values(MoeCase{1, 1, 7}, MoeCase{7, 2, 33}, MoeCase{33, 3, 130}),
                         [](const ::testing::TestParamInfo<MoeCase>& info) {
                             return "T" + std::to_string(info.param.T) + "_k" + std::to_string(info.param.k) + "_w" +
                                    std::to_string(info.param.width);
                         });

TEST(MoeParitySwiGlu, MatchesCpu) {
    const long long n = 1031;
    std::vector<float> gv = parity::RandomValues(n, 11);
    for (float& v : gv) v *= 8.0f;
    Buffer g(DType::F32, gv), u(DType::F32, parity::RandomValues(n, 12)), dh(DType::F32, parity::RandomValues(n, 13));
    Buffer h = Buffer::Poisoned(DType::F32, n), dg = Buffer::Poisoned(DType::F32, n), du = Buffer::Poisoned(DType::F32, n);
    const parity::Grid grid = parity::ElementwiseGrid(n, kEmulatedMultiprocessors);
    ASSERT_TRUE(Launch("lk_moe_swiglu_f32", grid, kMoeThreads, 0, g.data(), u.data(), h.data(), n));
    ASSERT_TRUE(Launch("lk_moe_swiglu_backward_f32", grid, kMoeThreads, 0, g.data(), u.data(), dh.data(), dg.data(), du.data(), n));
    std::vector<float> want_h(n), want_dg(n), want_du(n);
    ASSERT_EQ(LK_OK, lk_cpu_moe_swiglu(n, g.values().data(), u.values().data(), want_h.data()));
    ASSERT_EQ(LK_OK, lk_cpu_moe_swiglu_backward(n, g.values().data(), u.values().data(), dh.values().data(), want_dg.data(),
                                                want_du.data()));
    // Bounds: |h| and |du| themselves; |dh·u|·1.1 for dg (|silu'| <= 1.1).
    std::vector<float> bound_dg(n);
    for (long long i = 0; i < n; ++i) bound_dg[i] = 1.1f * std::fabs(dh.values()[i] * u.values()[i]);
    EXPECT_TRUE(parity::Near("h", h.values(), want_h, parity::Abs(want_h), 8, 0.0));
    EXPECT_TRUE(parity::Near("du", du.values(), want_du, parity::Abs(want_du), 8, 0.0));
    EXPECT_TRUE(parity::Near("dg", dg.values(), want_dg, bound_dg, 8, 0.0));
}

}  // namespace
