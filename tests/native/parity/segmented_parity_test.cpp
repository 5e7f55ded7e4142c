// Every lk_segmented_* entry point of kernels/segmented.cu under the SIMT emulator, run in the C#
// launcher's sequence (Families/Segmented/GpuSegmentedKernels.cs), against lk_cpu_segmented_forward /
// _backward on the same inputs:
//   forward, dense W0: the base through lora.cu with r = 0 (decode for M <= 16, else tiled), then u
//     zeroed, shrink, expand (y += s_a·u·B_aᵀ); with a W0 table: u zeroed, shrink, expand (the base
//     fused in, y written once);
//   backward: du zeroed, grad_u, grad_b, grad_a; dx = lora.cu's grad_x with r = 0 then grad_x adding
//     du·A_a, or grad_x alone with a W0 table.
// Segment tables come from segment_tables.h (empty segments, rows without adapter, every row its own
// adapter, a segment over two row tiles). bf16 cases round the inputs to bf16 and give the CPU the
// rounded values as fp32.
//
// Tolerances: parity::Near's formula (K = the longest fp32 chain behind an output; bound = the CPU
// kernel run on absolute values) plus, for bf16 storage with a dense base, one more bf16 rounding of
// the output: the base is stored (rounded) before the adapter term is added and rounded again, so
// + 2^-8·bound.
#include "parity.h"
#include "segment_tables.h"

namespace {

using parity::Buffer;
using parity::DType;
using parity::Launch;
using segment_tables::Layout;

constexpr int kEmulatedMultiprocessors = 4;  // what SimtKernelDevice reports

struct SegCase {
    int M, in, out, r, n_adapters;
    bool table_base;
    Layout layout;
    DType dtype;
};

std::string CaseName(const SegCase& c) {
    std::ostringstream s;
    s << "M" << c.M << "_in" << c.in << "_out" << c.out << "_r" << c.r << "_n" << c.n_adapters
      << (c.table_base ? "_grouped_" : "_dense_") << segment_tables::LayoutName(c.layout) << "_"
      << parity::Suffix(c.dtype);
    return s.str();
}

// M over decode (1, 7, 16) and tiled (17, 70, 130: a segment over two row tiles); in/out multiples
// of no tile; r over 1, 16, 17 and 65 (two column tiles of u).
const SegCase kShapes[] = {
    {1, 33, 97, 8, 3, false, Layout::RowPerAdapter, DType::F32},  {7, 40, 33, 16, 4, false, Layout::RowPerAdapter, DType::F32},
    {16, 97, 65, 17, 5, false, Layout::Random, DType::F32},       {17, 33, 70, 1, 3, false, Layout::Random, DType::F32},
    {70, 40, 65, 65, 3, false, Layout::LongSegment, DType::F32},  {130, 65, 33, 16, 2, false, Layout::LongSegment, DType::F32},
    {7, 33, 40, 8, 3, true, Layout::Random, DType::F32},          {16, 40, 33, 17, 4, true, Layout::RowPerAdapter, DType::F32},
    {70, 33, 65, 8, 3, true, Layout::LongSegment, DType::F32},    {130, 40, 33, 16, 3, true, Layout::LongSegment, DType::F32},
};

std::vector<SegCase> AllCases() {
    std::vector<SegCase> cases;
    for (SegCase c : kShapes)
        for (DType dtype : {DType::F32, DType::BF16}) {
            c.dtype = dtype;
            cases.push_back(c);
        }
    return cases;
}

struct Inputs {
    Buffer x, W0, bias, A, B, dy;
    std::vector<float> scales;
    std::vector<int32_t> segments;

    explicit Inputs(const SegCase& c) {
        uint32_t s = (uint32_t)(c.M * 1000003 + c.in * 1009 + c.out * 17 + c.r * 3 + (c.table_base ? 1 : 0));
        const int bases = c.table_base ? c.n_adapters : 1;
        x = Buffer(c.dtype, parity::RandomValues((size_t)c.M * c.in, s + 1));
        W0 = Buffer(c.dtype, parity::RandomValues((size_t)bases * c.out * c.in, s + 2));
        bias = Buffer(c.dtype, parity::RandomValues((size_t)c.out, s + 3));
        A = Buffer(c.dtype, parity::RandomValues((size_t)c.n_adapters * c.r * c.in, s + 4));
        B = Buffer(c.dtype, parity::RandomValues((size_t)c.n_adapters * c.out * c.r, s + 5));
        dy = Buffer(c.dtype, parity::RandomValues((size_t)c.M * c.out, s + 6));
        scales = parity::RandomValues((size_t)c.n_adapters, s + 7);
        std::mt19937 rng(s + 8);
        segments = segment_tables::Make([&] { return (uint32_t)rng(); }, c.M, c.n_adapters, c.table_base, c.layout);
    }
    int n_segments() const { return (int)segments.size() / 3; }
};

// The launchers' grid of a per-segment op: (segments, column tiles, row tiles of the longest segment).
struct SegGrid {
    uint32_t x, y, z;
};
SegGrid PerSegment(const Inputs& in, int columns) {
    const int64_t row_tiles = std::max<int64_t>(1, parity::CeilDiv(segment_tables::LongestSegment(in.segments), parity::kTile));
    return {(uint32_t)in.n_segments(), (uint32_t)parity::CeilDiv(columns, parity::kTile), (uint32_t)row_tiles};
}

template <class... Args>
::testing::AssertionResult Launch3(const char* kernel, SegGrid grid, Args... args) {
    void* pointers[] = {static_cast<void*>(&args)...};
    const lk_status status = lk_simt_launch(kernel, grid.x, grid.y, grid.z, parity::kTileThreads, 1, 1, 0, pointers);
    if (status == LK_OK) return ::testing::AssertionSuccess();
    char message[2048];
    lk_simt_last_error(message, sizeof message);
    return ::testing::AssertionFailure() << kernel << " failed: " << lk_status_name(status) << ": " << message;
}

// parity::Near plus extra·bound (the bf16 dense-base case's second rounding).
::testing::AssertionResult NearPlus(const std::string& what, const std::vector<float>& got, const std::vector<float>& want,
                                    const std::vector<float>& bound, double K, double out_rounding, double extra) {
    std::vector<float> widened = bound;  // Near's accumulation term is 2·K·2^-24·bound
    for (float& b : widened) b += (float)(extra * b / (2.0 * K * parity::kF32Unit));
    return parity::Near(what, got, want, widened, K, out_rounding);
}

std::vector<float> AbsScales(const std::vector<float>& s) { return parity::Abs(s); }

class SegmentedParity : public ::testing::TestWithParam<SegCase> {};

TEST_P(SegmentedParity, ForwardMatchesCpu) {
    const SegCase c = GetParam();
    Inputs in(c);
    const int n_seg = in.n_segments();
    auto cpu = [&](const std::vector<float>& x, const std::vector<float>& W0, const std::vector<float>& bias,
                   const std::vector<float>& A, const std::vector<float>& B, const std::vector<float>& scales,
                   std::vector<float>* u_out) {
        std::vector<float> y((size_t)c.M * c.out), u((size_t)c.M * c.r);
        EXPECT_EQ(LK_OK, lk_cpu_segmented_forward(c.M, c.in, c.out, c.r, c.n_adapters, x.data(),
                                                  c.table_base ? nullptr : W0.data(), c.table_base ? W0.data() : nullptr,
                                                  bias.data(), A.data(), B.data(), scales.data(), in.segments.data(),
                                                  n_seg, y.data(), u.data()));
        if (u_out) *u_out = u;
        return y;
    };
    std::vector<float> want_u, bound_u;
    const std::vector<float> want_y = cpu(in.x.values(), in.W0.values(), in.bias.values(), in.A.values(), in.B.values(),
                                          in.scales, &want_u);
    const std::vector<float> bound_y = cpu(parity::Abs(in.x.values()), parity::Abs(in.W0.values()),
                                           parity::Abs(in.bias.values()), parity::Abs(in.A.values()),
                                           parity::Abs(in.B.values()), AbsScales(in.scales), &bound_u);

    Buffer y = Buffer::Poisoned(c.dtype, (size_t)c.M * c.out);
    Buffer u(DType::F32, std::vector<float>((size_t)c.M * c.r, 0.0f));  // the launcher zeroes u first
    Buffer scales(DType::F32, in.scales);
    std::vector<int32_t> segments = in.segments;
    const void* null = nullptr;
    if (!c.table_base) {
        const float zero_scale = 0.0f, no_dropout = 0.0f;
        const unsigned long long seed = 0;
        const int no_rank = 0;
        const auto decode = parity::DecodeGeometryFor(c.M, c.in, c.out, 0, kEmulatedMultiprocessors,
                                                      LK_SIMT_MAX_DYNAMIC_SHARED_BYTES);
        if (decode.fits) {
            ASSERT_TRUE(Launch(parity::KernelName("lk_lora_forward_decode", c.dtype).c_str(), {decode.blocks, 1},
                               parity::kDecodeThreads, decode.shared_bytes, in.x.data(), in.W0.data(), in.bias.data(),
                               null, null, y.data(), (float*)nullptr, c.M, c.in, c.out, no_rank, zero_scale, no_dropout,
                               seed));
        } else {
            ASSERT_TRUE(Launch(parity::KernelName("lk_lora_forward_tiled", c.dtype).c_str(), parity::TileGrid(c.M, c.out),
                               parity::kTileThreads, 0, in.x.data(), in.W0.data(), in.bias.data(), (const float*)nullptr,
                               null, y.data(), c.M, c.in, c.out, no_rank, zero_scale));
        }
    }
    ASSERT_TRUE(Launch3(parity::KernelName("lk_segmented_shrink", c.dtype).c_str(), PerSegment(in, c.r), in.x.data(),
                        in.A.data(), (const int*)segments.data(), (float*)u.data(), c.in, c.r));
    ASSERT_TRUE(Launch3(parity::KernelName("lk_segmented_expand", c.dtype).c_str(), PerSegment(in, c.out), in.x.data(),
                        c.table_base ? in.W0.data() : null, c.table_base ? in.bias.data() : null,
                        (const float*)u.data(), in.B.data(), (const float*)scales.data(), (const int*)segments.data(),
                        y.data(), c.in, c.out, c.r));
    const bool bf16 = c.dtype == DType::BF16;
    const double extra = bf16 && !c.table_base ? parity::kBf16Rounding : 0.0;
    EXPECT_TRUE(parity::Near("u", u.values(), want_u, bound_u, c.in, 0.0));
    EXPECT_TRUE(NearPlus("y", y.values(), want_y, bound_y, c.in + c.r + 2, bf16 ? parity::kBf16Rounding : 0.0, extra));
}

TEST_P(SegmentedParity, BackwardMatchesCpu) {
    const SegCase c = GetParam();
    Inputs in(c);
    const int n_seg = in.n_segments();
    const std::vector<float> u_values = parity::RandomValues((size_t)c.M * c.r, 99);
    auto cpu = [&](const std::vector<float>& x, const std::vector<float>& W0, const std::vector<float>& A,
                   const std::vector<float>& B, const std::vector<float>& scales, const std::vector<float>& u,
                   const std::vector<float>& dy, std::vector<float>* dx, std::vector<float>* dA, std::vector<float>* dB) {
        dx->assign((size_t)c.M * c.in, 0.0f);
        dA->assign((size_t)c.n_adapters * c.r * c.in, 0.0f);
        dB->assign((size_t)c.n_adapters * c.out * c.r, 0.0f);
        EXPECT_EQ(LK_OK, lk_cpu_segmented_backward(c.M, c.in, c.out, c.r, c.n_adapters, x.data(),
                                                   c.table_base ? nullptr : W0.data(), c.table_base ? W0.data() : nullptr,
                                                   A.data(), B.data(), scales.data(), u.data(), dy.data(),
                                                   in.segments.data(), n_seg, dx->data(), dA->data(), dB->data()));
    };
    std::vector<float> want_dx, want_dA, want_dB, bound_dx, bound_dA, bound_dB;
    cpu(in.x.values(), in.W0.values(), in.A.values(), in.B.values(), in.scales, u_values, in.dy.values(), &want_dx,
        &want_dA, &want_dB);
    cpu(parity::Abs(in.x.values()), parity::Abs(in.W0.values()), parity::Abs(in.A.values()), parity::Abs(in.B.values()),
        AbsScales(in.scales), parity::Abs(u_values), parity::Abs(in.dy.values()), &bound_dx, &bound_dA, &bound_dB);

    Buffer u(DType::F32, u_values), scales(DType::F32, in.scales);
    Buffer du(DType::F32, std::vector<float>((size_t)c.M * c.r, 0.0f));  // the launcher zeroes du first
    Buffer dx = Buffer::Poisoned(c.dtype, (size_t)c.M * c.in);
    Buffer dA = Buffer::Poisoned(c.dtype, (size_t)c.n_adapters * c.r * c.in);
    Buffer dB = Buffer::Poisoned(c.dtype, (size_t)c.n_adapters * c.out * c.r);
    std::vector<int32_t> segments = in.segments;
    const void* null = nullptr;
    ASSERT_TRUE(Launch3(parity::KernelName("lk_segmented_grad_u", c.dtype).c_str(), PerSegment(in, c.r), in.dy.data(),
                        in.B.data(), (const float*)scales.data(), (const int*)segments.data(), (float*)du.data(), c.out,
                        c.r));
    const SegGrid per_adapter_b{(uint32_t)c.n_adapters, (uint32_t)parity::CeilDiv(c.out, parity::kTile),
                                (uint32_t)parity::CeilDiv(c.r, parity::kTile)};
    ASSERT_TRUE(Launch3(parity::KernelName("lk_segmented_grad_b", c.dtype).c_str(), per_adapter_b, in.dy.data(),
                        (const float*)u.data(), (const float*)scales.data(), (const int*)segments.data(), n_seg, dB.data(),
                        c.out, c.r));
    const SegGrid per_adapter_a{(uint32_t)c.n_adapters, (uint32_t)parity::CeilDiv(c.r, parity::kTile),
                                (uint32_t)parity::CeilDiv(c.in, parity::kTile)};
    ASSERT_TRUE(Launch3(parity::KernelName("lk_segmented_grad_a", c.dtype).c_str(), per_adapter_a, (const float*)du.data(),
                        in.x.data(), (const int*)segments.data(), n_seg, dA.data(), c.in, c.r));
    if (!c.table_base) {
        const float no_dropout = 0.0f;
        const unsigned long long seed = 0;
        const int no_rank = 0;
        ASSERT_TRUE(Launch(parity::KernelName("lk_lora_grad_x", c.dtype).c_str(), parity::TileGrid(c.M, c.in),
                           parity::kTileThreads, 0, in.dy.data(), in.W0.data(), (const float*)nullptr, null, dx.data(), c.M,
                           c.in, c.out, no_rank, no_dropout, seed));
    }
    ASSERT_TRUE(Launch3(parity::KernelName("lk_segmented_grad_x", c.dtype).c_str(), PerSegment(in, c.in), in.dy.data(),
                        c.table_base ? in.W0.data() : null, (const float*)du.data(), in.A.data(),
                        (const int*)segments.data(), dx.data(), c.in, c.out, c.r));
    const bool bf16 = c.dtype == DType::BF16;
    const double rounding = bf16 ? parity::kBf16Rounding : 0.0;
    EXPECT_TRUE(NearPlus("dx", dx.values(), want_dx, bound_dx, c.out + c.r + 2, rounding,
                         bf16 && !c.table_base ? parity::kBf16Rounding : 0.0));
    EXPECT_TRUE(parity::Near("dB", dB.values(), want_dB, bound_dB, c.M, rounding));
    EXPECT_TRUE(parity::Near("dA", dA.values(), want_dA, bound_dA, c.M + c.out, rounding));
}

INSTANTIATE_TEST_SUITE_P(Cases, SegmentedParity, ::testing::ValuesIn(AllCases()),
                         [](const ::testing::TestParamInfo<SegCase>& info) { return CaseName(info.param); });

}  // namespace
