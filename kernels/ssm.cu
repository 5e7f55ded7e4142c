// ssm.cu: the selective scan of a Mamba block (S6) and its causal depthwise convolution. Semantics are
// those of lk_cpu_ssm_* (native/include/lora_kernels_ssm.h, Mamba's definitions): per sequence b, channel
// d, state n, step t: Δ_t = softplus(delta_t + delta_bias), h_t = exp(Δ_t·A)·h_{t-1} + Δ_t·B_t·u_t,
// y_t = (Σ_n C_t·h_t + D·u_t)·silu(z_t). fp32 only (the Mamba block is fp32).
//
// Entry points:
//   lk_ssm_chunk_state_f32     per chunk of kSsmChunk steps, from h = 0: end state S and decay product P
//   lk_ssm_chunk_carry_f32     across chunks (forward: state entering each chunk; reverse: adjoint carried in)
//   lk_ssm_scan_forward_f32    each chunk rescanned from its entering state: y
//   lk_ssm_chunk_adjoint_f32   per chunk, backwards from g = 0: the adjoint leaving its first step, and P
//   lk_ssm_scan_backward_f32   each chunk: h recomputed into shared memory, the adjoint run backwards:
//                              du, ddelta, dz, and dB, dC summed over a warp's 32 channels
//   lk_ssm_reduce_groups_f32   dB, dC: the channel groups' partial sums added in order
//   lk_ssm_step_f32            decode: one step of the recurrence, h updated in place
//   lk_ssm_conv_forward_f32 / _backward_f32 / _step_f32   the causal depthwise convolution + SiLU
//   lk_ssm_copy_columns_f32    a column slice between strided and dense storage
//
// Strategy and why: the recurrence h_t = a_t·h_{t-1} + b_t is linear, so a chunk's effect on a state is
// (Π a, its own end state from zero): the parallel scan over the sequence runs the chunks of every
// (sequence, channel) side by side (one thread per chunk and channel, its N <= 16 states in registers),
// a carry pass composes the chunks in order (a cheap sequential pass over L/16 chunks per state), and a
// rescan from the true entering states produces y: L/16 times the parallelism of a sequential scan for
// twice its exponentials. The backward is the same scan reversed for the adjoint g_t = C_t·dy'_t +
// a_{t+1}·g_{t+1}; its last kernel needs h_{t-1} while walking a chunk backwards, so it recomputes the
// chunk's 16 states forwards into shared memory (16 steps × 16 states × 32 channels, 32 KiB static)
// instead of keeping B·L·D·N states from the forward. dB and dC are sums over channels: one warp holds 32
// consecutive channels and reduces them with shuffles; the groups' partial sums are added by a second
// kernel in group order (no atomics, deterministic; the CPU uses the same groups). A, D and delta_bias are
// frozen (LoRA adapts the projections), so their gradients are not formed. The decode step is the plain
// recurrence, one thread per (sequence, channel).
//
// Assumptions: N <= kSsmMaxState (checked in C#); every element count < 2^31 except row·stride products,
// formed in 64 bits. Bytes and FLOPs: forward reads u, delta, z and B, C (N per row) twice and writes y
// once: 4·B·L·(3·D + 2·N)·2 + 4·B·L·D bytes, ~12·N·B·L·D FLOPs and 2·N·B·L·D exponentials; the chunk
// scratch is 4·B·(L/16)·D·N per array (S, P, entering states). Backward: ~2.5× the forward's bytes and
// FLOPs, plus 2·4·B·L·N·ceil(D/32) bytes of partial sums.
#include "activations.cuh"
#include "common.cuh"
#include "launch_geometry.cuh"

namespace {

constexpr int kSsmMaxState = 16;  // LK_SSM_MAX_STATE: states held in registers per thread
constexpr int kSsmChunk = 16;     // steps per chunk of the parallel scan
constexpr int kSsmThreads = 256;  // chunk kernels: channels per block; grid-stride kernels: the element-wise block
constexpr int kSsmGroup = 32;     // backward: channels per block (one warp) and per partial sum of dB, dC
static_assert(kSsmThreads == kElementwiseThreads, "the grid-stride kernels use the element-wise geometry");
static_assert(kSsmGroup == 32, "one warp of channels");

// Where one (row, channel) of the scan reads its inputs.
struct ScanInputs {
    const float* u;
    const float* delta;
    const float* delta_bias;
    const float* A;
    const float* Bm;
    const float* Cm;
    const float* Dskip;
    const float* z;
    int ld_u, ld_delta, ld_bc, ld_z, N;

    LK_DEVICE float raw_delta(lk_i64 r, int d) const { return delta[r * ld_delta + d] + (delta_bias ? delta_bias[d] : 0.0f); }
    LK_DEVICE float gate(lk_i64 r, int d) const { return z ? lk_silu(z[r * ld_z + d]) : 1.0f; }

    // h[n] <- exp(Δ·A[d,n])·h[n] + Δ·B[n]·u, decay[n] *= exp(Δ·A[d,n]); returns Σ_n C[n]·h[n] + D·u.
    LK_DEVICE float advance(lk_i64 r, int d, float (&h)[kSsmMaxState], float (&decay)[kSsmMaxState]) const {
        const float dt = lk_softplus(raw_delta(r, d)), x = u[r * ld_u + d];
        const float* b = Bm + r * ld_bc;
        const float* c = Cm + r * ld_bc;
        float y = 0.0f;
#pragma unroll
        for (int n = 0; n < kSsmMaxState; ++n) {
            if (n >= N) break;
            const float a = expf(dt * A[d * N + n]);
            h[n] = a * h[n] + dt * b[n] * x;
            decay[n] *= a;
            y += c[n] * h[n];
        }
        return y + Dskip[d] * x;
    }
};

// Chunk kernels' thread: channel d of chunk blockIdx.y of sequence blockIdx.z; steps [t0, t1).
struct ChunkThread {
    int b, c, d, t0, t1;
};

LK_DEVICE ChunkThread lk_ssm_chunk_thread(int L) {
    ChunkThread k;
    k.b = (int)blockIdx.z;
    k.c = (int)blockIdx.y;
    k.d = (int)(blockIdx.x * blockDim.x + threadIdx.x);
    k.t0 = k.c * kSsmChunk;
    k.t1 = lk_min(L, k.t0 + kSsmChunk);
    return k;
}

// Index of (sequence b, chunk c, channel d, state 0) in a [batch, chunks, D, N] chunk array.
LK_DEVICE lk_i64 lk_ssm_chunk_index(int b, int c, int d, int chunks, int D, int N) {
    return (((lk_i64)b * chunks + c) * D + d) * N;
}

}  // namespace

// ---- forward ---------------------------------------------------------------------------------------------
extern "C" __global__ void __launch_bounds__(kSsmThreads) lk_ssm_chunk_state_f32(
    const float* u, int ld_u, const float* delta, int ld_delta, const float* delta_bias, const float* A, const float* Bm,
    const float* Cm, int ld_bc, const float* Dskip, int L, int D, int N, int chunks, float* S, float* P) {
    const ScanInputs in{u, delta, delta_bias, A, Bm, Cm, Dskip, nullptr, ld_u, ld_delta, ld_bc, 0, N};
    const ChunkThread k = lk_ssm_chunk_thread(L);
    if (k.d >= D) return;  // no barrier follows
    float h[kSsmMaxState], decay[kSsmMaxState];
#pragma unroll
    for (int n = 0; n < kSsmMaxState; ++n) h[n] = 0.0f, decay[n] = 1.0f;
    for (int t = k.t0; t < k.t1; ++t) in.advance((lk_i64)k.b * L + t, k.d, h, decay);
    const lk_i64 at = lk_ssm_chunk_index(k.b, k.c, k.d, chunks, D, N);
#pragma unroll
    for (int n = 0; n < kSsmMaxState; ++n)  // unrolled with a guard: the states stay in registers
        if (n < N) S[at + n] = h[n], P[at + n] = decay[n];
}
LK_KERNEL(lk_ssm_chunk_state_f32);

// carry[c] = what enters chunk c: forward (reverse = 0) carry[0] = init (NULL: 0), carry[c+1] = mult[c]·carry[c]
// + add[c], and last = what leaves the final chunk; reverse, carry[chunks-1] = 0 and carry[c] = mult[c+1]·carry[c+1]
// + add[c+1]. One thread per (sequence, channel·state k < DN), sequential over the chunks; [batch, chunks, DN].
extern "C" __global__ void __launch_bounds__(kSsmThreads) lk_ssm_chunk_carry_f32(const float* mult, const float* add,
                                                                                 const float* init, float* carry,
                                                                                 float* last, int batch, int chunks,
                                                                                 int DN, int reverse) {
    for (lk_i64 i = (lk_i64)blockIdx.x * blockDim.x + threadIdx.x; i < (lk_i64)batch * DN;
         i += (lk_i64)gridDim.x * blockDim.x) {
        const lk_i64 b = i / DN, k = i - b * DN;
        float value = init && !reverse ? init[i] : 0.0f;
        for (int step = 0; step < chunks; ++step) {
            const int c = reverse ? chunks - 1 - step : step;
            const lk_i64 at = (b * chunks + c) * DN + k;
            carry[at] = value;
            value = mult[at] * value + add[at];
        }
        if (last && !reverse) last[i] = value;
    }
}
LK_KERNEL(lk_ssm_chunk_carry_f32);

extern "C" __global__ void __launch_bounds__(kSsmThreads) lk_ssm_scan_forward_f32(
    const float* u, int ld_u, const float* delta, int ld_delta, const float* delta_bias, const float* A, const float* Bm,
    const float* Cm, int ld_bc, const float* Dskip, const float* z, int ld_z, const float* entering, float* y, int ld_y,
    int L, int D, int N, int chunks) {
    const ScanInputs in{u, delta, delta_bias, A, Bm, Cm, Dskip, z, ld_u, ld_delta, ld_bc, ld_z, N};
    const ChunkThread k = lk_ssm_chunk_thread(L);
    if (k.d >= D) return;  // no barrier follows
    float h[kSsmMaxState], decay[kSsmMaxState];
    const lk_i64 at = lk_ssm_chunk_index(k.b, k.c, k.d, chunks, D, N);
#pragma unroll
    for (int n = 0; n < kSsmMaxState; ++n) h[n] = n < N ? entering[at + n] : 0.0f, decay[n] = 1.0f;
    for (int t = k.t0; t < k.t1; ++t) {
        const lk_i64 r = (lk_i64)k.b * L + t;
        y[r * ld_y + k.d] = in.advance(r, k.d, h, decay) * in.gate(r, k.d);
    }
}
LK_KERNEL(lk_ssm_scan_forward_f32);

// ---- backward --------------------------------------------------------------------------------------------
// Per chunk, backwards from g = 0 at its end: G = exp(Δ_{t0}·A)·g_{t0} (what the chunk passes to the one before
// it) and Q = Π exp(Δ·A) over the chunk; g_t = C_t·dy_t·silu(z_t) + exp(Δ_{t+1}·A)·g_{t+1}.
extern "C" __global__ void __launch_bounds__(kSsmThreads) lk_ssm_chunk_adjoint_f32(
    const float* delta, int ld_delta, const float* delta_bias, const float* A, const float* Cm, int ld_bc, const float* z,
    int ld_z, const float* dy, int ld_dy, int L, int D, int N, int chunks, float* G, float* Q) {
    const ScanInputs in{nullptr, delta, delta_bias, A, nullptr, Cm, nullptr, z, 0, ld_delta, ld_bc, ld_z, N};
    const ChunkThread k = lk_ssm_chunk_thread(L);
    if (k.d >= D) return;  // no barrier follows
    float carried[kSsmMaxState], decay[kSsmMaxState];
#pragma unroll
    for (int n = 0; n < kSsmMaxState; ++n) carried[n] = 0.0f, decay[n] = 1.0f;
    for (int t = k.t1 - 1; t >= k.t0; --t) {
        const lk_i64 r = (lk_i64)k.b * L + t;
        const float dt = lk_softplus(in.raw_delta(r, k.d)), gated = dy[r * ld_dy + k.d] * in.gate(r, k.d);
#pragma unroll
        for (int n = 0; n < kSsmMaxState; ++n) {
            if (n >= N) break;
            const float a = expf(dt * A[k.d * N + n]);
            carried[n] = a * (Cm[r * ld_bc + n] * gated + carried[n]);
            decay[n] *= a;
        }
    }
    const lk_i64 at = lk_ssm_chunk_index(k.b, k.c, k.d, chunks, D, N);
#pragma unroll
    for (int n = 0; n < kSsmMaxState; ++n)
        if (n < N) G[at + n] = carried[n], Q[at + n] = decay[n];
}
LK_KERNEL(lk_ssm_chunk_adjoint_f32);

// Block = one warp = channels [32·blockIdx.x, +32) of chunk blockIdx.y of sequence blockIdx.z. The chunk's states
// are recomputed forwards from `entering` into shared memory, then the adjoint runs backwards from `adjoint` (the
// reverse carry). dB and dC of each step and state are summed over the warp's channels (lanes past D add 0) into
// partial_b/partial_c [ceil(D/32), batch·L, N].
extern "C" __global__ void __launch_bounds__(kSsmGroup) lk_ssm_scan_backward_f32(
    const float* u, int ld_u, const float* delta, int ld_delta, const float* delta_bias, const float* A, const float* Bm,
    const float* Cm, int ld_bc, const float* Dskip, const float* z, int ld_z, const float* entering, const float* adjoint,
    const float* dy, int ld_dy, float* du, int ld_du, float* ddelta, int ld_ddelta, float* dz, int ld_dz,
    float* partial_b, float* partial_c, int L, int D, int N, int chunks, int batch) {
    LK_SHARED(float, history, [kSsmChunk][kSsmMaxState][kSsmGroup]);  // h_t by step, state, lane: 32 KiB
    const ScanInputs in{u, delta, delta_bias, A, Bm, Cm, Dskip, z, ld_u, ld_delta, ld_bc, ld_z, N};
    const ChunkThread k = lk_ssm_chunk_thread(L);
    const int lane = (int)threadIdx.x;
    const bool active = k.d < D;  // every lane stays for the warp sums
    const lk_i64 at = lk_ssm_chunk_index(k.b, k.c, active ? k.d : 0, chunks, D, N);
    float start[kSsmMaxState], h[kSsmMaxState], decay[kSsmMaxState], carried[kSsmMaxState];
#pragma unroll
    for (int n = 0; n < kSsmMaxState; ++n) {
        start[n] = active && n < N ? entering[at + n] : 0.0f;
        h[n] = start[n];
        decay[n] = 1.0f;
        carried[n] = active && n < N ? adjoint[at + n] : 0.0f;
    }
    for (int t = k.t0; t < k.t1; ++t) {
        if (active) in.advance((lk_i64)k.b * L + t, k.d, h, decay);
#pragma unroll
        for (int n = 0; n < kSsmMaxState; ++n) history[t - k.t0][n][lane] = h[n];  // each lane reads back only its own
    }
    const lk_i64 group_rows = (lk_i64)blockIdx.x * batch * L;
    for (int t = k.t1 - 1; t >= k.t0; --t) {
        const lk_i64 r = (lk_i64)k.b * L + t;
        const int s = t - k.t0;
        float raw = 0.0f, dt = 0.0f, x = 0.0f, dy_t = 0.0f, gated = 0.0f, pre = 0.0f;
        if (active) {
            raw = in.raw_delta(r, k.d);
            dt = lk_softplus(raw);
            x = u[r * ld_u + k.d];
            dy_t = dy[r * ld_dy + k.d];
            gated = dy_t * in.gate(r, k.d);
            pre = Dskip[k.d] * x;
        }
        float du_t = Dskip[active ? k.d : 0] * gated, ddt = 0.0f;
#pragma unroll
        for (int n = 0; n < kSsmMaxState; ++n) {
            if (n >= N) break;
            const float ht = history[s][n][lane], previous = s > 0 ? history[s - 1][n][lane] : start[n];
            const float bn = active ? Bm[r * ld_bc + n] : 0.0f, cn = active ? Cm[r * ld_bc + n] : 0.0f;
            const float a = active ? expf(dt * A[k.d * N + n]) : 0.0f;
            const float g = cn * gated + carried[n];
            pre += cn * ht;
            du_t += g * dt * bn;
            ddt += g * ((active ? A[k.d * N + n] : 0.0f) * a * previous + bn * x);
            const float sum_b = lk_warp_sum(g * dt * x), sum_c = lk_warp_sum(ht * gated);
            if (lane == 0) {
                partial_b[(group_rows + r) * N + n] = sum_b;
                partial_c[(group_rows + r) * N + n] = sum_c;
            }
            carried[n] = a * g;
        }
        if (!active) continue;
        if (du) du[r * ld_du + k.d] = du_t;
        if (ddelta) ddelta[r * ld_ddelta + k.d] = ddt * lk_sigmoid(raw);
        if (dz) dz[r * ld_dz + k.d] = dy_t * pre * lk_silu_grad(z[r * ld_z + k.d]);
    }
}
LK_KERNEL(lk_ssm_scan_backward_f32);

// out[r·ld_out + n] = Σ_g partial[(g·rows + r)·N + n], g = 0, 1, ... in order. Grid-stride over rows·N.
extern "C" __global__ void __launch_bounds__(kSsmThreads) lk_ssm_reduce_groups_f32(const float* partial, int groups,
                                                                                   long long rows, int N, float* out,
                                                                                   int ld_out) {
    for (lk_i64 i = (lk_i64)blockIdx.x * blockDim.x + threadIdx.x; i < rows * N; i += (lk_i64)gridDim.x * blockDim.x) {
        float sum = 0.0f;
        for (int g = 0; g < groups; ++g) sum += partial[(lk_i64)g * rows * N + i];
        out[(i / N) * ld_out + i % N] = sum;
    }
}
LK_KERNEL(lk_ssm_reduce_groups_f32);

// ---- decode ----------------------------------------------------------------------------------------------
extern "C" __global__ void __launch_bounds__(kSsmThreads) lk_ssm_step_f32(
    const float* u, int ld_u, const float* delta, int ld_delta, const float* delta_bias, const float* A, const float* Bm,
    const float* Cm, int ld_bc, const float* Dskip, const float* z, int ld_z, float* h, float* y, int ld_y, int batch,
    int D, int N) {
    const ScanInputs in{u, delta, delta_bias, A, Bm, Cm, Dskip, z, ld_u, ld_delta, ld_bc, ld_z, N};
    for (lk_i64 i = (lk_i64)blockIdx.x * blockDim.x + threadIdx.x; i < (lk_i64)batch * D; i += (lk_i64)gridDim.x * blockDim.x) {
        const lk_i64 b = i / D;
        const int d = (int)(i - b * D);
        float state[kSsmMaxState], decay[kSsmMaxState];
#pragma unroll
        for (int n = 0; n < kSsmMaxState; ++n) state[n] = n < N ? h[i * N + n] : 0.0f, decay[n] = 1.0f;
        y[b * ld_y + d] = in.advance(b, d, state, decay) * in.gate(b, d);
#pragma unroll
        for (int n = 0; n < kSsmMaxState; ++n)
            if (n < N) h[i * N + n] = state[n];
    }
}
LK_KERNEL(lk_ssm_step_f32);

// ---- the causal depthwise convolution + SiLU --------------------------------------------------------------
namespace {

LK_DEVICE float lk_ssm_conv_pre(const float* x, int ld_x, const float* weight, const float* bias, lk_i64 b, int t, int d,
                                int L, int K) {
    float sum = bias ? bias[d] : 0.0f;
    for (int j = lk_max(0, K - 1 - t); j < K; ++j) sum += weight[d * K + j] * x[(b * L + t - K + 1 + j) * ld_x + d];
    return sum;
}

}  // namespace

extern "C" __global__ void __launch_bounds__(kSsmThreads) lk_ssm_conv_forward_f32(const float* x, int ld_x, const float* weight,
                                                                                  const float* bias, float* y, int ld_y,
                                                                                  int batch, int L, int D, int K) {
    for (lk_i64 i = (lk_i64)blockIdx.x * blockDim.x + threadIdx.x; i < (lk_i64)batch * L * D; i += (lk_i64)gridDim.x * blockDim.x) {
        const lk_i64 r = i / D;
        const int d = (int)(i - r * D);
        y[r * ld_y + d] = lk_silu(lk_ssm_conv_pre(x, ld_x, weight, bias, r / L, (int)(r % L), d, L, K));
    }
}
LK_KERNEL(lk_ssm_conv_forward_f32);

extern "C" __global__ void __launch_bounds__(kSsmThreads) lk_ssm_conv_backward_f32(
    const float* x, int ld_x, const float* weight, const float* bias, const float* dy, int ld_dy, float* dx, int ld_dx,
    int batch, int L, int D, int K) {
    for (lk_i64 i = (lk_i64)blockIdx.x * blockDim.x + threadIdx.x; i < (lk_i64)batch * L * D; i += (lk_i64)gridDim.x * blockDim.x) {
        const lk_i64 r = i / D, b = r / L;
        const int d = (int)(i - r * D), s = (int)(r % L);
        float sum = 0.0f;  // input s feeds outputs t = s + K - 1 - j, j < K, t < L
        for (int j = K - 1; j >= 0; --j) {
            const int t = s + K - 1 - j;
            if (t >= L) continue;
            const float pre = lk_ssm_conv_pre(x, ld_x, weight, bias, b, t, d, L, K);
            sum += weight[d * K + j] * dy[(b * L + t) * ld_dy + d] * lk_silu_grad(pre);
        }
        dx[r * ld_dx + d] = sum;
    }
}
LK_KERNEL(lk_ssm_conv_backward_f32);

extern "C" __global__ void __launch_bounds__(kSsmThreads) lk_ssm_conv_step_f32(const float* x, int ld_x, const float* weight,
                                                                               const float* bias, float* state, float* y,
                                                                               int ld_y, int batch, int D, int K) {
    for (lk_i64 i = (lk_i64)blockIdx.x * blockDim.x + threadIdx.x; i < (lk_i64)batch * D; i += (lk_i64)gridDim.x * blockDim.x) {
        const lk_i64 b = i / D;
        const int d = (int)(i - b * D);
        float* window = state + i * (K - 1);
        const float input = x[b * ld_x + d];
        float sum = bias ? bias[d] : 0.0f;
        for (int j = 0; j < K - 1; ++j) sum += weight[d * K + j] * window[j];
        sum += weight[d * K + K - 1] * input;
        for (int j = 0; j + 1 < K - 1; ++j) window[j] = window[j + 1];
        if (K > 1) window[K - 2] = input;
        y[b * ld_y + d] = lk_silu(sum);
    }
}
LK_KERNEL(lk_ssm_conv_step_f32);

extern "C" __global__ void __launch_bounds__(kSsmThreads) lk_ssm_copy_columns_f32(const float* src, int ld_src, float* dst,
                                                                                  int ld_dst, long long rows, int width) {
    for (lk_i64 i = (lk_i64)blockIdx.x * blockDim.x + threadIdx.x; i < rows * width; i += (lk_i64)gridDim.x * blockDim.x) {
        const lk_i64 r = i / width, c = i - r * width;
        dst[r * ld_dst + c] = src[r * ld_src + c];
    }
}
LK_KERNEL(lk_ssm_copy_columns_f32);
