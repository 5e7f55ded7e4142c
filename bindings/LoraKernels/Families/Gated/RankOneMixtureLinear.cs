// A linear layer adapted by a router over a pool of rank-1 experts, the variant guide's MoRA
// (3.5.2: ΔW_i·x = Σ_j G(x)_{i,j}·u_j·v_jᵀ·x, a central pool shared by the modules, a router per module):
//   logits = x·Wrᵀ, p = softmax(logits), (w, e) = top-k of p renormalised (Mixtral's norm_topk_prob),
//   y = x W0ᵀ + bias + s·Σ_t w_t·u_{e_t}·(v_{e_t}ᵀ·dropout(x)),   s = alpha / k,
// or with dense routing y = x W0ᵀ + bias + s·((dropout(x)·Aᵀ) ⊙ p)·Bᵀ, s = alpha / E. The top-k forward
// reads only the picked experts (Ops.Gated.TopKForward). While recording, the layer adds the Switch /
// Mixtral load-balancing loss E·Σ_j f_j·P_j times BalanceCoefficient to the tape's loss (Tape.AddLoss);
// dense routing sends every token to every expert and has nothing to balance. The router Wr [E, in]
// starts U(±1/√in) (nn.Linear's default) from the layer's seed. The pool is the caller's to share
// (not owned, not in Parameters()) or, when none is given, the layer's own (owned, in Parameters()).
using LoraKernels.Autograd;
using LoraKernels.Runtime;

namespace LoraKernels.Layers;

public sealed class RankOneMixtureLinear : AdaptedLinear<DenseLinear>
{
    /// <summary>The default weight of the load-balancing loss (Switch Transformer's α = 10⁻²).</summary>
    public const float DefaultBalanceCoefficient = 0.01f;

    // Separates the router's draw and the dropout seeds from the pool's, drawn from the same seed.
    private const ulong RouterStream = 0x70E7_E500_0000_0003ul;
    private const ulong DropoutStream = 0xD1B5_4A32_D192_ED03ul;

    private readonly SplitMix64 _dropoutSeeds;
    private readonly bool _ownsPool;

    /// <summary>
    /// Wraps <paramref name="w0"/> [out, in] (and <paramref name="bias"/>), copied to <paramref name="device"/> in
    /// <paramref name="dtype"/>, routing each token to <paramref name="k"/> experts of <paramref name="pool"/> (shared,
    /// of this width, device and dtype), or of a pool of <paramref name="experts"/> of its own when pool is null.
    /// </summary>
    public RankOneMixtureLinear(Device device, Tensor w0, Tensor? bias, RankOneExpertPool? pool, int experts, int k, float alpha,
                                bool denseRouting = false, float balanceCoefficient = DefaultBalanceCoefficient, float dropout = 0f,
                                ulong seed = 0, DType dtype = DType.F32)
        : base(DenseLinear.Create("RankOneMixtureLinear", device, w0, bias, dtype,
                                  (outFeatures, inFeatures) => CheckArguments(device, pool, experts, k, alpha, balanceCoefficient, dropout,
                                                                              dtype, outFeatures, inFeatures)))
    {
        _ownsPool = pool is null;
        Pool = pool ?? Create(() => RankOneExpertPool.Create(device, experts, InFeatures, OutFeatures, seed, dtype));
        K = k;
        DenseRouting = denseRouting;
        Alpha = alpha;
        BalanceCoefficient = balanceCoefficient;
        Dropout = dropout;
        _dropoutSeeds = new SplitMix64(seed ^ DropoutStream);
        Router = Create(() => new Parameter("router", Tensor.FromArray(device, LowRankDelta.InitialA(seed ^ RouterStream, Pool.Experts, InFeatures),
                                                                      dtype, Pool.Experts, InFeatures)));
    }

    /// <summary>The experts (shared, or owned when the layer made it).</summary>
    public RankOneExpertPool Pool { get; }

    /// <summary>The router's weight Wr [E, in] (logits = x·Wrᵀ).</summary>
    public Parameter Router { get; }

    public int Experts => Pool.Experts;

    /// <summary>Experts per token (top-k); with dense routing every token uses all E.</summary>
    public int K { get; }

    public bool DenseRouting { get; }
    public float Alpha { get; }
    public float Dropout { get; }
    public float BalanceCoefficient { get; }

    /// <summary>s = alpha / k (alpha / E with dense routing): LoRA's alpha / r with the ranks a token uses.</summary>
    public float Scale => Alpha / (DenseRouting ? Experts : K);

    /// <summary>The load-balancing loss (unweighted) of the last recorded forward, or NaN before one (or with dense routing).</summary>
    public float LastBalanceLoss { get; private set; } = float.NaN;

    /// <summary>The frozen base weight [out, in].</summary>
    public Tensor W0 => Base.Weight;

    public override Tensor Forward(Tensor x)
    {
        ThrowIfDisposed();
        var (p, seed) = NextDropout();
        using Tensor logits = Ops.Routing.Logits(x, Router.Value);
        using Tensor probs = Ops.Routing.Softmax(logits);
        if (DenseRouting)
        {
            var (dense, u) = Ops.Gated.Forward(x, W0, Bias, Pool.A.Value, Pool.B.Value, probs, Scale, p, seed);
            u.Dispose();
            return dense;
        }
        var (weight, expert) = Ops.Routing.TopK(probs, K);
        using (weight)
        using (expert)
        {
            var (y, h) = Ops.Gated.TopKForward("RankOneMixtureLinear.Forward", x, W0, Bias, Pool.A.Value, Pool.B.Value, expert, weight,
                                               Scale, p, seed, checkIndices: false);
            h.Dispose();
            return y;
        }
    }

    /// <summary>The router, then the pool's A and B when the layer owns its pool (a shared pool trains once, from the caller).</summary>
    public override IEnumerable<Parameter> Parameters()
    {
        yield return Router;
        if (!_ownsPool) yield break;
        foreach (Parameter parameter in Pool.Parameters()) yield return parameter;
    }

    /// <summary>The router's ops (RoutingTape), the load-balancing loss (Tape.AddLoss), then the experts with their backward.</summary>
    private protected override Variable Record(Tape tape, Variable x)
    {
        var (p, seed) = NextDropout();
        float scale = Scale;
        Parameter a = Pool.A, b = Pool.B;
        Variable probs = tape.Softmax(tape.RouterLogits(x, Router));
        if (DenseRouting)
        {
            var (dense, u) = Ops.Gated.Forward(x.Value, W0, Bias, a.Value, b.Value, probs.Value, scale, p, seed);
            return tape.Record(dense, [x, probs], [a, b], g =>
            {
                var (dx, dA, dB, dGate) = Ops.Gated.Backward(x.Value, W0, a.Value, b.Value, probs.Value, u, g.OutputGradient, scale, p, seed,
                                                             g.NeedsInput(0), g.NeedsParameter(0), g.NeedsParameter(1), g.NeedsInput(1));
                return new Gradients([dx, dGate], [dA, dB]);
            }, u);
        }
        var (weight, expert) = tape.TopK(probs, K);
        if (BalanceCoefficient > 0f)
        {
            Variable balance = tape.LoadBalanceLoss(probs, expert);
            tape.AddLoss(balance, BalanceCoefficient);
            LastBalanceLoss = balance.Value.ToArray()[0];
        }
        var (y, h) = Ops.Gated.TopKForward("RankOneMixtureLinear", x.Value, W0, Bias, a.Value, b.Value, expert, weight.Value, scale, p, seed,
                                           checkIndices: false);
        return tape.Record(y, [x, weight], [a, b], g =>
        {
            var (dx, dA, dB, dWeight) = Ops.Gated.TopKBackward("RankOneMixtureLinear", x.Value, W0, a.Value, b.Value, expert, weight.Value, h,
                                                               g.OutputGradient, scale, p, seed, g.NeedsInput(0), g.NeedsParameter(0),
                                                               g.NeedsParameter(1), g.NeedsInput(1), checkIndices: false);
            return new Gradients([dx, dWeight], [dA, dB]);
        }, h);
    }

    /// <summary>The dropout probability and seed of the next forward: (Dropout, a fresh seed) while training, else (0, 0).</summary>
    private (float P, ulong Seed) NextDropout() => Training && Dropout > 0f ? (Dropout, _dropoutSeeds.NextUInt64()) : (0f, 0ul);

    private static void CheckArguments(Device device, RankOneExpertPool? pool, int experts, int k, float alpha, float balanceCoefficient,
                                       float dropout, DType dtype, long outFeatures, long inFeatures)
    {
        const string op = "RankOneMixtureLinear";
        int poolSize = experts;
        if (pool is not null)
        {
            Ops.Checks.Alive(pool.A.Value, op, "pool.A");
            if (!ReferenceEquals(pool.Device, device) || pool.DType != dtype || pool.InFeatures != inFeatures || pool.OutFeatures != outFeatures)
                throw new ArgumentException(
                    $"{op}: the pool holds experts of width (in, out) = ({pool.InFeatures}, {pool.OutFeatures}) in {pool.DType} on {pool.Device}; " +
                    $"the layer needs ({inFeatures}, {outFeatures}) in {dtype} on {device} (a pool is shared by modules of one width).", nameof(pool));
            poolSize = pool.Experts;
        }
        else if (experts < 1 || experts >= Ops.Gated.MaxExactIndex)
        {
            throw new ArgumentOutOfRangeException(nameof(experts), experts, $"{op}: the pool needs 1 to 2^24 - 1 experts.");
        }
        Ops.Routing.CheckK(op, k, poolSize);
        if (!float.IsFinite(alpha)) throw new ArgumentOutOfRangeException(nameof(alpha), alpha, $"{op}: alpha must be finite.");
        if (!(balanceCoefficient >= 0f) || !float.IsFinite(balanceCoefficient))
            throw new ArgumentOutOfRangeException(nameof(balanceCoefficient), balanceCoefficient, $"{op}: the balance coefficient must be finite and >= 0.");
        Ops.Checks.DropoutProbability(op, nameof(dropout), dropout);
        LowRankDelta.CheckArguments(op, poolSize, alpha, dropout, outFeatures, inFeatures);
    }
}
