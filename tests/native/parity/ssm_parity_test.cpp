// Every lk_ssm_* entry point of kernels/ssm.cu under the SIMT emulator, run in the C# launcher's sequence
// (Families/Ssm/GpuSsmKernels.cs), against lk_cpu_ssm_* on the same inputs:
//   scan forward:  chunk_state, chunk_carry (forward, from h0, with the last state), scan_forward;
//   scan backward: chunk_state, chunk_carry (forward), chunk_adjoint, chunk_carry (reverse), scan_backward,
//                  reduce_groups for dB and for dC;
//   decode: step; conv forward, backward and step; copy_columns.
// z, B and C are read in place from wider rows (the block's strides), and dB, dC, dz written into them.
//
// Tolerances: normwise, as for reductions (the scan's terms are products of exponentials, so a Σ|terms|
// bound from absolute inputs does not exist): |got - want| <= 1e-6 + K·2^-24·max|want|, K = 64 + 4·D for
// the scan (chunk products of 16 decays, the state sums over N, dB and dC summed over D channels), 32 for
// the convolution and the step. A wrong index, a missed chunk carry or a lost term errs by O(max|want|).
#include "parity.h"

namespace {

using parity::Buffer;
using parity::DType;
using parity::Launch;

constexpr int kSsmChunk = 16, kSsmThreads = 256, kSsmGroup = 32;
constexpr int kEmulatedMultiprocessors = 4;  // what SimtKernelDevice reports

struct SsmCase {
    int batch, L, D, N;
};

std::string CaseName(const SsmCase& c) {
    return "B" + std::to_string(c.batch) + "_L" + std::to_string(c.L) + "_D" + std::to_string(c.D) + "_N" + std::to_string(c.N);
}

::testing::AssertionResult Normwise(const std::string& what, const std::vector<float>& got, const std::vector<float>& want,
                                    double K) {
    double scale = 0.0;
    for (float v : want) scale = std::max(scale, (double)std::fabs(v));
    if (!(scale > 1e-3)) return ::testing::AssertionFailure() << what << ": the reference is (near) zero";
    const double tol = 1e-6 + K * parity::kF32Unit * scale;
    for (size_t i = 0; i < want.size(); ++i)
        if (!(std::fabs((double)got[i] - want[i]) <= tol))
            return ::testing::AssertionFailure() << what << "[" << i << "] got " << got[i] << " want " << want[i] << " tol " << tol;
    return ::testing::AssertionSuccess();
}

// The inputs of one case: u, delta [M, D]; z inside rows of 2·D (the block's in_proj output); B and C inside
// rows of R + 2N (x_proj's output, R = 3); A < 0 as Mamba's -exp(A_log); D skip; delta_bias; h0.
struct Inputs {
    int M, ld_z, ld_bc, D, N;
    std::vector<float> u, delta, delta_bias, A, xdbl, Dskip, xz, h0, dy;
    const float* B() const { return xdbl.data() + 3; }
    const float* C() const { return xdbl.data() + 3 + N; }
    const float* z() const { return xz.data() + D; }

    explicit Inputs(const SsmCase& c) : M(c.batch * c.L), ld_z(2 * c.D), ld_bc(3 + 2 * c.N), D(c.D), N(c.N) {
        uint32_t s = (uint32_t)(c.batch * 7919 + c.L * 131 + c.D * 17 + c.N);
        u = parity::RandomValues((size_t)M * D, s + 1);
        delta = parity::RandomValues((size_t)M * D, s + 2);
        delta_bias = parity::RandomValues((size_t)D, s + 3);
        A = parity::Abs(parity::RandomValues((size_t)D * N, s + 4));
        for (float& a : A) a = -4.0f * a;  // decays exp(Δ·A) in (0, 1)
        xdbl = parity::RandomValues((size_t)M * ld_bc, s + 5);
        Dskip = parity::RandomValues((size_t)D, s + 6);
        xz = parity::RandomValues((size_t)M * ld_z, s + 7);
        h0 = parity::RandomValues((size_t)c.batch * D * N, s + 8);
        dy = parity::RandomValues((size_t)M * D, s + 9);
    }
};

int Chunks(const SsmCase& c) { return (int)parity::CeilDiv(c.L, kSsmChunk); }
parity::Grid ChunkGrid(const SsmCase& c, int threads) { return {(uint32_t)parity::CeilDiv(c.D, threads), (uint32_t)Chunks(c)}; }

template <class... Args>
::testing::AssertionResult Launch3(const char* kernel, parity::Grid grid, uint32_t z, uint32_t block, Args... args) {
    void* pointers[] = {static_cast<void*>(&args)...};
    const lk_status status = lk_simt_launch(kernel, grid.x, grid.y, z, block, 1, 1, 0, pointers);
    if (status == LK_OK) return ::testing::AssertionSuccess();
    char message[2048];
    lk_simt_last_error(message, sizeof message);
    return ::testing::AssertionFailure() << kernel << " failed: " << lk_status_name(status) << ": " << message;
}

// The forward chunk states and their carry: entering [batch, chunks, D, N] (and the last state).
void ForwardCarry(const SsmCase& c, const Inputs& in, std::vector<float>& entering, std::vector<float>* last) {
    const int chunks = Chunks(c);
    const size_t n = (size_t)c.batch * chunks * c.D * c.N;
    std::vector<float> S(n, NAN), P(n, NAN);
    entering.assign(n, NAN);
    ASSERT_TRUE(Launch3("lk_ssm_chunk_state_f32", ChunkGrid(c, kSsmThreads), c.batch, kSsmThreads, in.u.data(), c.D,
                        in.delta.data(), c.D, in.delta_bias.data(), in.A.data(), in.B(), in.C(), in.ld_bc, in.Dskip.data(), c.L,
                        c.D, c.N, chunks, S.data(), P.data()));
    const int DN = c.D * c.N, forward = 0;
    ASSERT_TRUE(Launch("lk_ssm_chunk_carry_f32", parity::ElementwiseGrid((int64_t)c.batch * DN, kEmulatedMultiprocessors),
                       kSsmThreads, 0, P.data(), S.data(), in.h0.data(), entering.data(), last ? last->data() : nullptr,
                       c.batch, chunks, DN, forward));
}

class SsmParity : public ::testing::TestWithParam<SsmCase> {};

TEST_P(SsmParity, ScanForwardMatchesCpu) {
    const SsmCase c = GetParam();
    Inputs in(c);
    std::vector<float> want_y((size_t)in.M * c.D), want_last((size_t)c.batch * c.D * c.N);
    ASSERT_EQ(LK_OK, lk_cpu_ssm_scan_forward(c.batch, c.L, c.D, c.N, in.u.data(), c.D, in.delta.data(), c.D,
                                             in.delta_bias.data(), in.A.data(), in.B(), in.C(), in.ld_bc, in.Dskip.data(),
                                             in.z(), in.ld_z, in.h0.data(), want_y.data(), c.D, want_last.data()));
    std::vector<float> entering, last((size_t)c.batch * c.D * c.N, NAN), y((size_t)in.M * c.D, NAN);
    ForwardCarry(c, in, entering, &last);
    ASSERT_TRUE(Launch3("lk_ssm_scan_forward_f32", ChunkGrid(c, kSsmThreads), c.batch, kSsmThreads, in.u.data(), c.D,
                        in.delta.data(), c.D, in.delta_bias.data(), in.A.data(), in.B(), in.C(), in.ld_bc, in.Dskip.data(),
                        in.z(), in.ld_z, (const float*)entering.data(), y.data(), c.D, c.L, c.D, c.N, Chunks(c)));
    const double K = 64 + 4 * c.D;
    EXPECT_TRUE(Normwise("y", y, want_y, K));
    EXPECT_TRUE(Normwise("h_last", last, want_last, K));
}

TEST_P(SsmParity, ScanBackwardMatchesCpu) {
    const SsmCase c = GetParam();
    Inputs in(c);
    const int M = in.M, chunks = Chunks(c), DN = c.D * c.N, groups = (int)parity::CeilDiv(c.D, kSsmGroup);
    std::vector<float> want_du((size_t)M * c.D), want_ddelta((size_t)M * c.D), want_dxdbl((size_t)M * in.ld_bc, 0.0f),
        want_dxz((size_t)M * in.ld_z, 0.0f);
    ASSERT_EQ(LK_OK, lk_cpu_ssm_scan_backward(c.batch, c.L, c.D, c.N, in.u.data(), c.D, in.delta.data(), c.D,
                                              in.delta_bias.data(), in.A.data(), in.B(), in.C(), in.ld_bc, in.Dskip.data(),
                                              in.z(), in.ld_z, in.h0.data(), in.dy.data(), c.D, want_du.data(), c.D,
                                              want_ddelta.data(), c.D, want_dxdbl.data() + 3, want_dxdbl.data() + 3 + c.N,
                                              in.ld_bc, want_dxz.data() + c.D, in.ld_z));

    std::vector<float> entering;
    ForwardCarry(c, in, entering, nullptr);
    const size_t n = (size_t)c.batch * chunks * DN;
    std::vector<float> G(n, NAN), Q(n, NAN), adjoint(n, NAN);
    ASSERT_TRUE(Launch3("lk_ssm_chunk_adjoint_f32", ChunkGrid(c, kSsmThreads), c.batch, kSsmThreads, in.delta.data(), c.D,
                        in.delta_bias.data(), in.A.data(), in.C(), in.ld_bc, in.z(), in.ld_z, in.dy.data(), c.D, c.L, c.D,
                        c.N, chunks, G.data(), Q.data()));
    const int reverse = 1;
    ASSERT_TRUE(Launch("lk_ssm_chunk_carry_f32", parity::ElementwiseGrid((int64_t)c.batch * DN, kEmulatedMultiprocessors),
                       kSsmThreads, 0, Q.data(), G.data(), (const float*)nullptr, adjoint.data(), (float*)nullptr, c.batch,
                       chunks, DN, reverse));
    std::vector<float> du((size_t)M * c.D, NAN), ddelta((size_t)M * c.D, NAN), dxdbl((size_t)M * in.ld_bc, 0.0f),
        dxz((size_t)M * in.ld_z, 0.0f), partial_b((size_t)groups * M * c.N, NAN), partial_c(partial_b.size(), NAN);
    ASSERT_TRUE(Launch3("lk_ssm_scan_backward_f32", ChunkGrid(c, kSsmGroup), c.batch, kSsmGroup, in.u.data(), c.D,
                        in.delta.data(), c.D, in.delta_bias.data(), in.A.data(), in.B(), in.C(), in.ld_bc, in.Dskip.data(),
                        in.z(), in.ld_z, (const float*)entering.data(), (const float*)adjoint.data(), in.dy.data(), c.D,
                        du.data(), c.D, ddelta.data(), c.D, dxz.data() + c.D, in.ld_z, partial_b.data(), partial_c.data(), c.L,
                        c.D, c.N, chunks, c.batch));
    const long long rows = M;
    for (auto [partial, offset] : {std::pair<float*, int>{partial_b.data(), 3}, {partial_c.data(), 3 + c.N}})
        ASSERT_TRUE(Launch("lk_ssm_reduce_groups_f32", parity::ElementwiseGrid(rows * c.N, kEmulatedMultiprocessors),
                           kSsmThreads, 0, (const float*)partial, groups, rows, c.N, dxdbl.data() + offset, in.ld_bc));
    const double K = 64 + 4 * c.D;
    EXPECT_TRUE(Normwise("du", du, want_du, K));
    EXPECT_TRUE(Normwise("ddelta", ddelta, want_ddelta, K));
    EXPECT_TRUE(Normwise("dB, dC (the untouched dt columns stay zero)", dxdbl, want_dxdbl, K));
    EXPECT_TRUE(Normwise("dz (the untouched x half stays zero)", dxz, want_dxz, K));
}

TEST_P(SsmParity, DecodeStepMatchesCpu) {
    const SsmCase c = GetParam();
    Inputs in(c);  // rows 0..batch-1 of u, delta, z, B, C are the step's tokens
    std::vector<float> h = in.h0, want_h = in.h0, y((size_t)c.batch * c.D, NAN), want_y(y.size());
    ASSERT_EQ(LK_OK, lk_cpu_ssm_step(c.batch, c.D, c.N, in.u.data(), c.D, in.delta.data(), c.D, in.delta_bias.data(),
                                     in.A.data(), in.B(), in.C(), in.ld_bc, in.Dskip.data(), in.z(), in.ld_z, want_h.data(),
                                     want_y.data(), c.D));
    ASSERT_TRUE(Launch("lk_ssm_step_f32", parity::ElementwiseGrid((int64_t)c.batch * c.D, kEmulatedMultiprocessors),
                       kSsmThreads, 0, in.u.data(), c.D, in.delta.data(), c.D, in.delta_bias.data(), in.A.data(), in.B(),
                       in.C(), in.ld_bc, in.Dskip.data(), in.z(), in.ld_z, h.data(), y.data(), c.D, c.batch, c.D, c.N));
    EXPECT_TRUE(Normwise("y", y, want_y, 32));
    EXPECT_TRUE(Normwise("h", h, want_h, 32));
}

TEST_P(SsmParity, ConvolutionMatchesCpu) {
    const SsmCase c = GetParam();
    Inputs in(c);
    const int K = 4, M = in.M;
    const std::vector<float> weight = parity::RandomValues((size_t)c.D * K, 21), bias = parity::RandomValues((size_t)c.D, 22);
    const parity::Grid grid = parity::ElementwiseGrid((int64_t)M * c.D, kEmulatedMultiprocessors);
    // x is the first half of xz's rows (stride 2·D); dx goes back into that half of a zeroed buffer.
    std::vector<float> y((size_t)M * c.D, NAN), want_y(y.size()), dx((size_t)M * in.ld_z, 0.0f), want_dx(dx.size(), 0.0f);
    ASSERT_EQ(LK_OK, lk_cpu_ssm_conv_forward(c.batch, c.L, c.D, K, in.xz.data(), in.ld_z, weight.data(), bias.data(),
                                             want_y.data(), c.D));
    ASSERT_TRUE(Launch("lk_ssm_conv_forward_f32", grid, kSsmThreads, 0, in.xz.data(), in.ld_z, weight.data(), bias.data(),
                       y.data(), c.D, c.batch, c.L, c.D, K));
    EXPECT_TRUE(Normwise("conv y", y, want_y, 32));
    ASSERT_EQ(LK_OK, lk_cpu_ssm_conv_backward(c.batch, c.L, c.D, K, in.xz.data(), in.ld_z, weight.data(), bias.data(),
                                              in.dy.data(), c.D, want_dx.data(), in.ld_z));
    ASSERT_TRUE(Launch("lk_ssm_conv_backward_f32", grid, kSsmThreads, 0, in.xz.data(), in.ld_z, weight.data(), bias.data(),
                       in.dy.data(), c.D, dx.data(), in.ld_z, c.batch, c.L, c.D, K));
    EXPECT_TRUE(Normwise("conv dx", dx, want_dx, 32));

    std::vector<float> state = parity::RandomValues((size_t)c.batch * c.D * (K - 1), 23), want_state = state;
    std::vector<float> step_y((size_t)c.batch * c.D, NAN), want_step_y(step_y.size());
    ASSERT_EQ(LK_OK, lk_cpu_ssm_conv_step(c.batch, c.D, K, in.xz.data(), in.ld_z, weight.data(), bias.data(),
                                          want_state.data(), want_step_y.data(), c.D));
    ASSERT_TRUE(Launch("lk_ssm_conv_step_f32", parity::ElementwiseGrid((int64_t)c.batch * c.D, kEmulatedMultiprocessors),
                       kSsmThreads, 0, in.xz.data(), in.ld_z, weight.data(), bias.data(), state.data(), step_y.data(), c.D,
                       c.batch, c.D, K));
    EXPECT_TRUE(Normwise("conv step y", step_y, want_step_y, 32));
    EXPECT_EQ(state, want_state) << "the shifted window";

    const long long rows = M;
    std::vector<float> columns((size_t)M * 3, NAN), want_columns((size_t)M * 3);
    ASSERT_EQ(LK_OK, lk_cpu_ssm_copy_columns(M, 3, in.xdbl.data(), in.ld_bc, want_columns.data(), 3));
    ASSERT_TRUE(Launch("lk_ssm_copy_columns_f32", parity::ElementwiseGrid(rows * 3, kEmulatedMultiprocessors), kSsmThreads, 0,
                       in.xdbl.data(), in.ld_bc, columns.data(), 3, rows, 3));
    EXPECT_EQ(columns, want_columns);
}

// L over one step, a partial chunk and several chunks; D within a warp and over one (two channel groups);
// N = 1 and the maximum 16.
INSTANTIATE_TEST_SUITE_P(Cases, SsmParity,
                         ::testing::Values(SsmCase{1, 1, 5, 16}, SsmCase{2, 17, 5, 1}, SsmCase{1, 50, 40, 16},
                                           SsmCase{2, 33, 37, 7}),
                         [](const ::testing::TestParamInfo<SsmCase>& info) { return CaseName(info.param); });

}  // namespace
