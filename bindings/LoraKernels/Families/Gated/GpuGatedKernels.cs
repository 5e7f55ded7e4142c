// Launch code for the gated-rank family (kernels/gated.cu on top of kernels/lora.cu): which kernel,
// grid, block and argument order for each op; kernels/gated.cu's top comment says why the products
// are LoRA's. A per-rank gate folds into B' = B·diag(g) and runs GpuLoraKernels unchanged; a
// per-token gate hands u ⊙ G to LoRA's tiled forward as u; top-k runs LoRA's base product with
// r = 0 and adds the picked experts' terms. tests/native/parity/gated_parity_test.cpp launches the
// same sequences.
using LoraKernels.Backends.Gpu;
using LoraKernels.Families.Lora;
using LoraKernels.Runtime;

namespace LoraKernels.Families.Gated;

internal sealed class GpuGatedKernels(GpuLaunch gpu) : IGatedKernels
{
    private readonly GpuLoraKernels _lora = new(gpu);

    // kernels/gated.cu: kGatedThreads, the slots (or rows) one block's warps take, the columns of
    // one rank_grad block and of one scatter block.
    internal const uint GatedThreads = 256;
    internal const int WarpsPerBlock = 8;
    internal const int RankGradColumns = 32;
    internal const int ScatterColumns = 256;

    public void Forward(Tensor x, Tensor w0, Tensor? bias, Tensor a, Tensor b, Tensor gate, float scale, float dropoutP, ulong seed,
                        Tensor y, Tensor u)
    {
        if (gate.Rank == 1)
        {
            using Tensor folded = Fold(b, gate);
            _lora.Forward(x, w0, bias, a, folded, scale, dropoutP, seed, y, u);
            return;
        }
        var (tokens, inFeatures, outFeatures, rank) = Dims(x, w0, a);
        LowRankLaunches.Project(gpu, x, a, u, tokens, inFeatures, rank, dropoutP, seed);
        using Tensor gated = Tensor.Empty(x.Device, DType.F32, tokens, rank);
        TokenGate(u, null, gate, gated, null, null);
        using var args = new KernelArguments()
            .Pointer(x).Pointer(w0).Pointer(bias).Pointer(gated)
            .Pointer(b).Pointer(y)
            .Int(tokens).Int(inFeatures).Int(outFeatures).Int(rank).Float(scale);
        gpu.LaunchTiled(GpuLaunch.KernelFor(x.DType, "lk_lora_forward_tiled_f32", "lk_lora_forward_tiled_bf16"), tokens, outFeatures, args);
    }

    public void Backward(Tensor x, Tensor w0, Tensor a, Tensor b, Tensor gate, Tensor u, Tensor dy, float scale, float dropoutP,
                         ulong seed, Tensor? dx, Tensor? dA, Tensor? dB, Tensor? dGate)
    {
        if (gate.Rank == 1)
        {
            BackwardPerRank(x, w0, a, b, gate, u, dy, scale, dropoutP, seed, dx, dA, dB, dGate);
            return;
        }
        var (tokens, inFeatures, outFeatures, rank) = Dims(dy, w0, a);
        DType dtype = dy.DType;
        // z = scale·dy B, then du = z ⊙ G, dG = z ⊙ u and u ⊙ G for dB; LoRA's kernels take it from there.
        using Tensor z = Tensor.Empty(dy.Device, DType.F32, tokens, rank);
        using Tensor du = Tensor.Empty(dy.Device, DType.F32, tokens, rank);
        using Tensor? gated = dB is null ? null : Tensor.Empty(dy.Device, DType.F32, tokens, rank);
        using (var args = new KernelArguments()
                   .Pointer(dy).Pointer(b).Pointer(z)
                   .Int(tokens).Int(outFeatures).Int(rank).Float(scale))
            gpu.LaunchTiled(GpuLaunch.KernelFor(dtype, "lk_lora_grad_u_f32", "lk_lora_grad_u_bf16"), tokens, rank, args);
        TokenGate(u, z, gate, gated, du, dGate);
        if (dB is not null)
        {
            using var args = new KernelArguments()
                .Pointer(dy).Pointer(gated).Pointer(dB)
                .Int(tokens).Int(outFeatures).Int(rank).Float(scale);
            gpu.LaunchTiled(GpuLaunch.KernelFor(dtype, "lk_lora_grad_b_f32", "lk_lora_grad_b_bf16"), outFeatures, rank, args);
        }
        if (dA is not null)
        {
            using var args = new KernelArguments()
                .Pointer(du).Pointer(x).Pointer(dA)
                .Int(tokens).Int(inFeatures).Int(rank).Float(dropoutP).ULong(seed);
            gpu.LaunchTiled(GpuLaunch.KernelFor(dtype, "lk_lora_grad_a_f32", "lk_lora_grad_a_bf16"), rank, inFeatures, args);
        }
        if (dx is not null) GradX(dy, w0, du, a, dx, tokens, inFeatures, outFeatures, rank, dropoutP, seed);
    }

    public void Merge(Tensor w, Tensor a, Tensor b, Tensor gate, float scale)
    {
        using Tensor folded = Fold(b, gate);
        _lora.Merge(w, a, folded, scale);
    }

    public void TopKForward(Tensor x, Tensor w0, Tensor? bias, Tensor a, Tensor b, Tensor expert, Tensor weight, float scale,
                            float dropoutP, ulong seed, Tensor y, Tensor h)
    {
        int tokens = checked((int)x.Shape[0]), inFeatures = checked((int)x.Shape[1]), outFeatures = checked((int)w0.Shape[0]);
        int experts = checked((int)a.Shape[0]), k = checked((int)expert.Shape[1]);
        BaseForward(x, w0, bias, y, tokens, inFeatures, outFeatures);
        using Tensor coefficient = Tensor.Empty(x.Device, DType.F32, tokens, k);
        using (var args = new KernelArguments()
                   .Pointer(x).Pointer(a).Pointer(expert).Pointer(weight).Pointer(h).Pointer(coefficient)
                   .Int(tokens).Int(inFeatures).Int(k).Float(scale).Float(dropoutP).ULong(seed))
            gpu.Launch(GpuLaunch.KernelFor(x.DType, "lk_gated_topk_project_f32", "lk_gated_topk_project_bf16"),
                       new Dim3((uint)GpuLaunch.CeilDiv((long)tokens * k, WarpsPerBlock)), new Dim3(GatedThreads), 0, args);
        // y[m, n] += Σ_t c_mt·B[n, e_mt]: B's column e is strided by E.
        Expand(y, coefficient, expert, b, 1, experts, tokens, outFeatures, k, 0f, 0);
    }

    public void TopKBackward(Tensor x, Tensor w0, Tensor a, Tensor b, Tensor expert, Tensor weight, Tensor h, Tensor dy,
                             float scale, float dropoutP, ulong seed, Tensor? dx, Tensor? dA, Tensor? dB, Tensor? dWeight)
    {
        int tokens = checked((int)dy.Shape[0]), inFeatures = checked((int)w0.Shape[1]), outFeatures = checked((int)w0.Shape[0]);
        int experts = checked((int)a.Shape[0]), k = checked((int)expert.Shape[1]);
        DType dtype = dy.DType;
        using Tensor dh = Tensor.Empty(dy.Device, DType.F32, tokens, k);
        using Tensor? coefficientB = dB is null ? null : Tensor.Empty(dy.Device, DType.F32, tokens, k);
        using (var args = new KernelArguments()
                   .Pointer(dy).Pointer(b).Pointer(expert).Pointer(weight).Pointer(h).Pointer(dWeight).Pointer(dh).Pointer(coefficientB)
                   .Int(tokens).Int(outFeatures).Int(experts).Int(k).Float(scale))
            gpu.Launch(GpuLaunch.KernelFor(dtype, "lk_gated_topk_grad_h_f32", "lk_gated_topk_grad_h_bf16"),
                       new Dim3((uint)GpuLaunch.CeilDiv((long)tokens * k, WarpsPerBlock)), new Dim3(GatedThreads), 0, args);
        if (dA is not null) Scatter(dA, dh, expert, x, inFeatures, 1, tokens, inFeatures, experts, k, dropoutP, seed);
        if (dB is not null) Scatter(dB, coefficientB!, expert, dy, 1, experts, tokens, outFeatures, experts, k, 0f, 0);
        if (dx is null) return;
        GradX(dy, w0, null, null, dx, tokens, inFeatures, outFeatures, 0, 0f, 0);
        Expand(dx, dh, expert, a, inFeatures, 1, tokens, inFeatures, k, dropoutP, seed);
    }

    public void RouterForward(Tensor x, Tensor router, Tensor logits) =>
        LowRankLaunches.Project(gpu, x, router, logits, checked((int)x.Shape[0]), checked((int)x.Shape[1]),
                                checked((int)router.Shape[0]), 0f, 0);

    public void RouterBackward(Tensor x, Tensor router, Tensor dLogits, Tensor? dx, Tensor? dRouter)
    {
        int tokens = checked((int)x.Shape[0]), inFeatures = checked((int)x.Shape[1]), experts = checked((int)router.Shape[0]);
        if (dRouter is not null)
        {
            using var args = new KernelArguments()
                .Pointer(dLogits).Pointer(x).Pointer(dRouter)
                .Int(tokens).Int(inFeatures).Int(experts).Float(0f).ULong(0);
            gpu.LaunchTiled(GpuLaunch.KernelFor(x.DType, "lk_lora_grad_a_f32", "lk_lora_grad_a_bf16"), experts, inFeatures, args);
        }
        // dx = dlogits·Wr: LoRA's grad_x with no base columns (out = 0).
        if (dx is not null) GradX(null, null, dLogits, router, dx, tokens, inFeatures, 0, experts, 0f, 0);
    }

    public void Softmax(Tensor logits, Tensor probs) => RowLaunch("lk_gated_softmax_f32", logits, args => args
        .Pointer(logits).Pointer(probs).Int(checked((int)logits.Shape[0])).Int(checked((int)logits.Shape[1])));

    public void SoftmaxBackward(Tensor probs, Tensor dProbs, Tensor dLogits) => RowLaunch("lk_gated_softmax_backward_f32", probs, args => args
        .Pointer(probs).Pointer(dProbs).Pointer(dLogits).Int(checked((int)probs.Shape[0])).Int(checked((int)probs.Shape[1])));

    public void RouteTopK(Tensor probs, int k, bool renormalize, Tensor expert, Tensor weight) => RowLaunch("lk_gated_route_topk_f32", probs, args => args
        .Pointer(probs).Pointer(expert).Pointer(weight)
        .Int(checked((int)probs.Shape[0])).Int(checked((int)probs.Shape[1])).Int(k).Int(renormalize ? 1 : 0));

    public void RouteTopKBackward(Tensor probs, Tensor expert, Tensor weight, Tensor dWeight, bool renormalize, Tensor dProbs) =>
        RowLaunch("lk_gated_route_topk_backward_f32", probs, args => args
            .Pointer(probs).Pointer(expert).Pointer(weight).Pointer(dWeight).Pointer(dProbs)
            .Int(checked((int)probs.Shape[0])).Int(checked((int)probs.Shape[1])).Int(checked((int)expert.Shape[1]))
            .Int(renormalize ? 1 : 0));

    public void Balance(Tensor probs, Tensor expert, Tensor stats)
    {
        int experts = checked((int)probs.Shape[1]);
        using var args = new KernelArguments()
            .Pointer(probs).Pointer(expert).Pointer(stats)
            .Int(checked((int)probs.Shape[0])).Int(experts).Int(checked((int)expert.Shape[1]));
        gpu.Launch("lk_gated_balance_f32", new Dim3((uint)experts), new Dim3(GatedThreads), 0, args);
    }

    public void BalanceBackward(Tensor stats, float coefficient, Tensor dProbs)
    {
        long tokens = dProbs.Shape[0], experts = dProbs.Shape[1];
        float factor = (float)(coefficient * (double)experts / ((double)tokens * tokens));
        using var args = new KernelArguments()
            .Pointer(stats).Pointer(dProbs).Int(checked((int)tokens)).Int(checked((int)experts)).Float(factor);
        gpu.LaunchElementwise("lk_gated_balance_backward_f32", tokens * experts, args);
    }

    public void SoftThreshold(Tensor gate, float lambda)
    {
        using var args = new KernelArguments().Pointer(gate).Long(gate.ElementCount).Float(lambda);
        gpu.LaunchElementwise("lk_gated_soft_threshold_f32", gate.ElementCount, args);
    }

    public void Sensitivity(Tensor p, Tensor grad, Tensor importance, Tensor uncertainty, float beta1, float beta2)
    {
        using var args = new KernelArguments()
            .Pointer(p).Pointer(grad).Pointer(importance).Pointer(uncertainty).Long(p.ElementCount).Float(beta1).Float(beta2);
        gpu.LaunchElementwise(GpuLaunch.KernelFor(p.DType, "lk_gated_sensitivity_f32", "lk_gated_sensitivity_bf16"), p.ElementCount, args);
    }

    public void TripletScore(Tensor importanceA, Tensor uncertaintyA, Tensor importanceE, Tensor uncertaintyE, Tensor importanceB,
                             Tensor uncertaintyB, Tensor score)
    {
        int rank = checked((int)importanceA.Shape[0]);
        using var args = new KernelArguments()
            .Pointer(importanceA).Pointer(uncertaintyA).Pointer(importanceE).Pointer(uncertaintyE)
            .Pointer(importanceB).Pointer(uncertaintyB).Pointer(score)
            .Int(rank).Int(checked((int)importanceA.Shape[1])).Int(checked((int)importanceB.Shape[0]));
        gpu.Launch("lk_gated_triplet_score_f32", new Dim3((uint)rank), new Dim3(GatedThreads), 0, args);
    }

    public void Gram(Tensor x, bool transpose, Tensor c)
    {
        int rows = checked((int)x.Shape[0]), columns = checked((int)x.Shape[1]);
        int side = transpose ? columns : rows;
        using var args = new KernelArguments().Pointer(x).Pointer(c).Int(rows).Int(columns).Int(transpose ? 1 : 0);
        gpu.LaunchTiled(GpuLaunch.KernelFor(x.DType, "lk_gated_gram_f32", "lk_gated_gram_bf16"), side, side, args);
    }

    public void OrthogonalityGradient(Tensor x, Tensor c, bool transpose, float coefficient, Tensor g)
    {
        int rows = checked((int)x.Shape[0]), columns = checked((int)x.Shape[1]);
        using var args = new KernelArguments()
            .Pointer(x).Pointer(c).Pointer(g).Int(rows).Int(columns).Int(transpose ? 1 : 0).Float(coefficient);
        gpu.LaunchTiled(GpuLaunch.KernelFor(x.DType, "lk_gated_orth_grad_f32", "lk_gated_orth_grad_bf16"), rows, columns, args);
    }

    /// <summary>LoRA's backward on B' = B·diag(g) (dx, dA, dB'), then dB = dB'·diag(g) and dg from dB' in one pass.</summary>
    private void BackwardPerRank(Tensor x, Tensor w0, Tensor a, Tensor b, Tensor gate, Tensor u, Tensor dy, float scale, float dropoutP,
                                 ulong seed, Tensor? dx, Tensor? dA, Tensor? dB, Tensor? dGate)
    {
        using Tensor folded = Fold(b, gate);
        using Tensor? scratch = dB is null && dGate is not null ? Tensor.Empty(b.Device, b.DType, b.Shape[0], b.Shape[1]) : null;
        Tensor? dBFolded = dB ?? scratch;
        _lora.Backward(x, w0, a, folded, u, dy, scale, dropoutP, seed, dx, dA, dBFolded);
        if (dBFolded is null) return;
        int outFeatures = checked((int)b.Shape[0]), rank = checked((int)b.Shape[1]);
        using var args = new KernelArguments()
            .Pointer(b).Pointer(dBFolded).Pointer(gate).Pointer(dB).Pointer(dGate)
            .Int(outFeatures).Int(rank);
        gpu.Launch(GpuLaunch.KernelFor(b.DType, "lk_gated_rank_grad_f32", "lk_gated_rank_grad_bf16"),
                   new Dim3((uint)GpuLaunch.CeilDiv(rank, RankGradColumns)), new Dim3(GatedThreads), 0, args);
    }

    /// <summary>B' = B·diag(g) [out, r] in B's dtype, owned by the caller.</summary>
    private Tensor Fold(Tensor b, Tensor gate)
    {
        Tensor folded = Tensor.Empty(b.Device, b.DType, b.Shape[0], b.Shape[1]);
        try
        {
            using var args = new KernelArguments()
                .Pointer(b).Pointer(gate).Pointer(folded).Int(checked((int)b.Shape[0])).Int(checked((int)b.Shape[1]));
            gpu.LaunchElementwise(GpuLaunch.KernelFor(b.DType, "lk_gated_fold_f32", "lk_gated_fold_bf16"), b.ElementCount, args);
            return folded;
        }
        catch
        {
            folded.Dispose();
            throw;
        }
    }

    /// <summary>gated = u ⊙ G, and with z: du = z ⊙ G, dG = z ⊙ u (each output when non-null).</summary>
    private void TokenGate(Tensor u, Tensor? z, Tensor gate, Tensor? gated, Tensor? du, Tensor? dGate)
    {
        using var args = new KernelArguments()
            .Pointer(u).Pointer(z).Pointer(gate).Pointer(gated).Pointer(du).Pointer(dGate).Long(u.ElementCount);
        gpu.LaunchElementwise("lk_gated_token_gate_f32", u.ElementCount, args);
    }

    /// <summary>y = x W0ᵀ + bias, LoRA's forward with r = 0: decode when it fits, else tiled.</summary>
    private void BaseForward(Tensor x, Tensor w0, Tensor? bias, Tensor y, int tokens, int inFeatures, int outFeatures)
    {
        DType dtype = x.DType;
        if (gpu.DecodeGeometry(tokens, inFeatures, outFeatures, 0) is { } geometry)
        {
            using var args = new KernelArguments()
                .Pointer(x).Pointer(w0).Pointer(bias).NullPointer().NullPointer().Pointer(y).NullPointer()
                .Int(tokens).Int(inFeatures).Int(outFeatures).Int(0).Float(0f).Float(0f).ULong(0);
            gpu.Launch(GpuLaunch.KernelFor(dtype, "lk_lora_forward_decode_f32", "lk_lora_forward_decode_bf16"), new Dim3(geometry.Blocks),
                       new Dim3(GpuLaunch.DecodeThreads), geometry.SharedBytes, args);
            return;
        }
        using var tiledArgs = new KernelArguments()
            .Pointer(x).Pointer(w0).Pointer(bias).NullPointer().NullPointer().Pointer(y)
            .Int(tokens).Int(inFeatures).Int(outFeatures).Int(0).Float(0f);
        gpu.LaunchTiled(GpuLaunch.KernelFor(dtype, "lk_lora_forward_tiled_f32", "lk_lora_forward_tiled_bf16"), tokens, outFeatures, tiledArgs);
    }

    /// <summary>dx = dy W0 + dropout'(du A) by LoRA's grad_x (dy and W0 null with out = 0; du and A null with r = 0).</summary>
    private void GradX(Tensor? dy, Tensor? w0, Tensor? du, Tensor? a, Tensor dx, int tokens, int inFeatures, int outFeatures, int rank,
                       float dropoutP, ulong seed)
    {
        using var args = new KernelArguments()
            .Pointer(dy).Pointer(w0).Pointer(du).Pointer(a).Pointer(dx)
            .Int(tokens).Int(inFeatures).Int(outFeatures).Int(rank).Float(dropoutP).ULong(seed);
        gpu.LaunchTiled(GpuLaunch.KernelFor(dx.DType, "lk_lora_grad_x_f32", "lk_lora_grad_x_bf16"), tokens, inFeatures, args);
    }

    /// <summary>y[m, c] += mask·Σ_t coefficient[m, t]·rows[e_mt·ldExpert + c·ldColumn] (lk_gated_topk_expand).</summary>
    private void Expand(Tensor y, Tensor coefficient, Tensor expert, Tensor rows, int ldExpert, int ldColumn, int tokens, int columns,
                        int k, float dropoutP, ulong seed)
    {
        using var args = new KernelArguments()
            .Pointer(y).Pointer(coefficient).Pointer(expert).Pointer(rows)
            .Int(ldExpert).Int(ldColumn).Int(tokens).Int(columns).Int(k).Float(dropoutP).ULong(seed);
        gpu.LaunchElementwise(GpuLaunch.KernelFor(y.DType, "lk_gated_topk_expand_f32", "lk_gated_topk_expand_bf16"), (long)tokens * columns, args);
    }

    /// <summary>G[j·ldExpert + c·ldColumn] = Σ over expert j's slots of coefficient·mask·X[m, c] (lk_gated_topk_scatter).</summary>
    private void Scatter(Tensor g, Tensor coefficient, Tensor expert, Tensor x, int ldExpert, int ldColumn, int tokens, int columns,
                         int experts, int k, float dropoutP, ulong seed)
    {
        using var args = new KernelArguments()
            .Pointer(g).Pointer(coefficient).Pointer(expert).Pointer(x)
            .Int(ldExpert).Int(ldColumn).Int(tokens).Int(columns).Int(k).Float(dropoutP).ULong(seed);
        gpu.Launch(GpuLaunch.KernelFor(g.DType, "lk_gated_topk_scatter_f32", "lk_gated_topk_scatter_bf16"),
                   new Dim3((uint)experts, (uint)GpuLaunch.CeilDiv(columns, ScatterColumns)), new Dim3(GatedThreads), 0, args);
    }

    /// <summary>A one-warp-per-row router kernel over the rows of <paramref name="rows"/> [M, E].</summary>
    private void RowLaunch(string kernel, Tensor rows, Func<KernelArguments, KernelArguments> arguments)
    {
        using var args = arguments(new KernelArguments());
        gpu.Launch(kernel, new Dim3((uint)GpuLaunch.CeilDiv(rows.Shape[0], WarpsPerBlock)), new Dim3(GatedThreads), 0, args);
    }

    /// <summary>(M, in, out, r) of a gated op: the tokens are the rows of x [M, in] or dy [M, out].</summary>
    private static (int Tokens, int In, int Out, int Rank) Dims(Tensor activations, Tensor w0, Tensor a) =>
        (checked((int)activations.Shape[0]), checked((int)w0.Shape[1]), checked((int)w0.Shape[0]), checked((int)a.Shape[0]));
}
