// A linear layer with a gated-rank adapter, SoRA's module (REFERENCE.md 7.3) and MiRA's search layer:
//   y = x W0ᵀ + bias + s·((dropout(x) Aᵀ) ⊙ g) Bᵀ,   g [r] one gate per rank (F32).
// A dense frozen base (DenseLinear) × a rank-r pair drawn as LoRA's (LowRankDelta: A U(±1/√in) from
// SplitMix64(seed), B = 0, so a new layer computes the base layer) and the gate, which starts as SoRA's
// N(0, 1) draw (from the seed's own stream) unless the caller gives its values. s = alpha/r is fixed at
// construction and kept by Prune, so a pruned layer computes exactly what the gated one did. The gate is
// F32 whatever the layer's dtype: SoRA's threshold (1e-3) is below bf16's resolution near 1 (2^-8).
// Training with SoRA: any optimizer over Parameters(), then SoraGates.ProximalStep on the gates; Prune()
// then drops the ranks whose gate is zero. AdaLoraLinear is this layer with AdaLoRA's initialisation,
// scale and names (its Λ is the gate).
using LoraKernels.Autograd;
using LoraKernels.Variants;

namespace LoraKernels.Layers;

public class GatedRankLinear : AdaptedLinear<DenseLinear>
{
    // Separates the gate's draw from A's and from the dropout seeds drawn from the same seed.
    private const ulong GateStream = 0x5C0A_6A7E_5EED_0001ul;

    private readonly LowRankDelta _delta;

    /// <summary>
    /// Wraps <paramref name="w0"/> [out, in] (and <paramref name="bias"/> [out]), copied to <paramref name="device"/> in
    /// <paramref name="dtype"/>, with a rank-r gated adapter scaled by s = alpha/r. <paramref name="initialGate"/> gives the
    /// r gate values; null draws SoRA's N(0, 1).
    /// </summary>
    public GatedRankLinear(Device device, Tensor w0, Tensor? bias, int r, float alpha, float dropout = 0f, ulong seed = 0,
                           DType dtype = DType.F32, float[]? initialGate = null)
        : this("GatedRankLinear", device, w0, bias, r, alpha, alpha / r, dropout, seed, dtype,
               initialGate ?? SoraGate(seed, r), "lora_gate")
    {
    }

    /// <summary>The layer with A drawn as LoRA's, B = 0, the given gate values (named <paramref name="gateName"/>) and scale.</summary>
    private protected GatedRankLinear(string op, Device device, Tensor w0, Tensor? bias, int r, float alpha, float scale, float dropout,
                                      ulong seed, DType dtype, float[] gate, string gateName)
        : base(DenseLinear.Create(op, device, w0, bias, dtype,
                                  (outFeatures, inFeatures) => CheckArguments(op, r, alpha, scale, dropout, gate, outFeatures, inFeatures)))
    {
        _delta = Create(() => new LowRankDelta(device, dtype, r, alpha, dropout, useRsLora: false, seed, InFeatures, OutFeatures));
        Gate = Create(() => new Parameter(gateName, Tensor.FromArray(device, gate, r)));
        Scale = scale;
    }

    public int Rank => _delta.Rank;
    public float Alpha => _delta.Alpha;
    public float Dropout => _delta.Dropout;

    /// <summary>s, alpha/r of the rank the layer was built with (a pruned layer keeps its original's).</summary>
    public float Scale { get; }

    /// <summary>lora_A [r, in].</summary>
    public Parameter A => _delta.A;

    /// <summary>lora_B [out, r].</summary>
    public Parameter B => _delta.B;

    /// <summary>The gate g [r] (F32).</summary>
    public Parameter Gate { get; }

    /// <summary>The frozen base weight [out, in] (holding W0 + ΔW while merged).</summary>
    public Tensor W0 => Base.Weight;

    public bool Merged { get; private set; }

    /// <summary>The ranks whose gate is not zero (reads the gate back).</summary>
    public int SurvivingRank => Gate.Value.ToArray().Count(g => g != 0f);

    public override Tensor Forward(Tensor x)
    {
        ThrowIfDisposed();
        var (p, seed) = Merged ? (0f, 0ul) : _delta.NextDropout(Training);
        var (y, u) = Ops.Gated.Forward(x, W0, Bias, A.Value, B.Value, Gate.Value, Merged ? 0f : Scale, p, seed);
        u.Dispose();
        return y;
    }

    /// <summary>W0 += s·B·diag(g)·A. Does nothing when already merged.</summary>
    public void Merge()
    {
        ThrowIfDisposed();
        if (Merged) return;
        Ops.Gated.Merge(W0, A.Value, B.Value, Gate.Value, Scale);
        Merged = true;
    }

    /// <summary>W0 -= s·B·diag(g)·A (exact up to rounding). Does nothing when not merged.</summary>
    public void Unmerge()
    {
        ThrowIfDisposed();
        if (!Merged) return;
        Ops.Gated.Unmerge(W0, A.Value, B.Value, Gate.Value, Scale);
        Merged = false;
    }

    /// <summary>
    /// A new layer holding only the ranks whose gate is not zero: A's rows, B's columns and the gates of those ranks, the
    /// same scale s, a copy of the base and bias, the same dtype, dropout and Training. A rank with g = 0 adds exactly zero,
    /// so the pruned layer computes the same output (to the rounding of a shorter sum; bit for bit where the products
    /// sum in order). This layer is left as it is.
    /// </summary>
    /// <exception cref="InvalidOperationException">Every gate is zero (nothing survives: use the base weights alone), or the layer is merged.</exception>
    public GatedRankLinear Prune()
    {
        ThrowIfDisposed();
        if (Merged) throw new InvalidOperationException($"Prune: the {GetType().Name} layer is merged; unmerge it first.");
        float[] gate = Gate.Value.ToArray();
        int[] kept = Enumerable.Range(0, Rank).Where(i => gate[i] != 0f).ToArray();
        if (kept.Length == 0)
            throw new InvalidOperationException(
                $"Prune: all {Rank} gates of the layer are zero, so its adapter adds nothing; use the base weight (W0) without an adapter.");
        float[] a = A.Value.ToArray(), b = B.Value.ToArray();
        float[] keptA = new float[(long)kept.Length * InFeatures], keptB = new float[(long)OutFeatures * kept.Length];
        for (int i = 0; i < kept.Length; i++)
            Array.Copy(a, (long)kept[i] * InFeatures, keptA, (long)i * InFeatures, InFeatures);
        for (long n = 0; n < OutFeatures; n++)
            for (int i = 0; i < kept.Length; i++) keptB[n * kept.Length + i] = b[n * Rank + kept[i]];
        GatedRankLinear pruned = Shrunk(kept.Length, kept.Select(i => gate[i]).ToArray());
        pruned.Training = Training;
        try
        {
            pruned.A.Value.CopyFrom(keptA);
            pruned.B.Value.CopyFrom(keptB);
            return pruned;
        }
        catch
        {
            pruned.Dispose();
            throw;
        }
    }

    /// <summary>SoRA's initial gate: r standard normals (Box-Muller on SplitMix64, as PiSSA's sketch) from the seed's gate stream.</summary>
    private static float[] SoraGate(ulong seed, int r) => r > 0 ? Pissa.GaussianSketch(seed ^ GateStream, r, 1) : [];

    /// <summary>A layer of this kind over a copy of this base with <paramref name="rank"/> ranks, these gate values and this scale.</summary>
    private protected virtual GatedRankLinear Shrunk(int rank, float[] gate) =>
        new("GatedRankLinear", Device, W0, Bias, rank, Alpha, Scale, Dropout, seed: 0, DType, gate, Gate.Name);

    /// <summary>The trainable parameters: A, B, then the gate.</summary>
    public override IEnumerable<Parameter> Parameters()
    {
        yield return A;
        yield return B;
        yield return Gate;
    }

    /// <summary>Ops.Gated's forward, recorded with a backward that fills x's, A's, B's and the gate's gradients.</summary>
    /// <exception cref="InvalidOperationException">The layer is merged (unmerge it to train).</exception>
    private protected override Variable Record(Tape tape, Variable x)
    {
        if (Merged) throw new InvalidOperationException($"The {GetType().Name} layer is merged (W0 holds W0 + ΔW); call Unmerge before training it.");
        var (p, seed) = _delta.NextDropout(Training);
        float scale = Scale;
        var (y, u) = Ops.Gated.Forward(x.Value, W0, Bias, A.Value, B.Value, Gate.Value, scale, p, seed);
        return tape.Record(y, [x], [A, B, Gate], g =>
        {
            var (dx, dA, dB, dGate) = Ops.Gated.Backward(x.Value, W0, A.Value, B.Value, Gate.Value, u, g.OutputGradient, scale, p, seed,
                                                         g.NeedsInput(0), g.NeedsParameter(0), g.NeedsParameter(1), g.NeedsParameter(2));
            return new Gradients([dx], [dA, dB, dGate]);
        }, u);
    }

    private static void CheckArguments(string op, int r, float alpha, float scale, float dropout, float[] initialGate, long outFeatures,
                                       long inFeatures)
    {
        LowRankDelta.CheckArguments(op, r, alpha, dropout, outFeatures, inFeatures);
        Ops.Checks.Finite(op, nameof(scale), scale);
        if (initialGate.Length != r)
            throw new ArgumentException($"{op}: initialGate has {initialGate.Length} values; the layer has r = {r} ranks.", nameof(initialGate));
        int bad = Array.FindIndex(initialGate, g => !float.IsFinite(g));
        if (bad >= 0)
            throw new ArgumentException($"{op}: initialGate[{bad}] = {initialGate[bad]} is not finite.", nameof(initialGate));
    }
}
