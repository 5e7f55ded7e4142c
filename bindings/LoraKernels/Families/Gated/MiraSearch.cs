// The variant guide's MiRA (3.6.1): the choice of each layer's LoRA rank r and scale α as a bilevel
// problem, the inner level training the adapter on a training split, the outer level updating (r, α)
// from the loss on a validation split, by mirror descent. Each layer keeps a probability π over the
// candidate ranks and a continuous log s, s = α/r the LoRA scale; the adapter is one GatedRankLinear of
// the largest candidate rank whose per-rank gate realises a configuration (g_i = s for the first r
// ranks, 0 after: a rank-r LoRA with α = s·r sharing its leading ranks with every other candidate).
// The candidates share s rather than α so that they nest: with α shared, a rank-r truncation would scale
// the same leading ranks by α/r, and one set of weights could not serve every candidate (measured: the
// search then always prefers the largest rank). For a fixed r, log α and log s differ by a constant,
// so the gradient step on log s is the step on log α; the result reports α = s·r of the chosen rank.
//   warm-up: WarmupSteps of the inner loop with uniform rank draws before the first outer step, so that the
//          candidates' leading ranks have taken their nested roles before their validation losses are compared;
//   inner: InnerSteps of AdamW on A and B, each step drawing every layer's rank from (1 − ε)·π + ε·uniform
//          (each candidate's leading ranks trained as a rank-r adapter, DyLoRA-style; the uniform share ε keeps
//          every candidate trained once π sharpens, or the largest rank, which fits a half-trained shared
//          adapter best, would starve the others of the training that lets them show their validation loss);
//   outer: for each layer l and candidate c, the validation loss L_lc with l at (c, s_l) and the other
//          layers at their expected gate (s·Σ_{c: r_c > i} π_c, the probability that rank i is in use), and
//          d L_lc / d log s_l = Σ_i dg_i·g_i from the gate's gradient (the gated kernels' dg); then the
//          exponentiated-gradient (mirror descent with the entropy mirror map) step on the simplex,
//          π_lc ∝ π_lc·exp(−η_π·L_lc / L̄_l), where the gradient of E_π[L_l] in π_c is exactly L_lc, and a gradient
//          step on log s_l with Σ_c π_lc·dL_lc/dlog s / L̄_l.
// The losses are divided by their mean L̄_l so that the step sizes do not depend on the loss's scale. The
// result is each layer's most probable rank and its α, a LoraLinear per layer holding the trained leading
// ranks (optionally trained FinalSteps more), and a log of every outer step. docs/DECISIONS.md says what
// this does that the published methods nearest to the guide's MiRA do not, and the other way round.
using LoraKernels.Autograd;
using LoraKernels.Layers;
using LoraKernels.Optim;
using LoraKernels.Runtime;

namespace LoraKernels.Variants;

/// <summary>Which split a MiRA loss evaluates.</summary>
public enum MiraSplit { Train, Validation }

/// <summary>
/// Records one forward through <paramref name="layers"/> (in the order the bases were given) on a batch of
/// <paramref name="split"/> and its loss (e.g. Tape.MseLoss) on <paramref name="tape"/>, runs tape.Backward() (so the
/// batch's tensors can be disposed when the call returns), and returns the loss. <paramref name="step"/> numbers the
/// calls of that split (for choosing batches).
/// </summary>
public delegate float MiraLoss(Tape tape, IReadOnlyList<IAdapterLayer> layers, MiraSplit split, int step);

/// <summary>MiRA's search budget and step sizes.</summary>
public sealed record MiraOptions
{
    /// <summary>The ranks a layer may take (distinct, ≥ 1); the adapter is built at the largest.</summary>
    public IReadOnlyList<int> CandidateRanks { get; init; } = [2, 4, 8, 16];
    /// <summary>α at the largest candidate rank when the search starts: the initial scale is s = α / r_max.</summary>
    public float InitialAlpha { get; init; } = 16f;
    public int OuterSteps { get; init; } = 8;
    public int InnerSteps { get; init; } = 50;
    /// <summary>Inner steps with uniform rank draws before the first outer step (null: InnerSteps).</summary>
    public int? WarmupSteps { get; init; }
    /// <summary>Training steps of the chosen configuration after the search (0: the searched weights as they are).</summary>
    public int FinalSteps { get; init; }
    /// <summary>η of the exponentiated-gradient step on π, per unit of loss relative to the layer's mean candidate loss.</summary>
    public double RankStepSize { get; init; } = 2.0;
    /// <summary>η of the gradient step on log α (log s), in the same units.</summary>
    public double AlphaStepSize { get; init; } = 0.1;
    /// <summary>ε: the share of the inner loop's rank draws made uniformly over the candidates rather than from π.</summary>
    public double Exploration { get; init; } = 0.5;
    public float LearningRate { get; init; } = 1e-2f;
    public ulong Seed { get; init; }
    public DType DType { get; init; } = DType.F32;
}

/// <summary>
/// One layer at one outer step: the distribution after the update, the scale s after it and α = s·r at the most
/// probable rank r, each candidate's validation loss and the step's gradient in log α.
/// </summary>
public sealed record MiraLayerStep(IReadOnlyList<double> RankProbabilities, float Scale, float Alpha, IReadOnlyList<double> CandidateLosses,
                                   double AlphaGradient);

/// <summary>One outer step: each layer's update and the mean training loss of the inner steps before it.</summary>
public sealed record MiraOuterStep(int Step, IReadOnlyList<MiraLayerStep> Layers, float TrainLoss);

/// <summary>MiRA's choice: per layer the rank, α and trained adapter (owned), and the log of the search.</summary>
public sealed class MiraResult : IDisposable
{
    internal MiraResult(int[] ranks, float[] alphas, LoraLinear[] adapters, MiraOuterStep[] log, float[] trainLosses)
    {
        Ranks = ranks;
        Alphas = alphas;
        Adapters = adapters;
        Log = log;
        TrainLosses = trainLosses;
    }

    public IReadOnlyList<int> Ranks { get; }
    public IReadOnlyList<float> Alphas { get; }

    /// <summary>One LoraLinear per base, rank and α as chosen (owned by the result).</summary>
    public IReadOnlyList<LoraLinear> Adapters { get; }

    public IReadOnlyList<MiraOuterStep> Log { get; }

    /// <summary>Every training step's loss: the warm-up and inner steps of the search, then the final steps.</summary>
    public IReadOnlyList<float> TrainLosses { get; }

    public void Dispose()
    {
        foreach (LoraLinear adapter in Adapters) adapter.Dispose();
    }
}

public static class MiraSearch
{
    // Separates the rank draws from the layers' initialisation.
    private const ulong RankDrawStream = 0x31A4_5EA2_C400_0004ul;

    /// <summary>Searches (r, α) for an adapter on each base (W0 [out, in] and bias) of one model; see the file comment.</summary>
    public static MiraResult Run(Device device, IReadOnlyList<(Tensor W0, Tensor? Bias)> bases, MiraLoss loss, MiraOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(device);
        ArgumentNullException.ThrowIfNull(bases);
        ArgumentNullException.ThrowIfNull(loss);
        options ??= new MiraOptions();
        int[] candidates = Check(options, bases.Count);
        int maxRank = candidates[^1], layerCount = bases.Count;

        var layers = new GatedRankLinear[layerCount];
        var adapters = new List<LoraLinear>();
        try
        {
            for (int l = 0; l < layerCount; l++)
                layers[l] = new GatedRankLinear(device, bases[l].W0, bases[l].Bias, maxRank, alpha: maxRank, seed: options.Seed + (ulong)l,
                                                dtype: options.DType, initialGate: new float[maxRank]);
            var pi = Enumerable.Range(0, layerCount).Select(_ => Enumerable.Repeat(1.0 / candidates.Length, candidates.Length).ToArray()).ToArray();
            double[] logScale = Enumerable.Repeat(Math.Log(options.InitialAlpha / maxRank), layerCount).ToArray();
            var draws = new SplitMix64(options.Seed ^ RankDrawStream);
            var trainLosses = new List<float>();
            var log = new List<MiraOuterStep>();
            using var tape = new Tape();
            using (var optimizer = new AdamW(layers.SelectMany(l => new[] { l.A, l.B }), lr: options.LearningRate, weightDecay: 0f))
            {
                int trainStep = 0, validationStep = 0;
                foreach (GatedRankLinear layer in layers) layer.Gate.RequiresGrad = false;
                for (int warmup = 0; warmup < (options.WarmupSteps ?? options.InnerSteps); warmup++)
                {
                    for (int l = 0; l < layerCount; l++)
                        SetGate(layers[l], Truncated(candidates[Draw(pi[l], 1.0, draws)], Math.Exp(logScale[l]), maxRank));
                    trainLosses.Add(Step(tape, layers, loss, MiraSplit.Train, trainStep++, optimizer));
                }
                for (int outer = 1; outer <= options.OuterSteps; outer++)
                {
                    int first = trainLosses.Count;
                    for (int inner = 0; inner < options.InnerSteps; inner++)
                    {
                        for (int l = 0; l < layerCount; l++)
                            SetGate(layers[l], Truncated(candidates[Draw(pi[l], options.Exploration, draws)], Math.Exp(logScale[l]), maxRank));
                        trainLosses.Add(Step(tape, layers, loss, MiraSplit.Train, trainStep++, optimizer));
                    }
                    var steps = new MiraLayerStep[layerCount];
                    for (int l = 0; l < layerCount; l++)
                    {
                        var (losses, alphaGradients) = EvaluateCandidates(tape, layers, l, candidates, pi, logScale, loss, validationStep++);
                        double mean = losses.Average();
                        double scale = mean > 0 && double.IsFinite(mean) ? 1.0 / mean : 1.0;
                        double alphaGradient = 0;
                        for (int c = 0; c < candidates.Length; c++) alphaGradient += pi[l][c] * alphaGradients[c] * scale;
                        pi[l] = MirrorStep(pi[l], losses.Select(v => v * scale).ToArray(), options.RankStepSize);
                        logScale[l] -= options.AlphaStepSize * alphaGradient;
                        double scaleNow = Math.Exp(logScale[l]);
                        steps[l] = new MiraLayerStep(pi[l].ToArray(), (float)scaleNow, (float)(scaleNow * MostProbable(candidates, pi[l])), losses,
                                                     alphaGradient);
                    }
                    float trainLoss = trainLosses.Count > first ? trainLosses.Skip(first).Average() : float.NaN;
                    log.Add(new MiraOuterStep(outer, steps, trainLoss));
                }
            }

            int[] ranks = pi.Select(p => MostProbable(candidates, p)).ToArray();
            float[] alphas = ranks.Select((r, l) => (float)(Math.Exp(logScale[l]) * r)).ToArray();
            for (int l = 0; l < layerCount; l++) adapters.Add(Truncate(layers[l], ranks[l], alphas[l], options, l));
            if (options.FinalSteps > 0)
            {
                using var optimizer = new AdamW(adapters.SelectMany(a => a.Parameters()), lr: options.LearningRate, weightDecay: 0f);
                for (int step = 0; step < options.FinalSteps; step++)
                    trainLosses.Add(Step(tape, adapters, loss, MiraSplit.Train, step, optimizer));
            }
            return new MiraResult(ranks, alphas, adapters.ToArray(), log.ToArray(), trainLosses.ToArray());
        }
        catch
        {
            foreach (LoraLinear adapter in adapters) adapter.Dispose();
            throw;
        }
        finally
        {
            foreach (GatedRankLinear? layer in layers) layer?.Dispose();
        }
    }

    /// <summary>
    /// One exponentiated-gradient step on the probability simplex (mirror descent with the entropy map): p'_c ∝ p_c·exp(−η·g_c),
    /// computed with the log-sum-exp, so the result is a distribution (non-negative, summing to 1) for any finite gradient.
    /// </summary>
    public static double[] MirrorStep(IReadOnlyList<double> probabilities, IReadOnlyList<double> gradient, double stepSize)
    {
        ArgumentNullException.ThrowIfNull(probabilities);
        ArgumentNullException.ThrowIfNull(gradient);
        int n = probabilities.Count;
        if (n == 0 || gradient.Count != n)
            throw new ArgumentException($"MiraSearch.MirrorStep: {n} probabilities and {gradient.Count} gradient values; both need the same count, at least 1.", nameof(gradient));
        if (probabilities.Any(p => !(p >= 0) || !double.IsFinite(p)) || Math.Abs(probabilities.Sum() - 1.0) > 1e-9)
            throw new ArgumentException($"MiraSearch.MirrorStep: [{string.Join(", ", probabilities)}] is not a probability distribution.", nameof(probabilities));
        if (gradient.Any(g => !double.IsFinite(g)))
            throw new ArgumentException($"MiraSearch.MirrorStep: the gradient [{string.Join(", ", gradient)}] is not finite.", nameof(gradient));
        if (!(stepSize >= 0) || !double.IsFinite(stepSize))
            throw new ArgumentOutOfRangeException(nameof(stepSize), stepSize, "MiraSearch.MirrorStep: the step size must be finite and >= 0.");
        double[] logits = new double[n];
        for (int c = 0; c < n; c++) logits[c] = probabilities[c] > 0 ? Math.Log(probabilities[c]) - stepSize * gradient[c] : double.NegativeInfinity;
        double top = logits.Max();
        double sum = logits.Sum(v => Math.Exp(v - top));
        return logits.Select(v => Math.Exp(v - top) / sum).ToArray();
    }

    /// <summary>The gate of a rank-r configuration at scale s: s on the first r ranks, 0 after.</summary>
    internal static float[] Truncated(int rank, double scale, int maxRank)
    {
        float[] gate = new float[maxRank];
        for (int i = 0; i < rank; i++) gate[i] = (float)scale;
        return gate;
    }

    /// <summary>The expected gate over π: g_i = s·Σ_{c: r_c > i} π_c (the mixture of the candidates' outputs).</summary>
    internal static float[] Expected(int[] candidates, double[] pi, double scale, int maxRank)
    {
        float[] gate = new float[maxRank];
        for (int i = 0; i < maxRank; i++)
        {
            double sum = 0;
            for (int c = 0; c < candidates.Length; c++) if (candidates[c] > i) sum += pi[c];
            gate[i] = (float)(scale * sum);
        }
        return gate;
    }

    /// <summary>The candidate with the largest probability (the smaller rank on a tie).</summary>
    private static int MostProbable(int[] candidates, double[] pi) => candidates[Array.IndexOf(pi, pi.Max())];

    /// <summary>Each candidate's validation loss for layer l (the others at their expected gate) and its d/dlog s (= d/dlog α).</summary>
    private static (double[] Losses, double[] AlphaGradients) EvaluateCandidates(Tape tape, GatedRankLinear[] layers, int l, int[] candidates,
                                                                               double[][] pi, double[] logScale, MiraLoss loss, int step)
    {
        int maxRank = candidates[^1];
        for (int other = 0; other < layers.Length; other++)
            if (other != l) SetGate(layers[other], Expected(candidates, pi[other], Math.Exp(logScale[other]), maxRank));
        var frozen = layers.SelectMany(layer => new[] { layer.A, layer.B }).ToArray();
        foreach (Parameter p in frozen) p.RequiresGrad = false;
        layers[l].Gate.RequiresGrad = true;
        try
        {
            var losses = new double[candidates.Length];
            var alphaGradients = new double[candidates.Length];
            for (int c = 0; c < candidates.Length; c++)
            {
                float[] gate = Truncated(candidates[c], Math.Exp(logScale[l]), maxRank);
                SetGate(layers[l], gate);
                tape.Reset();
                losses[c] = loss(tape, layers, MiraSplit.Validation, step);
                float[] dg = layers[l].Gate.Grad?.ToArray() ?? new float[maxRank];
                layers[l].Gate.ZeroGrad();
                for (int i = 0; i < maxRank; i++) alphaGradients[c] += (double)dg[i] * gate[i];
                if (!double.IsFinite(losses[c]))
                    throw new InvalidOperationException($"MiraSearch: the validation loss of layer {l} at rank {candidates[c]} is {losses[c]}.");
            }
            return (losses, alphaGradients);
        }
        finally
        {
            foreach (Parameter p in frozen) p.RequiresGrad = true;
            layers[l].Gate.RequiresGrad = false;
        }
    }

    /// <summary>One training step of <paramref name="layers"/>: the loss and its backward (by the caller's delegate), step, zero the gradients.</summary>
    private static float Step(Tape tape, IReadOnlyList<IAdapterLayer> layers, MiraLoss loss, MiraSplit split, int step, AdamW optimizer)
    {
        tape.Reset();
        float value = loss(tape, layers, split, step);
        if (!float.IsFinite(value)) throw new InvalidOperationException($"MiraSearch: the training loss is {value} at step {step}.");
        optimizer.Step();
        optimizer.ZeroGrad();
        return value;
    }

    /// <summary>A candidate index drawn from (1 − ε)·π + ε·uniform.</summary>
    private static int Draw(double[] pi, double exploration, SplitMix64 draws)
    {
        double u = draws.NextSingle(), sum = 0;
        for (int c = 0; c < pi.Length; c++)
        {
            sum += (1 - exploration) * pi[c] + exploration / pi.Length;
            if (u < sum) return c;
        }
        return pi.Length - 1;
    }

    private static void SetGate(GatedRankLinear layer, float[] gate) => layer.Gate.Value.CopyFrom(gate);

    /// <summary>A LoraLinear of rank r and α = s·r over the layer's base holding its first r ranks (its output equals the layer's at that gate).</summary>
    private static LoraLinear Truncate(GatedRankLinear layer, int rank, float alpha, MiraOptions options, int index)
    {
        var adapter = new LoraLinear(layer.Device, layer.W0, layer.Bias, rank, alpha, seed: options.Seed + (ulong)index, dtype: options.DType);
        try
        {
            float[] a = layer.A.Value.ToArray(), b = layer.B.Value.ToArray();
            int maxRank = layer.Rank;
            float[] keptB = new float[(long)layer.OutFeatures * rank];
            for (long n = 0; n < layer.OutFeatures; n++) Array.Copy(b, n * maxRank, keptB, n * rank, rank);
            adapter.A.Value.CopyFrom(a.AsSpan(0, rank * layer.InFeatures));
            adapter.B.Value.CopyFrom(keptB);
            return adapter;
        }
        catch
        {
            adapter.Dispose();
            throw;
        }
    }

    /// <summary>The sorted candidates, after checking the options.</summary>
    private static int[] Check(MiraOptions o, int layers)
    {
        const string op = "MiraSearch";
        if (layers < 1) throw new ArgumentException($"{op}: give at least one base weight.", "bases");
        if (o.CandidateRanks is null || o.CandidateRanks.Count == 0 || o.CandidateRanks.Any(r => r < 1) || o.CandidateRanks.Distinct().Count() != o.CandidateRanks.Count)
            throw new ArgumentException($"{op}: the candidate ranks must be distinct and >= 1, got [{string.Join(", ", o.CandidateRanks ?? [])}].", nameof(o.CandidateRanks));
        if (!(o.InitialAlpha > 0f) || !float.IsFinite(o.InitialAlpha))
            throw new ArgumentOutOfRangeException(nameof(o.InitialAlpha), o.InitialAlpha, $"{op}: the initial alpha must be finite and > 0 (the search moves log alpha).");
        if (o.OuterSteps < 1 || o.InnerSteps < 1 || o.FinalSteps < 0 || o.WarmupSteps < 0)
            throw new ArgumentOutOfRangeException(nameof(o.OuterSteps), $"{op}: OuterSteps and InnerSteps must be >= 1, WarmupSteps and FinalSteps >= 0.");
        if (!(o.RankStepSize >= 0) || !double.IsFinite(o.RankStepSize) || !(o.AlphaStepSize >= 0) || !double.IsFinite(o.AlphaStepSize))
            throw new ArgumentOutOfRangeException(nameof(o.RankStepSize), $"{op}: the step sizes must be finite and >= 0.");
        if (!(o.Exploration >= 0 && o.Exploration <= 1))
            throw new ArgumentOutOfRangeException(nameof(o.Exploration), o.Exploration, $"{op}: the exploration share must be in [0, 1].");
        return o.CandidateRanks.Order().ToArray();
    }
}
