// Every lk_nf4_* entry point of kernels/nf4.cu (fp32 and bf16) under the SIMT emulator, launched
// with the C# launcher's geometry (GpuBackend.Nf4.cs), against the CPU functions of
// lora_kernels_nf4.h on the same inputs:
//   * quantize, dequantize and double quantization bit for bit (bf16 input is rounded to bf16
//     first and the CPU quantizes the rounded values; bf16 output is the CPU's fp32 rounded);
//     the mean of absmax (the offset) within the tolerance of two summation orders, the nested
//     codes then bit for bit given the same offset;
//   * matmul, QLoRA forward and grad_x within parity::Near's formula, against the CPU's
//     lk_cpu_nf4_matmul / lk_cpu_qlora_forward / lk_cpu_qlora_backward.
// Weights are quantized by the CPU once per case, so the matmul cases test the consumers on
// identical codes and statistics.
#include "parity.h"
#include "quant_codes.cuh"

namespace {

using parity::Buffer;
using parity::CeilDiv;
using parity::DType;
using parity::Launch;
using parity::Near;

// ---- GpuBackend.Nf4.cs's geometry ----------------------------------------------------------------
constexpr uint32_t kQuantizeThreads = 256;  // 8 warps, one quantization block each
constexpr int kQuantizeBlocksPerLaunchBlock = 8;
constexpr uint32_t kNestedThreads = 256;    // one thread per first-level absmax of a nested block
constexpr int kDecodeTableWords = kLkQuantTableWords;  // kernels/quant_codes.cuh
constexpr int kMultiprocessors = 4;         // what SimtKernelDevice reports

// GpuBackend.Nf4DecodeGeometry: lora's decode geometry with the 272 table words in front.
parity::DecodeGeometry Nf4DecodeGeometry(int M, int in, int out, int r, int multiprocessors,
                                         int max_dynamic_shared_bytes) {
    parity::DecodeGeometry g = parity::DecodeGeometryFor(M, in, out, r, multiprocessors,
                                                         max_dynamic_shared_bytes - 4 * kDecodeTableWords);
    if (g.fits) g.shared_bytes += 4 * kDecodeTableWords;
    return g;
}

// ---- inputs ----------------------------------------------------------------------------------------
// Weights shaped like a trained layer's (normal), plus an all-zero block, exact zeros and, in
// a block whose absmax is exactly 1, every NF4 midpoint and FP4 threshold (the tie rule) and
// a tiny negative value (FP4's -0 code).
std::vector<float> WeightValues(int64_t n, int blocksize, uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal(0.0f, 0.5f);
    std::vector<float> w((size_t)n);
    for (float& v : w) v = normal(rng);
    const uint32_t special[] = {0xbf591cd8u, 0xbf1c5270u, 0xbeeb8480u, 0xbeadea76u, 0xbe703cecu, 0xbe0d38bcu,
                                0xbd3a7871u, 0x3d22faffu, 0x3df64862u, 0x3e5067e0u, 0x3e9582d4u, 0x3ec753f9u,
                                0x3f006d04u, 0x3f248dafu, 0x3f5c89dau, 0x3e955555u, 0x3f155550u, 0x3f555555u,
                                0x3ed55556u, 0x3db00000u, 0x3e555555u, 0x3b2aaab9u, 0xbb2aaab9u, 0xb0000000u};
    if (n >= 3 * blocksize) {
        std::fill(w.begin() + blocksize, w.begin() + 2 * blocksize, 0.0f);  // block 1: all zero
        float* b2 = w.data() + 2 * blocksize;                                // block 2: ties, absmax 1
        b2[0] = 1.0f;
        for (size_t i = 0; i < sizeof special / sizeof special[0] && i + 1 < (size_t)blocksize; ++i) {
            float f;
            std::memcpy(&f, &special[i], sizeof f);
            b2[i + 1] = f;
        }
        b2[blocksize - 1] = 0.0f;
    }
    return w;
}

// CPU quantization of a weight: codes, plain absmax and its nested statistics.
struct Quantized {
    int quant_type;
    int blocksize;
    int64_t n;
    std::vector<uint8_t> codes, qabsmax;
    std::vector<float> absmax, absmax2;
    float offset = 0.0f;

    lk_quant_stats Stats(bool nested) const {
        lk_quant_stats s{};
        s.quant_type = quant_type;
        s.blocksize = blocksize;
        s.absmax = nested ? nullptr : absmax.data();
        s.qabsmax = nested ? qabsmax.data() : nullptr;
        s.absmax2 = nested ? absmax2.data() : nullptr;
        s.offset = nested ? offset : 0.0f;
        return s;
    }
};

Quantized CpuQuantize(const std::vector<float>& w, int blocksize, int quant_type) {
    Quantized q{quant_type, blocksize, (int64_t)w.size(), {}, {}, {}, {}};
    const int64_t nblocks = CeilDiv(q.n, blocksize);
    q.codes.resize((size_t)(q.n + 1) / 2);
    q.absmax.resize((size_t)nblocks);
    q.qabsmax.resize((size_t)nblocks);
    q.absmax2.resize((size_t)CeilDiv(nblocks, LK_NESTED_BLOCKSIZE));
    EXPECT_EQ(LK_OK, lk_cpu_quantize_4bit(quant_type, q.n, blocksize, w.data(), q.codes.data(), q.absmax.data()));
    EXPECT_EQ(LK_OK, lk_cpu_double_quantize(nblocks, q.absmax.data(), q.qabsmax.data(), q.absmax2.data(), &q.offset));
    return q;
}

const char* QuantName(int quant_type) {
    return quant_type == LK_QUANT_NF4 ? "nf4" : "fp4";
}

// Equal bit for bit (so -0.0 differs from 0.0 and NaN from everything).
template <class V>
::testing::AssertionResult Bitwise(const std::string& what, const V& got, const V& want) {
    if (got.size() != want.size())
        return ::testing::AssertionFailure()
               << what << ": sizes differ (" << got.size() << " vs " << want.size() << ")";
    int bad = 0;
    std::ostringstream first;
    for (size_t i = 0; i < want.size(); ++i) {
        if (std::memcmp(&got[i], &want[i], sizeof want[i]) == 0) continue;
        if (bad++ == 0) first << "[" << i << "] got " << +got[i] << " want " << +want[i];
    }
    if (bad == 0) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << what << ": " << bad << " of " << want.size() << " differ, first "
                                         << first.str();
}

// ---- format cases: quantize, dequantize, double quantization --------------------------------------
struct FormatCase {
    int64_t n;
    int blocksize;
    int quant_type;
    DType dtype;
};

std::string FormatName(const FormatCase& c) {
    return "n" + std::to_string(c.n) + "_bs" + std::to_string(c.blocksize) + "_" + QuantName(c.quant_type) + "_" +
           parity::Suffix(c.dtype);
}

// n: one element, odd counts (padding nibble), a partial last block, 3 blocks with the special
// ones, and enough blocks for several nested blocks with a partial last one (300·64, 2·256 + 7
// blocks of 32).
std::vector<FormatCase> FormatCases() {
    std::vector<FormatCase> cases;
    const std::pair<int64_t, int> shapes[] = {{1, 64},    {97, 32},    {679, 32},    {3 * 128 + 5, 128},
                                              {768, 256}, {19200, 64}, {519 * 32, 32}, {4097, 4096}};
    for (const auto& s : shapes)
        for (int quant_type : {LK_QUANT_NF4, LK_QUANT_FP4})
            for (DType dtype : {DType::F32, DType::BF16}) cases.push_back({s.first, s.second, quant_type, dtype});
    return cases;
}

class Nf4FormatParity : public ::testing::TestWithParam<FormatCase> {};

TEST_P(Nf4FormatParity, QuantizeDequantizeAndDoubleQuantizeMatchCpuBitwise) {
    const FormatCase c = GetParam();
    const int64_t nblocks = CeilDiv(c.n, c.blocksize);
    Buffer w(c.dtype, WeightValues(c.n, c.blocksize, (uint32_t)(c.n * 7 + c.blocksize)));
    const Quantized want = CpuQuantize(w.values(), c.blocksize, c.quant_type);

    // quantize
    std::vector<uint8_t> codes((size_t)(c.n + 1) / 2, 0xa5);
    std::vector<float> absmax = Buffer::Poisoned(DType::F32, (size_t)nblocks).values();
    ASSERT_TRUE(Launch(parity::KernelName("lk_nf4_quantize", c.dtype).c_str(),
                       {(uint32_t)CeilDiv(nblocks, kQuantizeBlocksPerLaunchBlock), 1}, kQuantizeThreads, 0,
                       (const void*)w.data(), (unsigned char*)codes.data(), absmax.data(), (long long)c.n,
                       c.blocksize, c.quant_type));
    EXPECT_TRUE(Bitwise("codes", codes, want.codes));
    EXPECT_TRUE(Bitwise("absmax", absmax, want.absmax));

    // absmax mean: the CPU sums pairwise in fp32 (runs of up to 8 left to right, then
    // ⌈log2 ⌈n/8⌉⌉ levels of halves) and divides in fp32, so it errs by at most
    // (min(n, 8) + ⌈log2 ⌈n/8⌉⌉)·2^-24 relative (the absmax are positive); the kernel sums in
    // double and rounds once (2^-24).
    std::vector<float> offset(1, std::nanf(""));
    ASSERT_TRUE(Launch("lk_nf4_absmax_mean_f32", {1, 1}, kNestedThreads, 0, (const float*)want.absmax.data(),
                       offset.data(), (long long)nblocks));
    const double offset_tol = (std::min<double>((double)nblocks, 8.0) +
                               std::ceil(std::log2((double)CeilDiv(nblocks, 8))) + 1.0) *
                              parity::kF32Unit * want.offset;
    EXPECT_NEAR(want.offset, offset[0], offset_tol) << "offset";

    // double quantization given the CPU's offset: bit for bit.
    const std::vector<float> cpu_offset(1, want.offset);
    std::vector<uint8_t> qabsmax((size_t)nblocks, 0xa5);
    std::vector<float> absmax2 = Buffer::Poisoned(DType::F32, want.absmax2.size()).values();
    ASSERT_TRUE(Launch("lk_nf4_double_quantize_f32", {(uint32_t)CeilDiv(nblocks, LK_NESTED_BLOCKSIZE), 1},
                       kNestedThreads, 0, (const float*)want.absmax.data(), (unsigned char*)qabsmax.data(),
                       absmax2.data(), (const float*)cpu_offset.data(), (long long)nblocks));
    EXPECT_TRUE(Bitwise("qabsmax", qabsmax, want.qabsmax));
    EXPECT_TRUE(Bitwise("absmax2", absmax2, want.absmax2));

    // dequantize, plain and nested, in the case's dtype.
    for (bool nested : {false, true}) {
        const lk_quant_stats stats = want.Stats(nested);
        std::vector<float> deq((size_t)c.n);
        ASSERT_EQ(LK_OK, lk_cpu_dequantize_4bit(c.n, want.codes.data(), &stats, deq.data()));
        const Buffer expected(c.dtype, deq);
        Buffer got = Buffer::Poisoned(c.dtype, (size_t)c.n);
        ASSERT_TRUE(Launch(parity::KernelName("lk_nf4_dequantize", c.dtype).c_str(),
                           parity::ElementwiseGrid((c.n + 1) / 2, kMultiprocessors), parity::kElementwiseThreads, 0,
                           (const unsigned char*)want.codes.data(), stats.absmax, (const unsigned char*)stats.qabsmax,
                           stats.absmax2, stats.offset, got.data(), (long long)c.n, c.blocksize, c.quant_type));
        EXPECT_TRUE(Bitwise(nested ? "dequantized (nested)" : "dequantized (plain)", got.values(), expected.values()));
    }
}

INSTANTIATE_TEST_SUITE_P(Shapes, Nf4FormatParity, ::testing::ValuesIn(FormatCases()),
                         [](const ::testing::TestParamInfo<FormatCase>& info) { return FormatName(info.param); });

// The whole GPU double-quantization chain on one block: the mean of one value is that value,
// so absmax2 = 0 and the code is 127 (0.0), which decodes to 0·0 + offset, the absmax exactly.
TEST(Nf4FormatParitySingle, OneBlockDoubleQuantizesToTheOffsetExactly) {
    const std::vector<float> absmax = {0.8125f};
    std::vector<float> offset(1), absmax2(1, -1.0f);
    std::vector<uint8_t> qabsmax(1, 0);
    ASSERT_TRUE(Launch("lk_nf4_absmax_mean_f32", {1, 1}, kNestedThreads, 0, absmax.data(), offset.data(), 1ll));
    ASSERT_TRUE(Launch("lk_nf4_double_quantize_f32", {1, 1}, kNestedThreads, 0, absmax.data(),
                       (unsigned char*)qabsmax.data(), absmax2.data(), (const float*)offset.data(), 1ll));
    EXPECT_EQ(0.8125f, offset[0]);
    EXPECT_EQ(0.0f, absmax2[0]);
    EXPECT_EQ(127, qabsmax[0]);
}

// ---- matmul, QLoRA forward, grad_x ------------------------------------------------------------------
struct MatmulCase {
    int M, in, out, r, blocksize, quant_type;
    bool nested, bias;
    float dropout_p;
    DType dtype;
};

std::string MatmulName(const MatmulCase& c) {
    std::ostringstream s;
    s << "M" << c.M << "_in" << c.in << "_out" << c.out << "_r" << c.r << "_bs" << c.blocksize << "_"
      << QuantName(c.quant_type) << (c.nested ? "_nested" : "_plain") << (c.bias ? "_bias" : "_nobias") << "_p"
      << (int)std::lround(c.dropout_p * 100) << "_" << parity::Suffix(c.dtype);
    return s.str();
}

// Shapes: M over 1, 7, 16 (decode), 17, 33, 140 (tiled); `in` a multiple of 32 (decode's 16-byte
// path) or not (its byte path; blocks then cross rows), past decode's 2048-column chunk, and
// never a multiple of the 64-wide tiles in both dimensions; blocksizes 32..256.
struct MatmulShape {
    int M, in, out, r, blocksize;
};
const MatmulShape kMatmulShapes[] = {
    {1, 97, 33, 8, 64}, {7, 64, 70, 4, 32},  {16, 96, 19, 16, 128}, {17, 33, 65, 8, 256},
    {33, 160, 40, 1, 32}, {5, 2080, 12, 4, 64}, {3, 2049, 5, 2, 256}, {1, 1, 1, 1, 32},
    {140, 256, 136, 16, 64},  // tensor cores: several 128 x 128 tiles, cp.async for x, rows of W across tiles
};

// Per shape: both dtypes × dropout 0 / 0.25; NF4/FP4 × plain/nested cycle over the four
// variants, shifted per shape, so every shape sees each format and every format both dtypes.
std::vector<MatmulCase> MatmulCases() {
    std::vector<MatmulCase> cases;
    int shape_index = 0;
    for (const MatmulShape& s : kMatmulShapes) {
        int variant = 0;
        for (DType dtype : {DType::F32, DType::BF16})
            for (float p : {0.0f, 0.25f}) {
                const int format = (variant + shape_index) % 4;
                cases.push_back({s.M, s.in, s.out, s.r, s.blocksize, format / 2 == 0 ? LK_QUANT_NF4 : LK_QUANT_FP4,
                                 format % 2 == 1, (variant + shape_index) % 3 != 0, p, dtype});
                ++variant;
            }
        ++shape_index;
    }
    return cases;
}

struct MatmulInputs {
    Buffer x, bias, A, B, dy;
    Quantized q;
    std::vector<float> deq;  // deq(W) in fp32, for the bounds
    float scale = 0.75f;
    unsigned long long seed;

    explicit MatmulInputs(const MatmulCase& c) : seed(0x9f4ull * 1000 + (unsigned long long)c.M * 31 + c.in) {
        const uint32_t s = (uint32_t)(c.M * 1000003 + c.in * 1009 + c.out * 17 + c.r + c.blocksize);
        x = Buffer(c.dtype, parity::RandomValues((size_t)c.M * c.in, s + 1));
        bias = Buffer(c.dtype, parity::RandomValues((size_t)c.out, s + 2));
        A = Buffer(c.dtype, parity::RandomValues((size_t)c.r * c.in, s + 3));
        B = Buffer(c.dtype, parity::RandomValues((size_t)c.out * c.r, s + 4));
        dy = Buffer(c.dtype, parity::RandomValues((size_t)c.M * c.out, s + 5));
        // W as the C# side quantizes it from its dtype: the rounded values.
        const Buffer w(c.dtype, parity::RandomValues((size_t)c.out * c.in, s + 6));
        q = CpuQuantize(w.values(), c.blocksize, c.quant_type);
        const lk_quant_stats stats = q.Stats(c.nested);
        deq.resize((size_t)c.out * c.in);
        EXPECT_EQ(LK_OK, lk_cpu_dequantize_4bit((int64_t)deq.size(), q.codes.data(), &stats, deq.data()));
    }
};

class Nf4MatmulParity : public ::testing::TestWithParam<MatmulCase> {};

TEST_P(Nf4MatmulParity, MatmulQloraForwardAndGradXMatchCpu) {
    const MatmulCase c = GetParam();
    MatmulInputs in(c);
    const lk_quant_stats stats = in.q.Stats(c.nested);
    const std::vector<float> x = in.x.values(), A = in.A.values(), B = in.B.values(), dy = in.dy.values();
    const std::vector<float> bias = in.bias.values();
    const std::vector<float> *bias_values = c.bias ? &bias : nullptr;
    void* bias_ptr = c.bias ? in.bias.data() : nullptr;
    const double out_rounding = c.dtype == DType::BF16 ? parity::kBf16Rounding : 0.0;
    const auto* codes = (const unsigned char*)in.q.codes.data();
    const auto* qabsmax = (const unsigned char*)stats.qabsmax;

    // CPU references; bounds from the same products on absolute values (deq(W) dense, through
    // lk_cpu_lora_forward/backward, which lk_cpu_qlora_* equal up to rounding order).
    std::vector<float> want_mm((size_t)c.M * c.out), want_y((size_t)c.M * c.out), want_u((size_t)c.M * c.r);
    ASSERT_EQ(LK_OK, lk_cpu_nf4_matmul(c.M, c.in, c.out, x.data(), in.q.codes.data(), &stats,
                                       bias_values ? bias.data() : nullptr, want_mm.data()));
    ASSERT_EQ(LK_OK, lk_cpu_qlora_forward(c.M, c.in, c.out, c.r, x.data(), in.q.codes.data(), &stats,
                                          bias_values ? bias.data() : nullptr, A.data(), B.data(), in.scale,
                                          c.dropout_p, in.seed, want_y.data(), want_u.data()));
    const std::vector<float> abs_bias = parity::Abs(bias);
    std::vector<float> bound_mm((size_t)c.M * c.out), bound_y((size_t)c.M * c.out), bound_u((size_t)c.M * c.r);
    ASSERT_EQ(LK_OK, lk_cpu_lora_forward(c.M, c.in, c.out, 0, parity::Abs(x).data(), parity::Abs(in.deq).data(),
                                         c.bias ? abs_bias.data() : nullptr, nullptr, nullptr, 0.0f, 0.0f, in.seed,
                                         bound_mm.data(), nullptr));
    ASSERT_EQ(LK_OK, lk_cpu_lora_forward(c.M, c.in, c.out, c.r, parity::Abs(x).data(), parity::Abs(in.deq).data(),
                                         c.bias ? abs_bias.data() : nullptr, parity::Abs(A).data(),
                                         parity::Abs(B).data(), in.scale, c.dropout_p, in.seed, bound_y.data(),
                                         bound_u.data()));
    const double mm_chain = c.in + 1;          // x·deq(W)ᵀ plus bias
    const double y_chain = c.in + c.r + 2;     // plus u's in-long sums times B over r

    // Decode (M <= 16) with 1 and 4 multiprocessors: blocks own all and a share of W's rows.
    if (c.M <= parity::kDecodeMaxTokens) {
        for (int multiprocessors : {1, kMultiprocessors}) {
            const auto g = Nf4DecodeGeometry(c.M, c.in, c.out, c.r, multiprocessors, LK_SIMT_MAX_DYNAMIC_SHARED_BYTES);
            ASSERT_TRUE(g.fits) << "decode should fit the emulator's shared memory";
            const auto g0 = Nf4DecodeGeometry(c.M, c.in, c.out, 0, multiprocessors, LK_SIMT_MAX_DYNAMIC_SHARED_BYTES);
            const std::string where = "decode with " + std::to_string(g.blocks) + " blocks: ";
            Buffer mm = Buffer::Poisoned(c.dtype, (size_t)c.M * c.out);
            ASSERT_TRUE(Launch(parity::KernelName("lk_nf4_matmul_decode", c.dtype).c_str(), {g0.blocks, 1},
                               parity::kDecodeThreads, g0.shared_bytes, in.x.data(), codes, stats.absmax, qabsmax,
                               stats.absmax2, stats.offset, bias_ptr, mm.data(), c.M, c.in, c.out, c.blocksize,
                               c.quant_type));
            EXPECT_TRUE(Near(where + "matmul y", mm.values(), want_mm, bound_mm, mm_chain, out_rounding));
            Buffer y = Buffer::Poisoned(c.dtype, (size_t)c.M * c.out);
            Buffer u = Buffer::Poisoned(DType::F32, (size_t)c.M * c.r);
            ASSERT_TRUE(Launch(parity::KernelName("lk_nf4_qlora_forward_decode", c.dtype).c_str(), {g.blocks, 1},
                               parity::kDecodeThreads, g.shared_bytes, in.x.data(), codes, stats.absmax, qabsmax,
                               stats.absmax2, stats.offset, bias_ptr, in.A.data(), in.B.data(), y.data(),
                               (float*)u.data(), c.M, c.in, c.out, c.r, c.blocksize, c.quant_type, in.scale,
                               c.dropout_p, in.seed));
            EXPECT_TRUE(Near(where + "qlora u", u.values(), want_u, bound_u, c.in, 0.0));
            EXPECT_TRUE(Near(where + "qlora y", y.values(), want_y, bound_y, y_chain, out_rounding));
        }
    }

    // Tiled: the matmul, and the QLoRA forward after lk_lora_project (the C# path for M > 16).
    Buffer mm = Buffer::Poisoned(c.dtype, (size_t)c.M * c.out);
    ASSERT_TRUE(Launch(parity::KernelName("lk_nf4_matmul_tiled", c.dtype).c_str(), parity::TileGrid(c.M, c.out),
                       parity::kTileThreads, 0, in.x.data(), codes, stats.absmax, qabsmax, stats.absmax2, stats.offset,
                       bias_ptr, mm.data(), c.M, c.in, c.out, c.blocksize, c.quant_type));
    EXPECT_TRUE(Near("tiled: matmul y", mm.values(), want_mm, bound_mm, mm_chain, out_rounding));
    Buffer u = Buffer::Poisoned(DType::F32, (size_t)c.M * c.r);
    ASSERT_TRUE(Launch(parity::KernelName("lk_lora_project", c.dtype).c_str(), parity::TileGrid(c.M, c.r),
                       parity::kTileThreads, 0, in.x.data(), in.A.data(), (float*)u.data(), c.M, c.in, c.r,
                       c.dropout_p, in.seed));
    Buffer y = Buffer::Poisoned(c.dtype, (size_t)c.M * c.out);
    ASSERT_TRUE(Launch(parity::KernelName("lk_nf4_qlora_forward_tiled", c.dtype).c_str(),
                       parity::TileGrid(c.M, c.out), parity::kTileThreads, 0, in.x.data(), codes, stats.absmax, qabsmax,
                       stats.absmax2, stats.offset, bias_ptr, (const float*)u.data(), in.B.data(), y.data(), c.M, c.in,
                       c.out, c.r, c.blocksize, c.quant_type, in.scale));
    EXPECT_TRUE(Near("tiled: qlora y", y.values(), want_y, bound_y, y_chain, out_rounding));

    // The tensor-core kernels (bf16 on sm_80+): deq(W) rounded to bf16 as it is staged.
    if (c.dtype == DType::BF16) {
        const auto grid = parity::MmaTileGrid(c.M, c.out);
        Buffer mm_mma = Buffer::Poisoned(c.dtype, (size_t)c.M * c.out);
        ASSERT_TRUE(Launch("lk_nf4_matmul_mma_bf16", grid, parity::kMmaThreads, parity::kMmaSharedBytes, in.x.data(),
                           codes, stats.absmax, qabsmax, stats.absmax2, stats.offset, bias_ptr, mm_mma.data(), c.M, c.in,
                           c.out, c.blocksize, c.quant_type));
        EXPECT_TRUE(Near("tensor cores: matmul y", mm_mma.values(), want_mm, bound_mm, mm_chain, out_rounding,
                         parity::kBf16TermRounding));
        Buffer y_mma = Buffer::Poisoned(c.dtype, (size_t)c.M * c.out);
        ASSERT_TRUE(Launch("lk_nf4_qlora_forward_mma_bf16", grid, parity::kMmaThreads, parity::kMmaSharedBytes,
                           in.x.data(), codes, stats.absmax, qabsmax, stats.absmax2, stats.offset, bias_ptr,
                           (const float*)u.data(), in.B.data(), y_mma.data(), c.M, c.in, c.out, c.r, c.blocksize,
                           c.quant_type, in.scale));
        EXPECT_TRUE(Near("tensor cores: qlora y", y_mma.values(), want_y, bound_y, y_chain, out_rounding,
                         parity::kBf16TermRounding));
    }

    // grad_x after lk_lora_grad_u, as the C# backward does.
    std::vector<float> want_dx((size_t)c.M * c.in), bound_dx((size_t)c.M * c.in);
    ASSERT_EQ(LK_OK, lk_cpu_qlora_backward(c.M, c.in, c.out, c.r, x.data(), in.q.codes.data(), &stats, A.data(),
                                           B.data(), want_u.data(), dy.data(), in.scale, c.dropout_p, in.seed,
                                           want_dx.data(), nullptr, nullptr));
    ASSERT_EQ(LK_OK, lk_cpu_lora_backward(c.M, c.in, c.out, c.r, parity::Abs(x).data(), parity::Abs(in.deq).data(),
                                          parity::Abs(A).data(), parity::Abs(B).data(), bound_u.data(),
                                          parity::Abs(dy).data(), in.scale, c.dropout_p, in.seed, bound_dx.data(),
                                          nullptr, nullptr));
    Buffer du = Buffer::Poisoned(DType::F32, (size_t)c.M * c.r);
    ASSERT_TRUE(Launch(parity::KernelName("lk_lora_grad_u", c.dtype).c_str(), parity::TileGrid(c.M, c.r),
                       parity::kTileThreads, 0, in.dy.data(), in.B.data(), (float*)du.data(), c.M, c.out, c.r,
                       in.scale));
    Buffer dx = Buffer::Poisoned(c.dtype, (size_t)c.M * c.in);
    ASSERT_TRUE(Launch(parity::KernelName("lk_nf4_grad_x", c.dtype).c_str(), parity::TileGrid(c.M, c.in),
                       parity::kTileThreads, 0, in.dy.data(), codes, stats.absmax, qabsmax, stats.absmax2,
                       stats.offset, (const float*)du.data(), in.A.data(), dx.data(), c.M, c.in, c.out, c.r,
                       c.blocksize, c.quant_type, c.dropout_p, in.seed));
    EXPECT_TRUE(Near("grad_x: dx", dx.values(), want_dx, bound_dx, c.out + c.r, out_rounding));

    if (c.dtype == DType::BF16) {
        Buffer dx_mma = Buffer::Poisoned(c.dtype, (size_t)c.M * c.in);
        ASSERT_TRUE(Launch("lk_nf4_grad_x_mma_bf16", parity::MmaTileGrid(c.M, c.in), parity::kMmaThreads,
                           parity::kMmaSharedBytes, in.dy.data(), codes, stats.absmax, qabsmax, stats.absmax2,
                           stats.offset, (const float*)du.data(), in.A.data(), dx_mma.data(), c.M, c.in, c.out, c.r,
                           c.blocksize, c.quant_type, c.dropout_p, in.seed));
        EXPECT_TRUE(Near("tensor cores: dx", dx_mma.values(), want_dx, bound_dx, c.out + c.r, out_rounding,
                         parity::kBf16TermRounding));
    }
}

INSTANTIATE_TEST_SUITE_P(Shapes, Nf4MatmulParity, ::testing::ValuesIn(MatmulCases()),
                         [](const ::testing::TestParamInfo<MatmulCase>& info) { return MatmulName(info.param); });

// The decode kernels stop with a fault instead of computing garbage when handed M > 16.
TEST(Nf4ParityMisuse, DecodeRejectsMoreThanSixteenTokens) {
    const int M = 17, in = 32, out = 2, blocksize = 32;
    std::vector<float> x(M * in, 1.0f), absmax(out * in / blocksize, 1.0f), y(M * out);
    std::vector<uint8_t> codes(out * in / 2, 0x77);
    const float* no_bias = nullptr;
    const unsigned char* no_qabsmax = nullptr;
    const float* no_absmax2 = nullptr;
    EXPECT_FALSE(Launch("lk_nf4_matmul_decode_f32", {1, 1}, parity::kDecodeThreads, 1 << 16, x.data(),
                        (const unsigned char*)codes.data(), absmax.data(), no_qabsmax, no_absmax2, 0.0f, no_bias,
                        y.data(), M, in, out, blocksize, (int)LK_QUANT_NF4));
}

}  // namespace
