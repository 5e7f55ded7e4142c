// gemm.cpp: the packed SGEMM engine (BLIS-style blocking around one ISA micro-kernel).
//
// Strategy. Loops jc (N, step nc) > pc (K, step kc) > ic (M, step mc) > tiles (mr x nr):
//   * the kc x nc block of R is packed into nr-wide panels (kc x nr each, k-major) that stay in
//     L2/L3 while every row block of L passes over them;
//   * for each ic the mc x kc block of L is packed into mr-tall panels, shared by all threads;
//   * the micro-kernel updates a full mr x nr tile of C in registers and writes it once per pc
//     (beta on the first pc, bias on the last); edge tiles and dropout-masked products go
//     through a small buffer and the scalar write-back below.
// Packing is where the operand's form is undone: transposes (the strides of each piece), the
// K-concatenation of two pieces, a piece's scale, and the dropout mask of a piece. Block sizes
// are balanced (K = 4112 with kc = 1024 gives 5 blocks of 823, not 4 of 1024 and one of 16).
// Threads: one OpenMP team per call, sized to the work. When C has at least 4 column panels
// per thread, each thread owns a contiguous run of column panels: it packs each B panel right
// before its first use and runs all row panels against it (no barrier for B, the panel hot in
// cache). Narrow products (N = r) share the B packing and split the tiles instead. Products with
// K <= 64 (the merge) are bound by C's traffic, so their tiles go in C's memory order.
// Cost: 2*M*N*K FLOP; every element of R is packed once, every element of L once per nc-wide
// column block; C is read and written once per kc block.
#include "gemm.h"

#include <omp.h>

#include <algorithm>
#include <cstddef>
#include <new>

#include "common.cuh"
#include "isa.h"
#include "parallel.h"

namespace lk::cpu {

OperandPiece matrix_piece(const float* data, int64_t ld, bool transposed, int64_t k, float scale) {
    OperandPiece piece;
    piece.data = data;
    piece.row_stride = transposed ? 1 : ld;
    piece.col_stride = transposed ? ld : 1;
    piece.k = k;
    piece.scale = scale;
    return piece;
}

namespace {

// The packing buffers of the calling thread, kept between calls (a large allocation per call
// would page-fault its pages in every time).
class PackBuffer {
public:
    ~PackBuffer() { release(); }
    float* get(size_t floats) {
        if (floats > capacity_) {
            release();
            data_ =
                static_cast<float*>(::operator new(floats * sizeof(float), std::align_val_t{64}));
            capacity_ = floats;
        }
        return data_;
    }

private:
    void release() {
        if (data_ != nullptr) ::operator delete(data_, std::align_val_t{64});
        data_ = nullptr;
        capacity_ = 0;
    }
    float* data_ = nullptr;
    size_t capacity_ = 0;
};

thread_local PackBuffer t_pack_buffer;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// Packs n_outer x n_k elements of one piece with plain loops (the dropout-masked pieces and the
// layouts isa.pack_lines does not cover): dst[k * width + o] = element (outer o, reduction k),
// where the element is src[o * outer_stride + k * k_stride] and its dropout offset is
// offset0 + o * outer_stride + k * k_stride.
template <bool kDropout>
void pack_piece_scalar(const float* src, int64_t outer_stride, int64_t k_stride, int64_t offset0,
                       int n_outer, int64_t n_k, int width, const OperandPiece& piece, float* dst) {
    const float scale = piece.scale;
    auto factor = [&](int64_t offset) {
        return kDropout ? lk_dropout_factor(piece.dropout_seed, (lk_u64)offset, piece.dropout_p)
                        : 1.0f;
    };
    if (outer_stride == 1 || (k_stride != 1 && outer_stride < k_stride)) {
        // Contiguous (or closer) along the outer dimension: copy k-row by k-row.
        for (int64_t k = 0; k < n_k; ++k) {
            const float* s = src + k * k_stride;
            float* d = dst + k * width;
            const int64_t off = offset0 + k * k_stride;
            for (int o = 0; o < n_outer; ++o)
                d[o] = scale * s[o * outer_stride] * factor(off + o * outer_stride);
        }
    } else {
        // Contiguous along K: read each outer line once, write it strided into the panel.
        for (int o = 0; o < n_outer; ++o) {
            const float* s = src + o * outer_stride;
            float* d = dst + o;
            const int64_t off = offset0 + o * outer_stride;
            for (int64_t k = 0; k < n_k; ++k)
                d[k * width] = scale * s[k * k_stride] * factor(off + k * k_stride);
        }
    }
}

// Packs one panel: outer indices [outer0, outer0 + n_outer) (rows of L when `left`, columns of
// R otherwise), reduction indices [k0, k0 + kc), into dst[k * width + o], zero-padded to width.
void pack_panel(const IsaKernels& isa, const Operand& op, bool left, int64_t outer0, int n_outer,
                int64_t k0, int64_t kc, int width, float* dst) {
    int64_t piece_k0 = 0;
    for (int i = 0; i < op.count; ++i) {
        const OperandPiece& piece = op.pieces[i];
        const int64_t lo = std::max(k0, piece_k0);
        const int64_t hi = std::min(k0 + kc, piece_k0 + piece.k);
        if (lo < hi) {
            const int64_t outer_stride = left ? piece.row_stride : piece.col_stride;
            const int64_t k_stride = left ? piece.col_stride : piece.row_stride;
            const int64_t offset0 = outer0 * outer_stride + (lo - piece_k0) * k_stride;
            float* d = dst + (lo - k0) * width;
            if (piece.dropout_p > 0.0f)
                pack_piece_scalar<true>(piece.data + offset0, outer_stride, k_stride, offset0,
                                        n_outer, hi - lo, width, piece, d);
            else if (k_stride == 1 && outer_stride != 1)
                isa.pack_lines(piece.data + offset0, outer_stride, n_outer, hi - lo, width,
                               piece.scale, d);
            else
                pack_piece_scalar<false>(piece.data + offset0, outer_stride, k_stride, offset0,
                                         n_outer, hi - lo, width, piece, d);
        }
        piece_k0 += piece.k;
    }
    // The padding only feeds accumulator lanes that are never written back; zeroing it keeps
    // stale bits (denormals, NaN) out of the FMAs.
    if (n_outer < width)
        for (int64_t k = 0; k < kc; ++k)
            std::fill(dst + k * width + n_outer, dst + (k + 1) * width, 0.0f);
}

// The scalar write-back of a tile computed into `tile` (row stride `tile_ld`, alpha not applied).
void write_tile(const float* tile, int tile_ld, int rows, int cols, int64_t row0, int64_t col0,
                const GemmOutput& out, float beta, const float* bias) {
    for (int i = 0; i < rows; ++i) {
        float* c = out.c + (row0 + i) * out.ldc + col0;
        for (int j = 0; j < cols; ++j) {
            float v = out.alpha * tile[i * tile_ld + j];
            if (out.dropout_p > 0.0f)
                v *= lk_dropout_factor(out.dropout_seed, (lk_u64)((row0 + i) * out.ldc + col0 + j),
                                       out.dropout_p);
            if (bias != nullptr) v += bias[j];
            c[j] = beta == 0.0f ? v : v + beta * c[j];
        }
    }
}

// C = beta * C + bias: the whole product when K == 0.
void scale_and_add_bias(int64_t M, int64_t N, const GemmOutput& out) {
    for (int64_t i = 0; i < M; ++i) {
        float* c = out.c + i * out.ldc;
        for (int64_t j = 0; j < N; ++j) {
            float v = out.bias != nullptr ? out.bias[j] : 0.0f;
            c[j] = out.beta == 0.0f ? v : v + out.beta * c[j];
        }
    }
}

// Below about this many FLOP per thread a fork/join costs more than the thread saves.
constexpr double kFlopPerThread = 4.0e6;
// A thread packs and computes whole column panels once there are this many per thread (fewer
// would leave the threads' shares unequal by a large fraction).
constexpr int64_t kPanelsPerThreadToOwn = 4;
// Up to this K the micro-kernel spends less time on its FMAs than on reading and writing its C
// tile, so tiles are visited in C's memory order instead (the merge, K = r).
constexpr int64_t kShortK = 64;

}  // namespace

void gemm(int64_t M, int64_t N, const Operand& L, const Operand& R, const GemmOutput& out) {
    if (M <= 0 || N <= 0) return;
    const int64_t K = L.k();
    if (K == 0) {
        scale_and_add_bias(M, N, out);
        return;
    }
    const IsaKernels& isa = active_kernels();
    const int mr = isa.mr, nr = isa.nr;

    // Balanced blocks: the same number of blocks as the nominal sizes give, evenly filled.
    const int64_t kc = ceil_div(K, ceil_div(K, isa.kc));
    const int64_t mc = round_up(ceil_div(M, ceil_div(M, isa.mc)), mr);
    const int64_t nc = round_up(ceil_div(N, ceil_div(N, isa.nc)), nr);

    const size_t b_floats = (size_t)(nc * kc);
    const size_t a_offset = (size_t)round_up((int64_t)b_floats, 16);  // keeps A 64-byte aligned
    float* const packed_b = t_pack_buffer.get(a_offset + (size_t)(mc * kc));
    float* const packed_a = packed_b + a_offset;

    const double flop = 2.0 * (double)M * (double)N * (double)K;
    const int threads =
        (int)std::max<double>(1.0, std::min<double>(thread_count(), flop / kFlopPerThread));

#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        const int team = omp_get_num_threads(), tid = omp_get_thread_num();
        alignas(64) float tile[kMaxTileFloats];
        for (int64_t jc = 0; jc < N; jc += nc) {
            const int64_t n_len = std::min(nc, N - jc);
            const int64_t n_panels = ceil_div(n_len, nr);
            // With enough column panels each thread owns a contiguous run of them: it packs each
            // of its B panels right before first using it (while it is hot in cache) and needs
            // no barrier for B. Otherwise (narrow C) B is packed by all, then the tiles are split.
            const bool own_columns = n_panels >= kPanelsPerThreadToOwn * team && K > kShortK;
            int64_t b_begin, b_end;
            thread_share(n_panels, tid, team, b_begin, b_end);
            auto pack_b = [&](int64_t jp, int64_t pc, int64_t k_len) {
                pack_panel(isa, R, false, jc + jp * nr, (int)std::min<int64_t>(nr, n_len - jp * nr),
                           pc, k_len, nr, packed_b + jp * nr * k_len);
            };
            for (int64_t pc = 0; pc < K; pc += kc) {
                const int64_t k_len = std::min(kc, K - pc);
                const float beta = pc == 0 ? out.beta : 1.0f;
                const bool last_k = pc + k_len == K;
                if (!own_columns) {
                    for (int64_t jp = b_begin; jp < b_end; ++jp) pack_b(jp, pc, k_len);
                }
                for (int64_t ic = 0; ic < M; ic += mc) {
                    const int64_t m_len = std::min(mc, M - ic);
                    const int64_t m_panels = ceil_div(m_len, mr);
                    int64_t begin, end;
                    thread_share(m_panels, tid, team, begin, end);
                    for (int64_t ip = begin; ip < end; ++ip)
                        pack_panel(isa, L, true, ic + ip * mr,
                                   (int)std::min<int64_t>(mr, m_len - ip * mr), pc, k_len, mr,
                                   packed_a + ip * mr * k_len);
#pragma omp barrier
                    auto run_tile = [&](int64_t jp, int64_t ip) {
                        const int64_t row0 = ic + ip * mr, col0 = jc + jp * nr;
                        const int rows = (int)std::min<int64_t>(mr, M - row0);
                        const int cols = (int)std::min<int64_t>(nr, N - col0);
                        const float* a = packed_a + ip * mr * k_len;
                        const float* b = packed_b + jp * nr * k_len;
                        const float* bias =
                            last_k && out.bias != nullptr ? out.bias + col0 : nullptr;
                        if (rows == mr && cols == nr && out.dropout_p <= 0.0f) {
                            isa.micro(k_len, a, b, out.c + row0 * out.ldc + col0, out.ldc,
                                      out.alpha, beta, bias);
                        } else {
                            isa.micro(k_len, a, b, tile, nr, 1.0f, 0.0f, nullptr);
                            write_tile(tile, nr, rows, cols, row0, col0, out, beta, bias);
                        }
                    };
                    if (own_columns) {
                        for (int64_t jp = b_begin; jp < b_end; ++jp) {
                            if (ic == 0) pack_b(jp, pc, k_len);
                            for (int64_t ip = 0; ip < m_panels; ++ip) run_tile(jp, ip);
                        }
                    } else if (K > kShortK) {
                        // Tiles column-major, so a thread's run stays on few B panels.
                        thread_share(n_panels * m_panels, tid, team, begin, end);
                        for (int64_t t = begin; t < end; ++t) run_tile(t / m_panels, t % m_panels);
                    } else {
                        // Tiles row-major: C's traffic dominates, and this walks C's rows in long
                        // contiguous stretches.
                        thread_share(n_panels * m_panels, tid, team, begin, end);
                        for (int64_t t = begin; t < end; ++t) run_tile(t % n_panels, t / n_panels);
                    }
                    // The next A block (or B block) overwrites what the others may still read.
#pragma omp barrier
                }
            }
        }
    }
}

}  // namespace lk::cpu
