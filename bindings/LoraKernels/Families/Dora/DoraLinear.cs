// A linear layer with a DoRA adapter, as PEFT's lora.Linear with use_dora=True (REFERENCE.md §2):
//   y = bias + (m / n) ⊙ (x W0ᵀ + s·(x Aᵀ) Bᵀ),   n = ‖W0 + s·B·A‖_row (detached),
// s = alpha/r (or alpha/sqrt(r) with rsLoRA). Base × delta: a dense frozen base (DenseLinear) or, for
// QDoRA, a 4-bit one (Nf4Linear over a QuantizedWeight the layer takes, F32 compute dtype), × the
// low-rank delta (LowRankDelta, initialised as LoraLinear's, so B = 0) and the magnitude m [out],
// initialised as PEFT's, m0 = ‖W0 + s·B·A‖_row = ‖W0‖_row, so a new layer computes exactly the base
// layer. ‖W0‖²_row is computed once (W0 is frozen; for QDoRA by dequantizing into a temporary) and
// every forward derives n from it without forming B·A as a matrix, accurate on every row
// (Ops.Dora.WeightNorm). A row whose norm is exactly 0 (an all-zero W0 row while B = 0, or an
// adapter that cancels a row exactly) makes m/n undefined: construction and the step that meets it
// throw ArithmeticException naming the rows, where PEFT would produce Inf or NaN.
// Dropout: with p > 0 in training the layer runs PEFT's dropout formula (Ops.Dora.ForwardWithDropout:
// y = (x W0ᵀ + b) + (g − 1) ⊙ (x_d W0ᵀ) + g ⊙ s·(x_d Aᵀ Bᵀ), a second base product), F32 layers only
// (a BF16 layer training with dropout throws NotSupportedException); eval ignores dropout, as PEFT
// does. Each dropout forward draws its seed from the delta's stream (as LoraLinear). Merge folds the
// adapter as PEFT does, W0 ← (m/n) ⊙ (W0 + s·B·A) (each element in double, rounded once), keeping n for Unmerge; while merged the layer
// computes x W0ᵀ + bias. Merge on a quantized base throws NotSupportedException (PEFT dequantizes,
// merges and requantizes; this build does not).
using LoraKernels.Autograd;

namespace LoraKernels.Layers;

public sealed class DoraLinear : AdaptedLinear<FrozenLinear>
{
    private const string Op = "DoraLinear";

    private readonly LowRankDelta _delta;
    private readonly Tensor _w0RowSquaredNorm;
    private Tensor? _mergedNorm;

    /// <summary>
    /// Wraps the base weight <paramref name="w0"/> [out, in] (and <paramref name="bias"/> [out]),
    /// copied to <paramref name="device"/> in <paramref name="dtype"/>; the caller keeps its tensors.
    /// The scale is PEFT's, s = alpha/r (alpha/√r with <paramref name="useRsLora"/>).
    /// </summary>
    public DoraLinear(Device device, Tensor w0, Tensor? bias, int r, float alpha, float dropout = 0f,
                      bool useRsLora = false, ulong seed = 0, DType dtype = DType.F32, LoraInit init = LoraInit.Default)
        : base(DenseLinear.Create(Op, device, w0, bias, dtype,
                                  (outFeatures, inFeatures) => LowRankDelta.CheckArguments(Op, r, alpha, dropout, outFeatures, inFeatures)))
    {
        (_delta, _w0RowSquaredNorm, Magnitude) = CreateDelta(r, alpha, dropout, useRsLora, seed, init);
    }

    /// <summary>
    /// DoRA as PEFT's LoraConfig(use_dora=True) describes it: <paramref name="options"/>' Rank (default 8),
    /// Alpha (default 8; s = alpha/r, or alpha/√r with UseRsLora), Dropout, Init, Seed and DType.
    /// </summary>
    public DoraLinear(Device device, Tensor w0, Tensor? bias, Variants.AdapterOptions options)
        : this(device, w0, bias, Variants.AdapterOptions.Require(options).RankOrDefault, options.AlphaOrDefault, options.Dropout,
               options.UseRsLora, options.Seed, options.DType, options.Init)
    {
    }

    /// <summary>
    /// QDoRA: wraps the quantized base <paramref name="w0"/> [out, in] (F32 compute dtype, on
    /// <paramref name="device"/>), taking ownership of it (also when construction fails: it is then
    /// disposed), and <paramref name="bias"/> [out] (copied; the caller keeps it). The magnitude starts
    /// at ‖deq(W)‖_row; deq(W) is formed once, here, for that row norm and freed.
    /// </summary>
    public DoraLinear(Device device, QuantizedWeight w0, Tensor? bias, int r, float alpha, float dropout = 0f,
                      bool useRsLora = false, ulong seed = 0, LoraInit init = LoraInit.Default)
        : base(QuantizedBase(device, w0, bias, r, alpha, dropout))
    {
        (_delta, _w0RowSquaredNorm, Magnitude) = CreateDelta(r, alpha, dropout, useRsLora, seed, init);
    }

    /// <summary>
    /// A and B (LowRankDelta), ‖W0‖²_row and the magnitude m0 = ‖W0‖_row; if any of these fails, everything
    /// already owned is released, the base included (Create).
    /// </summary>
    private (LowRankDelta, Tensor, Parameter) CreateDelta(int r, float alpha, float dropout, bool useRsLora, ulong seed, LoraInit init)
    {
        LowRankDelta delta = Create(() => new LowRankDelta(Device, DType, r, alpha, dropout, useRsLora, seed, InFeatures, OutFeatures, init: init));
        Tensor rowSquaredNorm = Create(() => QuantizedW0 is { } q ? Ops.Dora.RowSquaredNorm(q) : Ops.Dora.RowSquaredNorm(W0));
        Parameter magnitude = Create(() =>
        {
            using Tensor initialNorm = NormOf(delta, rowSquaredNorm);
            return new Parameter("lora_magnitude_vector", FrozenLinear.CopyTo(initialNorm, Device, DType));
        });
        return (delta, rowSquaredNorm, magnitude);
    }

    public int Rank => _delta.Rank;
    public float Alpha => _delta.Alpha;
    public float Dropout => _delta.Dropout;
    public bool UseRsLora => _delta.UseRsLora;

    /// <summary>The dropout seed the next training forward with dropout will use (tests draw it from a twin layer).</summary>
    internal ulong NextDropoutSeed() => _delta.NextDropoutSeed();

    /// <summary>s = alpha/r, or alpha/sqrt(r) with rsLoRA.</summary>
    public float Scale => _delta.Scale;

    /// <summary>lora_A [r, in].</summary>
    public Parameter A => _delta.A;

    /// <summary>lora_B [out, r].</summary>
    public Parameter B => _delta.B;

    /// <summary>lora_magnitude_vector [out] (the layer's dtype), initialised to ‖W0‖_row.</summary>
    public Parameter Magnitude { get; }

    /// <summary>The frozen dense base weight [out, in] (holding (m/n)·(W0 + s·B·A) while merged).</summary>
    /// <exception cref="InvalidOperationException">The base is quantized (see <see cref="QuantizedW0"/>).</exception>
    public Tensor W0 => Base is DenseLinear dense
        ? dense.Weight
        : throw new InvalidOperationException("The DoraLinear layer has a quantized base (QDoRA); see QuantizedW0.");

    /// <summary>The frozen 4-bit base weight [out, in] of a QDoRA layer (owned), or null for a dense base.</summary>
    public QuantizedWeight? QuantizedW0 => (Base as Nf4Linear)?.Weight;

    /// <summary>Whether the base is quantized (QDoRA).</summary>
    public bool IsQuantized => Base is Nf4Linear;

    public bool Merged { get; private set; }

    /// <summary>y [M, out] for x [M, in] without recording gradients.</summary>
    /// <exception cref="NotSupportedException">A BF16 layer training with Dropout &gt; 0.</exception>
    public override Tensor Forward(Tensor x)
    {
        ThrowIfDisposed();
        if (Merged)
        {
            // W0 already holds the scaled merged weight: a zero scale leaves x W0ᵀ + bias.
            var (merged, unusedU) = Ops.Lora.Forward(x, W0, Bias, A.Value, B.Value, 0f);
            unusedU.Dispose();
            return merged;
        }
        ThrowIfDropoutUnsupported();
        using Tensor norm = WeightNorm();
        if (DropoutActive)
        {
            var (yDropout, state) = Ops.Dora.ForwardWithDropout(x, DenseW0, QuantizedW0, Bias, A.Value, B.Value, Magnitude.Value, norm,
                                                                Scale, Dropout, _delta.NextDropout(Training).Seed);
            state.Dispose();
            return yDropout;
        }
        return QuantizedW0 is { } q
            ? Ops.Dora.Infer(x, q, Bias, A.Value, B.Value, Magnitude.Value, norm, Scale)
            : Ops.Dora.Infer(x, W0, Bias, A.Value, B.Value, Magnitude.Value, norm, Scale);
    }

    /// <summary>n = ‖W0 + s·B·A‖_row (F32 [out]) for the current A and B, from the cached ‖W0‖²_row.</summary>
    /// <exception cref="ArithmeticException">A row's norm is exactly 0 (m/n undefined).</exception>
    public Tensor WeightNorm()
    {
        ThrowIfDisposed();
        if (Merged) throw new InvalidOperationException("The DoraLinear layer is merged; its weight norm is that of the unmerged W0 (call Unmerge).");
        return NormOf(_delta, _w0RowSquaredNorm);
    }

    /// <summary>W0 ← (m/n) ⊙ (W0 + s·B·A) (PEFT merge), n kept for Unmerge. Does nothing when already merged.</summary>
    /// <exception cref="NotSupportedException">The base is quantized (QDoRA).</exception>
    public void Merge()
    {
        ThrowIfDisposed();
        if (IsQuantized)
            throw new NotSupportedException(
                "DoraLinear: merging into a quantized base is not supported (PEFT dequantizes, merges and requantizes, which changes the base); " +
                "build a dense DoraLinear from Ops.Nf4.Dequantize(QuantizedW0) to merge.");
        if (Merged) return;
        Tensor norm = WeightNorm();
        try
        {
            Ops.Dora.Merge(W0, A.Value, B.Value, Magnitude.Value, norm, Scale);
        }
        catch
        {
            norm.Dispose();
            throw;
        }
        _mergedNorm = norm;
        Merged = true;
    }

    /// <summary>W0 ← W0 / (m/n) - s·B·A with the norm kept by Merge (exact up to rounding). Does nothing when not merged.</summary>
    public void Unmerge()
    {
        ThrowIfDisposed();
        if (!Merged) return;
        Ops.Dora.Unmerge(W0, A.Value, B.Value, Magnitude.Value, _mergedNorm!, Scale);
        _mergedNorm!.Dispose();
        _mergedNorm = null;
        Merged = false;
    }

    /// <summary>The trainable parameters: A, B, then the magnitude.</summary>
    public override IEnumerable<Parameter> Parameters()
    {
        yield return A;
        yield return B;
        yield return Magnitude;
    }

    /// <summary>
    /// The weight norm (detached, PEFT's `.detach()`: a constant of the step), the forward, and a backward
    /// that fills A's, B's and the magnitude's gradients and x's (Ops.Dora.Backward); with dropout in
    /// training, PEFT's dropout path (Ops.Dora.ForwardWithDropout) with its state kept for the backward.
    /// </summary>
    /// <exception cref="InvalidOperationException">The layer is merged (unmerge it to train).</exception>
    /// <exception cref="NotSupportedException">A BF16 layer training with dropout &gt; 0.</exception>
    private protected override Variable Record(Tape tape, Variable x)
    {
        if (Merged)
            throw new InvalidOperationException("The DoraLinear layer is merged (W0 holds (m/n)·(W0 + s·B·A)); call Unmerge before training it.");
        ThrowIfDropoutUnsupported();
        float scale = Scale;
        Parameter a = A, b = B, magnitude = Magnitude;
        QuantizedWeight? quantized = QuantizedW0;
        Tensor? w0 = DenseW0;
        Tensor norm = WeightNorm();
        Parameter[] parameters = [a, b, magnitude];
        if (DropoutActive)
        {
            float p = Dropout;
            ulong seed = _delta.NextDropout(Training).Seed;
            Ops.Dora.DropoutState state;
            Tensor yDropout;
            try
            {
                (yDropout, state) = Ops.Dora.ForwardWithDropout(x.Value, w0, quantized, Bias, a.Value, b.Value, magnitude.Value, norm,
                                                                scale, p, seed);
            }
            catch
            {
                norm.Dispose();
                throw;
            }
            return tape.Record(yDropout, [x], parameters, g =>
            {
                var (dx, dA, dB, dm) = Ops.Dora.BackwardWithDropout(x.Value, w0, quantized, a.Value, b.Value, magnitude.Value, norm, state,
                                                                    g.OutputGradient, scale, p, seed, needDx: g.NeedsInput(0),
                                                                    needDA: g.NeedsParameter(0), needDB: g.NeedsParameter(1),
                                                                    needDMagnitude: g.NeedsParameter(2));
                return new Gradients([dx], [dA, dB, dm]);
            }, norm, state.U, state.Z, state.XDropped);
        }
        Tensor y, u, z;
        try
        {
            Tensor? keptZ;
            (y, u, keptZ) = quantized is not null
                ? Ops.Dora.Forward(x.Value, quantized, Bias, a.Value, b.Value, magnitude.Value, norm, scale)
                : Ops.Dora.Forward(x.Value, w0!, Bias, a.Value, b.Value, magnitude.Value, norm, scale);
            z = keptZ!;
        }
        catch
        {
            norm.Dispose();
            throw;
        }
        return tape.Record(y, [x], parameters, g =>
        {
            var (dx, dA, dB, dm) = quantized is not null
                ? Ops.Dora.Backward(x.Value, quantized, a.Value, b.Value, magnitude.Value, norm, u, z, g.OutputGradient, scale,
                                    needDx: g.NeedsInput(0), needDA: g.NeedsParameter(0), needDB: g.NeedsParameter(1),
                                    needDMagnitude: g.NeedsParameter(2))
                : Ops.Dora.Backward(x.Value, w0!, a.Value, b.Value, magnitude.Value, norm, u, z, g.OutputGradient, scale,
                                    needDx: g.NeedsInput(0), needDA: g.NeedsParameter(0), needDB: g.NeedsParameter(1),
                                    needDMagnitude: g.NeedsParameter(2));
            return new Gradients([dx], [dA, dB, dm]);
        }, norm, u, z);
    }

    /// <summary>The dense base weight, or null for QDoRA.</summary>
    private Tensor? DenseW0 => (Base as DenseLinear)?.Weight;

    /// <summary>Whether a forward now runs PEFT's dropout path (training with Dropout &gt; 0).</summary>
    private bool DropoutActive => Training && Dropout > 0f;

    private void ThrowIfDropoutUnsupported()
    {
        if (DropoutActive && DType != DType.F32)
            throw new NotSupportedException(
                $"DoraLinear: dropout {Dropout} in training runs in F32 only in this build, the layer is {DType}; " +
                "use dropout 0, an F32 layer, or set Training = false for inference.");
    }

    /// <summary>‖W0 + s·B·A‖_row of the base from its cached ‖W0‖²_row and <paramref name="delta"/>'s A and B.</summary>
    private Tensor NormOf(LowRankDelta delta, Tensor rowSquaredNorm) =>
        QuantizedW0 is { } q
            ? Ops.Dora.WeightNorm(q, delta.A.Value, delta.B.Value, delta.Scale, rowSquaredNorm)
            : Ops.Dora.WeightNorm(W0, delta.A.Value, delta.B.Value, delta.Scale, rowSquaredNorm);

    private protected override void DisposeState() => _mergedNorm?.Dispose();

    /// <summary>Checks the quantized base and the adapter's arguments, then wraps it with a copy of bias; disposes w0 when anything fails.</summary>
    private static Nf4Linear QuantizedBase(Device device, QuantizedWeight w0, Tensor? bias, int r, float alpha, float dropout)
    {
        ArgumentNullException.ThrowIfNull(w0);
        try
        {
            ArgumentNullException.ThrowIfNull(device);
            w0.ThrowIfDisposed(nameof(w0));
            if (w0.Shape.Count != 2 || w0.Shape[0] < 1 || w0.Shape[1] < 1)
                throw new ArgumentException($"{Op}: w0 must be a quantized matrix [out, in], got {w0.Describe()}", nameof(w0));
            if (!ReferenceEquals(w0.Device, device))
                throw new ArgumentException($"{Op}: w0 is on {w0.Device}, the layer on {device}; quantize on the layer's device.", nameof(w0));
            if (w0.DType != DType.F32)
                throw new NotSupportedException($"{Op}: QDoRA needs an F32 compute dtype in this build (its norm reads A·deq(W)ᵀ in fp32), got {w0.Describe()}.");
            if (bias is not null)
            {
                Ops.Checks.Alive(bias, Op, nameof(bias));
                if (bias.Rank != 1 || bias.Shape[0] != w0.Shape[0])
                    throw new ArgumentException($"{Op}: bias must be [out] = [{w0.Shape[0]}], got {bias.Describe()}", nameof(bias));
            }
            LowRankDelta.CheckArguments(Op, r, alpha, dropout, w0.Shape[0], w0.Shape[1]);
            return new Nf4Linear(w0, bias);
        }
        catch
        {
            w0.Dispose();
            throw;
        }
    }
}
