// cross_entropy.cu: softmax cross-entropy over rows of logits with class-index targets, the
// loss head of classification and language-model training (torch.nn.functional.cross_entropy
// with reduction "mean", ignore_index and label_smoothing). Semantics: lk_cpu_cross_entropy.
//
//   lk_loss_cross_entropy_f32(logits [M, C], targets [M] int32, M, C, ignore_index, smoothing,
//                             count (rows not ignored), block_sums [grid], dlogits [M, C] or null)
//   row loss  = lse - (1 - smoothing)·x_t - smoothing·mean_j x_j,  lse = max + log Σ exp(x - max)
//   dlogits   = (softmax - (1 - smoothing)·onehot(t) - smoothing/C) / count; 0 on ignored rows
//   block_sums[b] = Σ of the row losses block b handled, in row order (the host adds the grid's
//                   partials in block order and divides by the count: the same bits every run)
//
// Strategy: one block per row at a time (grid-stride over rows): pass 1 finds the row's max,
// pass 2 sums exp(x - max) and x in double (block reductions in a fixed order), pass 3 writes
// the gradient. Reads the row 2 times (3 with the gradient), writes it once: 8 (12) B/element.
// Assumptions: C >= 1; every target is in [0, C) or equal to ignore_index (checked by the caller).
#include "block_reduce.cuh"
#include "common.cuh"
#include "launch_geometry.cuh"

extern "C" __global__ void __launch_bounds__(kElementwiseThreads) lk_loss_cross_entropy_f32(
    const float* logits, const int* targets, int M, int C, int ignore_index, float smoothing,
    int count, double* block_sums, float* dlogits) {
    LK_SHARED(float, max_scratch, [kElementwiseThreads / 32]);
    LK_SHARED(double, sum_scratch, [kElementwiseThreads / 32]);
    const int tid = (int)threadIdx.x;
    const double inv_count = count > 0 ? 1.0 / (double)count : 0.0;
    double block_loss = 0.0;
    for (lk_i64 row = blockIdx.x; row < M; row += gridDim.x) {
        const float* x = logits + row * C;
        float* dx = dlogits ? dlogits + row * C : nullptr;
        const int target = targets[row];
        if (target == ignore_index) {  // the same branch for the whole block: no barrier is skipped
            if (dx)
                for (int j = tid; j < C; j += kElementwiseThreads) dx[j] = 0.0f;
            continue;
        }
        float local_max = lk_bits_f32(0xff800000u);  // -Inf
        for (int j = tid; j < C; j += kElementwiseThreads) local_max = x[j] > local_max ? x[j] : local_max;
        const float row_max = lk_block_max<kElementwiseThreads>(local_max, max_scratch);
        double local_exp = 0.0, local_x = 0.0;
        for (int j = tid; j < C; j += kElementwiseThreads) {
            local_exp += (double)expf(x[j] - row_max);
            local_x += (double)x[j];
        }
        const double exp_sum = lk_block_sum_f64<kElementwiseThreads>(local_exp, sum_scratch);
        const double x_sum = lk_block_sum_f64<kElementwiseThreads>(local_x, sum_scratch);
        const double lse = (double)row_max + log(exp_sum);
        block_loss += lse - (1.0 - (double)smoothing) * (double)x[target] - (double)smoothing * x_sum / (double)C;
        if (dx) {
            const double inv_sum = 1.0 / exp_sum, spread = (double)smoothing / (double)C;
            for (int j = tid; j < C; j += kElementwiseThreads) {
                const double p = (double)expf(x[j] - row_max) * inv_sum;
                const double g = p - spread - (j == target ? 1.0 - (double)smoothing : 0.0);
                dx[j] = (float)(g * inv_count);
            }
        }
    }
    if (tid == 0) block_sums[blockIdx.x] = block_loss;
}
LK_KERNEL(lk_loss_cross_entropy_f32);
