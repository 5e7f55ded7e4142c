// Every lk_vera_* entry point of kernels/vera.cu under the SIMT emulator, run in the C# launcher's
// sequence (GpuBackend.Vera.cs: fold, then kernels/lora.cu's kernels with scale 1 on B' and the
// dense A slice; G = dyᵀ u and the two vector reductions), against lk_cpu_vera_forward /
// _backward / _merge on the same inputs. The layer's slices come from larger shared projections
// (vera_A [r, in + extra_in], vera_B [out + extra_out, r]); extra_in = 0 runs the launcher's
// no-copy path (A read in place). bf16 cases round the inputs to bf16 and give the CPU the rounded
// values as fp32.
//
// Tolerances: parity::Near's formula (K = the longest fp32 chain behind an output) plus, for bf16
// storage, the launcher's one extra rounding of B' and G to bf16 (relative 2^-8 per term, see
// kernels/vera.cu): + 2^-8·adapter_bound, where adapter_bound is Σ|terms| of the adapter branch
// alone (the CPU kernel on absolute values with W0 = 0).
#include "parity.h"

namespace {

using parity::Buffer;
using parity::DType;
using parity::Launch;

constexpr uint32_t kVeraThreads = 256;
constexpr int kVeraWarps = 8;
constexpr int kEmulatedMultiprocessors = 4;  // what SimtKernelDevice reports
constexpr double kBf16Intermediate = 1.0 / 256.0;  // half an ulp of bf16, as parity::kBf16Rounding

struct VeraCase {
    int M, in, out, r, extra_in, extra_out;
    DType dtype;
    float dropout_p;
};

std::string CaseName(const VeraCase& c) {
    std::ostringstream s;
    s << "M" << c.M << "_in" << c.in << "_out" << c.out << "_r" << c.r << "_maxin" << c.in + c.extra_in << "_maxout"
      << c.out + c.extra_out << "_p" << (int)std::lround(c.dropout_p * 100) << "_" << parity::Suffix(c.dtype);
    return s.str();
}

// M over decode (1, 7, 16) and tiled (17, 33, 70); in/out multiples of no tile, warp or vector;
// r over 1, 8, 17 (a partial warp in the reductions), 40 (two column blocks in grad_lambda_d).
const VeraCase kShapes[] = {
    {1, 33, 97, 8, 5, 3, DType::F32, 0.0f}, {7, 1, 33, 1, 0, 0, DType::F32, 0.0f},
    {16, 97, 33, 17, 2, 9, DType::F32, 0.0f}, {17, 33, 97, 8, 0, 1, DType::F32, 0.0f},
    {33, 97, 1, 40, 31, 0, DType::F32, 0.0f}, {70, 40, 65, 16, 7, 5, DType::F32, 0.0f},
};

std::vector<VeraCase> AllCases() {
    std::vector<VeraCase> cases;
    for (VeraCase c : kShapes)
        for (DType dtype : {DType::F32, DType::BF16})
            for (float p : {0.0f, 0.25f}) {
                c.dtype = dtype;
                c.dropout_p = p;
                cases.push_back(c);
            }
    return cases;
}

struct Inputs {
    int lda;
    Buffer x, W0, bias, vera_A, vera_B, lambda_d, lambda_b, dy;
    unsigned long long seed;

    explicit Inputs(const VeraCase& c) : lda(c.in + c.extra_in), seed(0xfeed0000ull + (unsigned long long)c.M * 7 + c.r) {
        uint32_t s = (uint32_t)(c.M * 1000003 + c.in * 1009 + c.out * 17 + c.r);
        x = Buffer(c.dtype, parity::RandomValues((size_t)c.M * c.in, s + 1));
        W0 = Buffer(c.dtype, parity::RandomValues((size_t)c.out * c.in, s + 2));
        bias = Buffer(c.dtype, parity::RandomValues((size_t)c.out, s + 3));
        vera_A = Buffer(c.dtype, parity::RandomValues((size_t)c.r * lda, s + 4));
        vera_B = Buffer(c.dtype, parity::RandomValues((size_t)(c.out + c.extra_out) * c.r, s + 5));
        lambda_d = Buffer(c.dtype, parity::RandomValues((size_t)c.r, s + 6));
        lambda_b = Buffer(c.dtype, parity::RandomValues((size_t)c.out, s + 7));
        dy = Buffer(c.dtype, parity::RandomValues((size_t)c.M * c.out, s + 8));
    }
};

// The launcher's fold: B' always, A_dense only when the slice is strided (extra_in > 0).
struct Folded {
    Buffer A_dense, B_folded;
    void* A;  // what the LoRA kernels read as A
};

Folded Fold(const VeraCase& c, Inputs& in) {
    Folded f{Buffer::Poisoned(c.dtype, c.extra_in > 0 ? (size_t)c.r * c.in : 0),
             Buffer::Poisoned(c.dtype, (size_t)c.out * c.r), nullptr};
    void* a_dense = c.extra_in > 0 ? f.A_dense.data() : nullptr;
    const int64_t total = (c.extra_in > 0 ? (int64_t)c.r * c.in : 0) + (int64_t)c.out * c.r;
    EXPECT_TRUE(Launch(parity::KernelName("lk_vera_fold", c.dtype).c_str(),
                       parity::ElementwiseGrid(total, kEmulatedMultiprocessors), kVeraThreads, 0, in.vera_A.data(),
                       in.lda, in.vera_B.data(), in.lambda_d.data(), in.lambda_b.data(), a_dense, f.B_folded.data(),
                       c.in, c.out, c.r));
    f.A = c.extra_in > 0 ? a_dense : in.vera_A.data();
    return f;
}

std::vector<float> Zeros(size_t n) { return std::vector<float>(n, 0.0f); }

class VeraParity : public ::testing::TestWithParam<VeraCase> {};

TEST_P(VeraParity, ForwardMatchesCpu) {
    const VeraCase c = GetParam();
    Inputs in(c);
    auto cpu = [&](const std::vector<float>& x, const std::vector<float>& W0, const std::vector<float>* bias,
                   const std::vector<float>& A, const std::vector<float>& B, const std::vector<float>& ld,
                   const std::vector<float>& lb, std::vector<float>* u_out) {
        std::vector<float> y((size_t)c.M * c.out), u((size_t)c.M * c.r);
        EXPECT_EQ(LK_OK, lk_cpu_vera_forward(c.M, c.in, c.out, c.r, x.data(), W0.data(), bias ? bias->data() : nullptr,
                                             A.data(), in.lda, B.data(), ld.data(), lb.data(), c.dropout_p, in.seed,
                                             y.data(), u.data()));
        if (u_out) *u_out = u;
        return y;
    };
    const std::vector<float> bias = in.bias.values(), abs_bias = parity::Abs(bias);
    std::vector<float> want_u, bound_u;
    const std::vector<float> want_y = cpu(in.x.values(), in.W0.values(), &bias, in.vera_A.values(), in.vera_B.values(),
                                          in.lambda_d.values(), in.lambda_b.values(), &want_u);
    const std::vector<float> abs_x = parity::Abs(in.x.values()), abs_A = parity::Abs(in.vera_A.values()),
                             abs_B = parity::Abs(in.vera_B.values()), abs_ld = parity::Abs(in.lambda_d.values()),
                             abs_lb = parity::Abs(in.lambda_b.values());
    const std::vector<float> bound_y =
        cpu(abs_x, parity::Abs(in.W0.values()), &abs_bias, abs_A, abs_B, abs_ld, abs_lb, &bound_u);
    const std::vector<float> adapter_y =
        cpu(abs_x, Zeros((size_t)c.out * c.in), nullptr, abs_A, abs_B, abs_ld, abs_lb, nullptr);
    const bool bf16 = c.dtype == DType::BF16;
    const double out_rounding = bf16 ? parity::kBf16Rounding : 0.0, extra = bf16 ? kBf16Intermediate : 0.0;
    const double y_chain = c.in + c.r + 4;  // x·W0ᵀ, u's in-long sums times B' over r, the fold, bias

    Folded f = Fold(c, in);
    Buffer y = Buffer::Poisoned(c.dtype, (size_t)c.M * c.out);
    Buffer u = Buffer::Poisoned(DType::F32, (size_t)c.M * c.r);
    const float scale = 1.0f;
    const auto decode = parity::DecodeGeometryFor(c.M, c.in, c.out, c.r, kEmulatedMultiprocessors,
                                                  LK_SIMT_MAX_DYNAMIC_SHARED_BYTES);
    if (decode.fits) {
        ASSERT_TRUE(Launch(parity::KernelName("lk_lora_forward_decode", c.dtype).c_str(), {decode.blocks, 1},
                           parity::kDecodeThreads, decode.shared_bytes, in.x.data(), in.W0.data(), in.bias.data(), f.A,
                           f.B_folded.data(), y.data(), (float*)u.data(), c.M, c.in, c.out, c.r, scale, c.dropout_p,
                           in.seed));
    } else {
        ASSERT_TRUE(Launch(parity::KernelName("lk_lora_project", c.dtype).c_str(), parity::TileGrid(c.M, c.r),
                           parity::kTileThreads, 0, in.x.data(), f.A, (float*)u.data(), c.M, c.in, c.r, c.dropout_p,
                           in.seed));
        ASSERT_TRUE(Launch(parity::KernelName("lk_lora_forward_tiled", c.dtype).c_str(), parity::TileGrid(c.M, c.out),
                           parity::kTileThreads, 0, in.x.data(), in.W0.data(), in.bias.data(), (const float*)u.data(),
                           f.B_folded.data(), y.data(), c.M, c.in, c.out, c.r, scale));
    }
    EXPECT_TRUE(parity::Near("u", u.values(), want_u, bound_u, c.in, 0.0));
    EXPECT_TRUE(parity::NearWithExtra("y", y.values(), want_y, bound_y, y_chain, out_rounding, adapter_y, extra));
}

TEST_P(VeraParity, BackwardMatchesCpu) {
    const VeraCase c = GetParam();
    Inputs in(c);
    const std::vector<float> u = parity::RandomValues((size_t)c.M * c.r, 99u + (uint32_t)c.r);
    struct Grads {
        std::vector<float> dx, dd, db;
    };
    auto cpu = [&](const std::vector<float>& W0, const std::vector<float>& A, const std::vector<float>& B,
                   const std::vector<float>& ld, const std::vector<float>& lb, const std::vector<float>& u_,
                   const std::vector<float>& dy) {
        Grads g{std::vector<float>((size_t)c.M * c.in), std::vector<float>((size_t)c.r),
                std::vector<float>((size_t)c.out)};
        EXPECT_EQ(LK_OK, lk_cpu_vera_backward(c.M, c.in, c.out, c.r, W0.data(), A.data(), in.lda, B.data(), ld.data(),
                                              lb.data(), u_.data(), dy.data(), c.dropout_p, in.seed, g.dx.data(),
                                              g.dd.data(), g.db.data()));
        return g;
    };
    const Grads want = cpu(in.W0.values(), in.vera_A.values(), in.vera_B.values(), in.lambda_d.values(),
                           in.lambda_b.values(), u, in.dy.values());
    const std::vector<float> abs_A = parity::Abs(in.vera_A.values()), abs_B = parity::Abs(in.vera_B.values()),
                             abs_ld = parity::Abs(in.lambda_d.values()), abs_lb = parity::Abs(in.lambda_b.values()),
                             abs_u = parity::Abs(u), abs_dy = parity::Abs(in.dy.values());
    const Grads bound = cpu(parity::Abs(in.W0.values()), abs_A, abs_B, abs_ld, abs_lb, abs_u, abs_dy);
    const Grads adapter = cpu(Zeros((size_t)c.out * c.in), abs_A, abs_B, abs_ld, abs_lb, abs_u, abs_dy);
    const bool bf16 = c.dtype == DType::BF16;
    const double out_rounding = bf16 ? parity::kBf16Rounding : 0.0, extra = bf16 ? kBf16Intermediate : 0.0;

    // The launcher's sequence: fold; du = dy B' (fp32); dx; G = dyᵀ u (storage dtype); the reductions.
    Folded f = Fold(c, in);
    Buffer u_buffer(DType::F32, u);
    Buffer du = Buffer::Poisoned(DType::F32, (size_t)c.M * c.r);
    const float scale = 1.0f;
    ASSERT_TRUE(Launch(parity::KernelName("lk_lora_grad_u", c.dtype).c_str(), parity::TileGrid(c.M, c.r),
                       parity::kTileThreads, 0, in.dy.data(), f.B_folded.data(), (float*)du.data(), c.M, c.out, c.r,
                       scale));
    Buffer dx = Buffer::Poisoned(c.dtype, (size_t)c.M * c.in);
    ASSERT_TRUE(Launch(parity::KernelName("lk_lora_grad_x", c.dtype).c_str(), parity::TileGrid(c.M, c.in),
                       parity::kTileThreads, 0, in.dy.data(), in.W0.data(), (const float*)du.data(), f.A, dx.data(),
                       c.M, c.in, c.out, c.r, c.dropout_p, in.seed));
    Buffer G = Buffer::Poisoned(c.dtype, (size_t)c.out * c.r);
    ASSERT_TRUE(Launch(parity::KernelName("lk_lora_grad_b", c.dtype).c_str(), parity::TileGrid(c.out, c.r),
                       parity::kTileThreads, 0, in.dy.data(), (const float*)u_buffer.data(), G.data(), c.M, c.out,
                       c.r, scale));
    Buffer db = Buffer::Poisoned(c.dtype, (size_t)c.out), dd = Buffer::Poisoned(c.dtype, (size_t)c.r);
    ASSERT_TRUE(Launch(parity::KernelName("lk_vera_grad_lambda_b", c.dtype).c_str(),
                       {(uint32_t)parity::CeilDiv(c.out, kVeraWarps), 1}, kVeraThreads, 0, G.data(), in.vera_B.data(),
                       in.lambda_d.data(), db.data(), c.out, c.r));
    ASSERT_TRUE(Launch(parity::KernelName("lk_vera_grad_lambda_d", c.dtype).c_str(),
                       {(uint32_t)parity::CeilDiv(c.r, 32), 1}, kVeraThreads, 0, G.data(), in.vera_B.data(),
                       in.lambda_b.data(), dd.data(), c.out, c.r));

    EXPECT_TRUE(parity::NearWithExtra("dx", dx.values(), want.dx, bound.dx, c.out + c.r + 2, out_rounding, adapter.dx, extra));
    EXPECT_TRUE(parity::NearWithExtra("dlambda_d", dd.values(), want.dd, bound.dd, c.M + c.out + 2, out_rounding, bound.dd, extra));
    EXPECT_TRUE(parity::NearWithExtra("dlambda_b", db.values(), want.db, bound.db, c.M + c.r + 2, out_rounding, bound.db, extra));
}

// Merge has no dropout, so it runs once per shape and dtype.
class VeraMergeParity : public ::testing::TestWithParam<VeraCase> {};

TEST_P(VeraMergeParity, MergeAndUnmergeMatchCpu) {
    const VeraCase c = GetParam();
    Inputs in(c);
    const bool bf16 = c.dtype == DType::BF16;
    for (float scale : {1.0f, -1.0f}) {
        std::vector<float> want = in.W0.values(), bound = parity::Abs(in.W0.values()), adapter = Zeros(want.size());
        const std::vector<float> abs_A = parity::Abs(in.vera_A.values()), abs_B = parity::Abs(in.vera_B.values()),
                                 abs_ld = parity::Abs(in.lambda_d.values()), abs_lb = parity::Abs(in.lambda_b.values());
        ASSERT_EQ(LK_OK, lk_cpu_vera_merge(c.out, c.in, c.r, want.data(), in.vera_A.values().data(), in.lda,
                                           in.vera_B.values().data(), in.lambda_d.values().data(),
                                           in.lambda_b.values().data(), scale));
        ASSERT_EQ(LK_OK, lk_cpu_vera_merge(c.out, c.in, c.r, bound.data(), abs_A.data(), in.lda, abs_B.data(),
                                           abs_ld.data(), abs_lb.data(), 1.0f));
        ASSERT_EQ(LK_OK, lk_cpu_vera_merge(c.out, c.in, c.r, adapter.data(), abs_A.data(), in.lda, abs_B.data(),
                                           abs_ld.data(), abs_lb.data(), 1.0f));
        Folded f = Fold(c, in);
        Buffer W = in.W0;
        ASSERT_TRUE(Launch(parity::KernelName("lk_lora_merge", c.dtype).c_str(), parity::TileGrid(c.out, c.in),
                           parity::kTileThreads, 0, W.data(), f.A, f.B_folded.data(), c.out, c.in, c.r, scale));
        EXPECT_TRUE(parity::NearWithExtra("W", W.values(), want, bound, c.r + 3, bf16 ? parity::kBf16Rounding : 0.0, adapter,
                             bf16 ? kBf16Intermediate : 0.0));
    }
}

INSTANTIATE_TEST_SUITE_P(Shapes, VeraParity, ::testing::ValuesIn(AllCases()),
                         [](const ::testing::TestParamInfo<VeraCase>& info) { return CaseName(info.param); });

std::vector<VeraCase> MergeCases() {
    std::vector<VeraCase> cases;
    for (const VeraCase& c : AllCases())
        if (c.dropout_p == 0.0f) cases.push_back(c);
    return cases;
}

INSTANTIATE_TEST_SUITE_P(Shapes, VeraMergeParity, ::testing::ValuesIn(MergeCases()),
                         [](const ::testing::TestParamInfo<VeraCase>& info) { return CaseName(info.param); });

}  // namespace
