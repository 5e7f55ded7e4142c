// The router's ops for the mixture of rank-1 experts, each with its backward: the linear map of x to
// pool logits, softmax, top-k with renormalisation (Mixtral's norm_topk_prob), and the auxiliary
// load-balancing loss as Switch and Mixtral use it (HF's load_balancing_loss_func: E·Σ_j f_j·P_j,
// f_j the fraction of slots routed to expert j, P_j its mean probability). Every routing tensor is
// F32; expert indices travel as exact integers in F32 (Gated.MaxExactIndex). The tape records these
// ops through Autograd.RoutingTape.
using LoraKernels.Families.Gated;

namespace LoraKernels.Ops;

public static class Routing
{
    /// <summary>logits [M, E] (F32) = x Wrᵀ, for x [M, in] and the router's weight Wr [E, in] (x's dtype and device).</summary>
    public static Tensor Logits(Tensor x, Tensor router)
    {
        const string op = "Routing.Logits";
        var (m, experts) = Linear(op, x, router);
        AdapterChecks.OutputSize(op, "logits", m, experts);
        Tensor logits = Tensor.Empty(x.Device, DType.F32, m, experts);
        try
        {
            IGatedKernels.On(x.Device).RouterForward(x, router, logits);
            return logits;
        }
        catch
        {
            logits.Dispose();
            throw;
        }
    }

    /// <summary>dx = dlogits·Wr [M, in] and dWr = dlogitsᵀ·x [E, in] (x's dtype), each only when requested.</summary>
    public static (Tensor? Dx, Tensor? DRouter) LogitsBackward(Tensor x, Tensor router, Tensor dLogits, bool needDx = true,
                                                              bool needDRouter = true)
    {
        const string op = "Routing.LogitsBackward";
        var (m, experts) = Linear(op, x, router);
        Checks.Alive(dLogits, op, nameof(dLogits));
        Checks.Shape(op, nameof(dLogits), dLogits, "M, E", [m, experts], DType.F32, x.Device);
        Tensor? dx = null, dRouter = null;
        try
        {
            if (needDx) dx = Tensor.Empty(x.Device, x.DType, m, x.Shape[1]);
            if (needDRouter) dRouter = Tensor.Empty(x.Device, x.DType, experts, x.Shape[1]);
            if (dx is not null || dRouter is not null) IGatedKernels.On(x.Device).RouterBackward(x, router, dLogits, dx, dRouter);
            return (dx, dRouter);
        }
        catch
        {
            Checks.DisposeAll(dx, dRouter);
            throw;
        }
    }

    /// <summary>
    /// probs [M, E] = softmax of each row of <paramref name="logits"/> (F32). A NaN or ±Inf logit is refused with the
    /// row and expert named: it has no probability, and a NaN would route its token to no expert at all.
    /// </summary>
    public static Tensor Softmax(Tensor logits)
    {
        const string op = "Routing.Softmax";
        Rows(op, nameof(logits), logits);
        Checks.AllFinite(op, nameof(logits), logits,
                         "the router's logits decide where each token goes; a NaN or infinite logit has no routing probability (check the router's weight and the layer's input).");
        Tensor probs = Tensor.Empty(logits.Device, DType.F32, logits.Shape[0], logits.Shape[1]);
        try
        {
            IGatedKernels.On(logits.Device).Softmax(logits, probs);
            return probs;
        }
        catch
        {
            probs.Dispose();
            throw;
        }
    }

    /// <summary>dlogits = probs ⊙ (dprobs − Σ_j probs ⊙ dprobs), row by row.</summary>
    public static Tensor SoftmaxBackward(Tensor probs, Tensor dProbs)
    {
        const string op = "Routing.SoftmaxBackward";
        Rows(op, nameof(probs), probs);
        Checks.Alive(dProbs, op, nameof(dProbs));
        Checks.SameAs(op, nameof(dProbs), dProbs, nameof(probs), probs);
        Tensor dLogits = Tensor.Empty(probs.Device, DType.F32, probs.Shape[0], probs.Shape[1]);
        try
        {
            IGatedKernels.On(probs.Device).SoftmaxBackward(probs, dProbs, dLogits);
            return dLogits;
        }
        catch
        {
            dLogits.Dispose();
            throw;
        }
    }

    /// <summary>
    /// The k most probable experts of each row of <paramref name="probs"/> [M, E], in decreasing order (equal
    /// probabilities: the lower index first): Expert [M, k] (their indices, exact integers in F32) and Weight [M, k]
    /// (their probabilities, divided by their sum when <paramref name="renormalize"/>, as Mixtral's norm_topk_prob).
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">k is not in [1, E].</exception>
    public static (Tensor Weight, Tensor Expert) TopK(Tensor probs, int k, bool renormalize = true)
    {
        const string op = "Routing.TopK";
        Rows(op, nameof(probs), probs);
        long tokens = probs.Shape[0], experts = probs.Shape[1];
        CheckK(op, k, experts, probs);
        Tensor weight = Tensor.Empty(probs.Device, DType.F32, tokens, k);
        Tensor? expert = null;
        try
        {
            expert = Tensor.Empty(probs.Device, DType.F32, tokens, k);
            IGatedKernels.On(probs.Device).RouteTopK(probs, k, renormalize, expert, weight);
            return (weight, expert);
        }
        catch
        {
            Checks.DisposeAll(weight, expert);
            throw;
        }
    }

    /// <summary>d(probs) [M, E] from d(weight) [M, k] of <see cref="TopK"/>: zero except at the picked experts.</summary>
    public static Tensor TopKBackward(Tensor probs, Tensor expert, Tensor weight, Tensor dWeight, bool renormalize = true) =>
        TopKBackward(probs, expert, weight, dWeight, renormalize, checkIndices: true);

    /// <summary>
    /// The load-balancing loss E·Σ_j f_j·P_j of a routing (HF's load_balancing_loss_func for Switch and Mixtral): f_j is
    /// the number of slots routed to expert j over M, P_j the mean of probs[:, j]; k when perfectly balanced (1 for
    /// top-1). Returns the loss and Stats [2E] (counts, then probability sums) for <see cref="BalanceLossBackward"/>.
    /// </summary>
    public static (float Loss, Tensor Stats) BalanceLoss(Tensor probs, Tensor expert) => BalanceLoss(probs, expert, checkIndices: true);

    /// <summary><see cref="TopKBackward(Tensor, Tensor, Tensor, Tensor, bool)"/>; without <paramref name="checkIndices"/> the indices are trusted (the router wrote them).</summary>
    internal static Tensor TopKBackward(Tensor probs, Tensor expert, Tensor weight, Tensor dWeight, bool renormalize, bool checkIndices)
    {
        const string op = "Routing.TopKBackward";
        Rows(op, nameof(probs), probs);
        long k = Slots(op, probs, expert, checkIndices);
        Checks.Alive(weight, op, nameof(weight));
        Checks.Shape(op, nameof(weight), weight, "M, k", [probs.Shape[0], k], DType.F32, probs.Device);
        Checks.Alive(dWeight, op, nameof(dWeight));
        Checks.SameAs(op, nameof(dWeight), dWeight, nameof(weight), weight);
        Tensor dProbs = Tensor.Empty(probs.Device, DType.F32, probs.Shape[0], probs.Shape[1]);
        try
        {
            IGatedKernels.On(probs.Device).RouteTopKBackward(probs, expert, weight, dWeight, renormalize, dProbs);
            return dProbs;
        }
        catch
        {
            dProbs.Dispose();
            throw;
        }
    }

    /// <summary><see cref="BalanceLoss(Tensor, Tensor)"/>; without <paramref name="checkIndices"/> the indices are trusted.</summary>
    internal static (float Loss, Tensor Stats) BalanceLoss(Tensor probs, Tensor expert, bool checkIndices)
    {
        const string op = "Routing.BalanceLoss";
        Rows(op, nameof(probs), probs);
        Slots(op, probs, expert, checkIndices);
        long tokens = probs.Shape[0], experts = probs.Shape[1];
        Tensor stats = Tensor.Empty(probs.Device, DType.F32, 2 * experts);
        try
        {
            IGatedKernels.On(probs.Device).Balance(probs, expert, stats);
            float[] values = stats.ToArray();
            double sum = 0;
            for (long j = 0; j < experts; j++) sum += values[j] / (double)tokens * (values[experts + j] / (double)tokens);
            return ((float)(experts * sum), stats);
        }
        catch
        {
            stats.Dispose();
            throw;
        }
    }

    /// <summary>d(coefficient·loss)/d(probs) [tokens, E] = coefficient·E·count_j / M² (the counts carry no gradient).</summary>
    public static Tensor BalanceLossBackward(Tensor stats, long tokens, float coefficient)
    {
        const string op = "Routing.BalanceLossBackward";
        Checks.Alive(stats, op, nameof(stats));
        if (stats.Rank != 1 || stats.Shape[0] < 2 || stats.Shape[0] % 2 != 0 || stats.DType != DType.F32)
            throw new ArgumentException($"{op}: stats must be F32 [2E] as BalanceLoss returns it, got {stats.Describe()}", nameof(stats));
        if (tokens < 1) throw new ArgumentOutOfRangeException(nameof(tokens), tokens, $"{op}: tokens must be >= 1.");
        Checks.Finite(op, nameof(coefficient), coefficient);
        long experts = stats.Shape[0] / 2;
        AdapterChecks.OutputSize(op, "dprobs", tokens, experts);
        Tensor dProbs = Tensor.Empty(stats.Device, DType.F32, tokens, experts);
        try
        {
            IGatedKernels.On(stats.Device).BalanceBackward(stats, coefficient, dProbs);
            return dProbs;
        }
        catch
        {
            dProbs.Dispose();
            throw;
        }
    }

    /// <summary>k must be in [1, E] (a token cannot pick more experts than the pool holds).</summary>
    internal static void CheckK(string op, long k, long experts, Tensor? probs = null)
    {
        if (k < 1 || k > experts)
            throw new ArgumentOutOfRangeException(nameof(k), k,
                $"{op}: k = {k} experts per token, but the pool holds E = {experts}{(probs is null ? "" : $" (probs is {probs.Describe()})")}; k must be in [1, E].");
    }

    /// <summary>x [M, in] and Wr [E, in], one dtype and device; returns (M, E).</summary>
    private static (long M, long Experts) Linear(string op, Tensor x, Tensor router)
    {
        Checks.Alive(router, op, nameof(router));
        (long experts, long inFeatures) = Checks.Matrix(op, nameof(router), router, "E, in");
        long m = AdapterChecks.Activations(op, x, inFeatures, router.DType, router.Device, "router");
        return (m, experts);
    }

    /// <summary>An F32 [M, E] matrix of router rows.</summary>
    private static void Rows(string op, string name, Tensor tensor)
    {
        Checks.Alive(tensor, op, name);
        Checks.Matrix(op, name, tensor, "M, E");
        Checks.Fp32(op, name, tensor);
        if (tensor.Shape[1] >= Gated.MaxExactIndex)
            throw new ArgumentException($"{op}: {name} is {tensor.Describe()}: a pool over 2^24 experts cannot be indexed exactly in F32.", name);
    }

    /// <summary>expert [M, k] (F32) routes the rows of probs (each index read back and checked when asked); returns k.</summary>
    private static long Slots(string op, Tensor probs, Tensor expert, bool checkIndices)
    {
        Checks.Alive(expert, op, nameof(expert));
        if (expert.Rank != 2 || expert.Shape[0] != probs.Shape[0] || expert.DType != DType.F32 || !ReferenceEquals(expert.Device, probs.Device))
            throw new ArgumentException($"{op}: expert must be [M, k] = [{probs.Shape[0]}, k] with dtype F32 on {probs.Device}, got {expert.Describe()}", nameof(expert));
        CheckK(op, expert.Shape[1], probs.Shape[1], probs);
        if (probs.Shape[0] * expert.Shape[1] >= Gated.MaxExactIndex)
            throw new ArgumentException($"{op}: M·k = {probs.Shape[0] * expert.Shape[1]} slots is over 2^24; split the batch.", nameof(expert));
        if (checkIndices) Gated.Indices(op, expert, probs.Shape[1]);
        return expert.Shape[1];
    }
}
