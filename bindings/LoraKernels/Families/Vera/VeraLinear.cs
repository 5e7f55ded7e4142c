// A linear layer with a VeRA adapter, as PEFT's vera.Linear (REFERENCE.md §3):
//   y = x W0ᵀ + bias + λ_b ⊙ ((λ_d ⊙ (dropout(x) A_lᵀ)) B_lᵀ)   (no alpha or scaling)
// with A_l, B_l the slices of shared frozen VeraProjections and two trainable vectors: λ_d [r]
// starting at dInitial (PEFT's d_initial, 0.1) and λ_b [out] starting at 0, so a new layer computes
// exactly the base layer. r + out trainable values per layer. A dense frozen base (DenseLinear: W0 and
// bias copied, owned by the layer) × VeRA's rank-diagonal delta; the projections are shared and not owned. Dropout acts on the
// adapter branch only, only while Training, with a fresh seed per forward call. Merge folds
// diag(λ_b)·B_l·diag(λ_d)·A_l into W0; while merged the layer computes x W0ᵀ + bias alone and
// refuses to be trained.
using LoraKernels.Autograd;
using LoraKernels.Runtime;

namespace LoraKernels.Layers;

public sealed class VeraLinear : AdaptedLinear<DenseLinear>
{
    private readonly SplitMix64 _dropoutSeeds;

    /// <summary>
    /// Wraps <paramref name="w0"/> [out, in] (and <paramref name="bias"/> [out]), copied to
    /// <paramref name="device"/> in <paramref name="dtype"/>; <paramref name="projections"/> must be on
    /// that device in that dtype and at least [r, in] / [out, r].
    /// </summary>
    public VeraLinear(Device device, Tensor w0, Tensor? bias, VeraProjections projections, float dropout = 0f,
                      float dInitial = 0.1f, DType dtype = DType.F32, ulong dropoutSeed = 0)
        : base(DenseLinear.Create("VeraLinear", device, w0, bias, dtype,
                                  (outFeatures, inFeatures) => CheckArguments(device, w0, projections, dropout, dInitial, dtype, outFeatures, inFeatures)))
    {
        Projections = projections;
        Dropout = dropout;
        _dropoutSeeds = new SplitMix64(dropoutSeed);
        float[] d = new float[projections.Rank];
        Array.Fill(d, dInitial);
        LambdaD = Create(() => new Parameter("vera_lambda_d", Tensor.FromArray(device, d, dtype, projections.Rank)));
        LambdaB = Create(() => new Parameter("vera_lambda_b", Tensor.Zeros(device, dtype, OutFeatures)));
    }

    public int Rank => Projections.Rank;
    public float Dropout { get; }

    /// <summary>The shared frozen projections (not owned by the layer).</summary>
    public VeraProjections Projections { get; }

    /// <summary>vera_lambda_d [r].</summary>
    public Parameter LambdaD { get; }

    /// <summary>vera_lambda_b [out].</summary>
    public Parameter LambdaB { get; }

    /// <summary>The frozen base weight [out, in] (holding W0 + ΔW while merged).</summary>
    public Tensor W0 => Base.Weight;

    public bool Merged { get; private set; }

    /// <summary>y [M, out] for x [M, in] without recording gradients (dropout still applies while Training).</summary>
    public override Tensor Forward(Tensor x)
    {
        ThrowIfDisposed();
        if (Merged)
        {
            // W0 already holds ΔW: the adapter branch runs with λ_b = 0, leaving x W0ᵀ + bias.
            using Tensor zero = Tensor.Zeros(Device, DType, OutFeatures);
            var (merged, unusedU) = Ops.Vera.Forward(x, W0, Bias, Projections.VeraA, Projections.VeraB, LambdaD.Value, zero);
            unusedU.Dispose();
            return merged;
        }
        float dropoutP = Training ? Dropout : 0f;
        ulong seed = dropoutP > 0f ? NextDropoutSeed() : 0;
        var (y, u) = Ops.Vera.Forward(x, W0, Bias, Projections.VeraA, Projections.VeraB, LambdaD.Value, LambdaB.Value,
                                      dropoutP, seed);
        u.Dispose();
        return y;
    }

    /// <summary>W0 += diag(λ_b)·B_l·diag(λ_d)·A_l (PEFT merge). Does nothing when already merged.</summary>
    public void Merge()
    {
        ThrowIfDisposed();
        if (Merged) return;
        Ops.Vera.Merge(W0, Projections.VeraA, Projections.VeraB, LambdaD.Value, LambdaB.Value);
        Merged = true;
    }

    /// <summary>W0 -= diag(λ_b)·B_l·diag(λ_d)·A_l (exact up to rounding). Does nothing when not merged.</summary>
    public void Unmerge()
    {
        ThrowIfDisposed();
        if (!Merged) return;
        Ops.Vera.Unmerge(W0, Projections.VeraA, Projections.VeraB, LambdaD.Value, LambdaB.Value);
        Merged = false;
    }

    /// <summary>The trainable parameters: λ_d, then λ_b (the projections are frozen and shared).</summary>
    public override IEnumerable<Parameter> Parameters()
    {
        yield return LambdaD;
        yield return LambdaB;
    }

    /// <summary>The dropout seed of the next forward call.</summary>
    private ulong NextDropoutSeed() => _dropoutSeeds.NextUInt64();

    /// <summary>Ops.Vera's fused forward, recorded with a backward that fills λ_d's, λ_b's and x's gradients (the projections are frozen).</summary>
    /// <exception cref="InvalidOperationException">The layer is merged (unmerge it to train).</exception>
    private protected override Variable Record(Tape tape, Variable x)
    {
        if (Merged) throw new InvalidOperationException("The VeraLinear layer is merged (W0 holds W0 + ΔW); call Unmerge before training it.");
        float p = Training ? Dropout : 0f;
        ulong seed = p > 0f ? NextDropoutSeed() : 0;
        Parameter lambdaD = LambdaD, lambdaB = LambdaB;
        Tensor w0 = W0, veraA = Projections.VeraA, veraB = Projections.VeraB;
        var (y, u) = Ops.Vera.Forward(x.Value, w0, Bias, veraA, veraB, lambdaD.Value, lambdaB.Value, p, seed);
        return tape.Record(y, [x], [lambdaD, lambdaB], g =>
        {
            var (dx, dLambdaD, dLambdaB) = Ops.Vera.Backward(w0, veraA, veraB, lambdaD.Value, lambdaB.Value, u, g.OutputGradient, p, seed,
                                                             needDx: g.NeedsInput(0), needDLambdaD: g.NeedsParameter(0),
                                                             needDLambdaB: g.NeedsParameter(1));
            return new Gradients([dx], [dLambdaD, dLambdaB]);
        }, u);
    }

    /// <summary>The projections must be alive, match the layer's device and dtype and cover [out, in].</summary>
    private static void CheckArguments(Device device, Tensor w0, VeraProjections projections, float dropout, float dInitial,
                                       DType dtype, long outFeatures, long inFeatures)
    {
        const string op = "VeraLinear";
        ArgumentNullException.ThrowIfNull(projections);
        Ops.Checks.Alive(projections.VeraA, op, "projections.VeraA");
        Ops.Checks.Alive(projections.VeraB, op, "projections.VeraB");
        if (!ReferenceEquals(projections.Device, device) || projections.DType != dtype)
            throw new ArgumentException(
                $"{op}: the projections are {projections.DType} on {projections.Device}; the layer needs {dtype} on {device}.", nameof(projections));
        if (projections.MaxIn < inFeatures || projections.MaxOut < outFeatures)
            throw new ArgumentException(
                $"{op}: the projections cover in <= {projections.MaxIn} and out <= {projections.MaxOut}, but w0 is {w0.Describe()}; create them with VeraProjections.ForLayers over every layer.",
                nameof(projections));
        Ops.Checks.DropoutProbability(op, nameof(dropout), dropout);
        if (!float.IsFinite(dInitial)) throw new ArgumentOutOfRangeException(nameof(dInitial), dInitial, $"{op}: dInitial must be finite.");
    }
}
