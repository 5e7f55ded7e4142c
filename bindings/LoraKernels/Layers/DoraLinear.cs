// A linear layer with a DoRA adapter, as PEFT's lora.Linear with use_dora=True (REFERENCE.md §2):
//   y = bias + (m / n) ⊙ (x W0ᵀ + s·(x Aᵀ) Bᵀ),   n = ‖W0 + s·B·A‖_row (detached),
// s = alpha/r (or alpha/sqrt(r) with rsLoRA). A and B are initialised as LoraLinear's (A
// U(±1/sqrt(in)) from SplitMix64(seed), B = 0; RankAdapter) and the magnitude m [out] as PEFT's,
// m0 = ‖W0 + s·B·A‖_row = ‖W0‖_row, so a new layer computes exactly the base layer. ‖W0‖²_row is
// computed once (W0 is frozen) and every forward derives n from it without forming B·A, accurate on
// every row (Ops.Dora.WeightNorm). A row whose norm is exactly 0 (an all-zero W0 row while B = 0,
// or an adapter that cancels a row exactly) makes m/n undefined: construction and the step that
// meets it throw ArithmeticException naming the rows, where PEFT would produce Inf or NaN.
// Dropout: with p > 0 in training the layer runs PEFT's dropout formula (Ops.Dora.ForwardWithDropout:
// y = (x W0ᵀ + b) + (g − 1) ⊙ (x_d W0ᵀ) + g ⊙ s·(x_d Aᵀ Bᵀ), a second base product), F32 layers only
// (a BF16 layer training with dropout throws NotSupportedException); eval ignores dropout, as PEFT
// does. Each dropout forward draws its seed from the layer's stream (as LoraLinear). Merge folds the adapter as PEFT does,
// W0 ← (m/n) ⊙ (W0 + s·B·A) (each element in double, rounded once), keeping n for Unmerge; while merged the
// layer computes x W0ᵀ + bias.
// QDoRA: over a QuantizedWeight base (F32 compute dtype) the layer owns the weight, as QloraLinear
// owns its 4-bit base; ‖deq(W)‖²_row is computed once by dequantizing into a temporary, and each
// step runs the quantized Ops.Dora overloads (deq(W) never formed). Merge on a quantized base throws
// NotSupportedException (PEFT dequantizes, merges and requantizes; this build does not).
using LoraKernels.Autograd;
using LoraKernels.Runtime;

namespace LoraKernels.Layers;

public sealed class DoraLinear : IAdapterLayer
{
    private const string Op = "DoraLinear";

    private readonly Tensor _w0RowSquaredNorm;
    private readonly Tensor? _w0;
    private readonly SplitMix64 _dropoutSeeds;
    private Tensor? _mergedNorm;
    private bool _disposed;

    /// <summary>
    /// Wraps the base weight <paramref name="w0"/> [out, in] (and <paramref name="bias"/> [out]),
    /// copied to <paramref name="device"/> in <paramref name="dtype"/>; the caller keeps its tensors.
    /// </summary>
    public DoraLinear(Device device, Tensor w0, Tensor? bias, int r, float alpha, float dropout = 0f,
                      bool useRsLora = false, ulong seed = 0, DType dtype = DType.F32)
        : this(device, DenseBase(device, w0, bias, r, alpha, dropout, dtype), r, alpha, dropout, useRsLora, seed)
    {
    }

    /// <summary>
    /// QDoRA: wraps the quantized base <paramref name="w0"/> [out, in] (F32 compute dtype, on
    /// <paramref name="device"/>), taking ownership of it (also when construction fails: it is then
    /// disposed), and <paramref name="bias"/> [out] (copied; the caller keeps it). The magnitude starts
    /// at ‖deq(W)‖_row; deq(W) is formed once, here, for that row norm and freed.
    /// </summary>
    public DoraLinear(Device device, QuantizedWeight w0, Tensor? bias, int r, float alpha, float dropout = 0f,
                      bool useRsLora = false, ulong seed = 0)
        : this(device, QuantizedBase(device, w0, bias, r, alpha, dropout), r, alpha, dropout, useRsLora, seed)
    {
    }

    /// <summary>
    /// Takes ownership of the checked base, then creates A and B (RankAdapter), ‖W0‖²_row and the
    /// magnitude m0 = ‖W0‖_row; if any of these fails, releases everything already owned, the base included.
    /// </summary>
    private DoraLinear(Device device, FrozenBase frozen, int r, float alpha, float dropout, bool useRsLora, ulong seed)
    {
        Device = device;
        DType = frozen.DType;
        InFeatures = frozen.InFeatures;
        OutFeatures = frozen.OutFeatures;
        _w0 = frozen.Dense;
        QuantizedW0 = frozen.Quantized;
        Bias = frozen.Bias;
        Rank = r;
        Alpha = alpha;
        Dropout = dropout;
        UseRsLora = useRsLora;
        Scale = RankAdapter.Scale(alpha, r, useRsLora);
        _dropoutSeeds = RankAdapter.DropoutSeeds(seed);
        try
        {
            (A, B) = RankAdapter.CreatePair(device, DType, r, InFeatures, OutFeatures, seed);
            _w0RowSquaredNorm = QuantizedW0 is not null ? Ops.Dora.RowSquaredNorm(QuantizedW0) : Ops.Dora.RowSquaredNorm(W0);
            using Tensor initialNorm = WeightNorm();
            Magnitude = new Parameter("lora_magnitude_vector", Nf4Linear.CopyTo(initialNorm, device, DType));
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>The frozen base a constructor has checked and owns: a dense copy or the quantized weight, and the bias copy.</summary>
    private readonly record struct FrozenBase(Tensor? Dense, QuantizedWeight? Quantized, Tensor? Bias, DType DType,
                                              int OutFeatures, int InFeatures);

    /// <summary>Checks the dense base and the adapter's arguments, then copies w0 and bias to the layer's device and dtype.</summary>
    private static FrozenBase DenseBase(Device device, Tensor w0, Tensor? bias, int r, float alpha, float dropout, DType dtype)
    {
        ArgumentNullException.ThrowIfNull(device);
        Ops.Checks.Alive(w0, Op, nameof(w0));
        (long outFeatures, long inFeatures) = Ops.Checks.Matrix(Op, nameof(w0), w0, "out, in");
        CheckBiasAndAdapter(bias, r, alpha, dropout, outFeatures, inFeatures, w0.Describe());
        Tensor dense = Nf4Linear.CopyTo(w0, device, dtype);
        try
        {
            Tensor? biasCopy = bias is null ? null : Nf4Linear.CopyTo(bias, device, dtype);
            return new FrozenBase(dense, null, biasCopy, dtype, (int)outFeatures, (int)inFeatures);
        }
        catch
        {
            dense.Dispose();
            throw;
        }
    }

    /// <summary>Checks the quantized base and the adapter's arguments, then copies bias; disposes w0 when anything fails.</summary>
    private static FrozenBase QuantizedBase(Device device, QuantizedWeight w0, Tensor? bias, int r, float alpha, float dropout)
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
            long outFeatures = w0.Shape[0], inFeatures = w0.Shape[1];
            CheckBiasAndAdapter(bias, r, alpha, dropout, outFeatures, inFeatures, w0.Describe());
            Tensor? biasCopy = bias is null ? null : Nf4Linear.CopyTo(bias, device, DType.F32);
            return new FrozenBase(null, w0, biasCopy, DType.F32, (int)outFeatures, (int)inFeatures);
        }
        catch
        {
            w0.Dispose();
            throw;
        }
    }

    /// <summary>The checks both bases share, in DenseAdapterLinear's order: bias [out], r, alpha and dropout, then 32-bit dims.</summary>
    private static void CheckBiasAndAdapter(Tensor? bias, int r, float alpha, float dropout, long outFeatures, long inFeatures,
                                            string w0Description)
    {
        if (bias is not null)
        {
            Ops.Checks.Alive(bias, Op, nameof(bias));
            if (bias.Rank != 1 || bias.Shape[0] != outFeatures)
                throw new ArgumentException($"{Op}: bias must be [out] = [{outFeatures}], got {bias.Describe()}", nameof(bias));
        }
        RankAdapter.CheckArguments(Op, r, alpha, dropout);
        if (inFeatures > int.MaxValue || outFeatures > int.MaxValue)
            throw new ArgumentException($"{Op}: w0 is {w0Description}; in and out must fit in 32 bits.", "w0");
    }

    public Device Device { get; }
    public DType DType { get; }
    public int InFeatures { get; }
    public int OutFeatures { get; }
    public int Rank { get; }
    public float Alpha { get; }
    public float Dropout { get; }
    public bool UseRsLora { get; }

    /// <summary>s = alpha/r, or alpha/sqrt(r) with rsLoRA.</summary>
    public float Scale { get; }

    /// <summary>lora_A [r, in].</summary>
    public Parameter A { get; }

    /// <summary>lora_B [out, r].</summary>
    public Parameter B { get; }

    /// <summary>lora_magnitude_vector [out] (the layer's dtype), initialised to ‖W0‖_row.</summary>
    public Parameter Magnitude { get; }

    /// <summary>The frozen dense base weight [out, in] (holding (m/n)·(W0 + s·B·A) while merged).</summary>
    /// <exception cref="InvalidOperationException">The base is quantized (see <see cref="QuantizedW0"/>).</exception>
    public Tensor W0 => _w0 ?? throw new InvalidOperationException("The DoraLinear layer has a quantized base (QDoRA); see QuantizedW0.");

    /// <summary>The frozen 4-bit base weight [out, in] of a QDoRA layer (owned), or null for a dense base.</summary>
    public QuantizedWeight? QuantizedW0 { get; }

    /// <summary>Whether the base is quantized (QDoRA).</summary>
    public bool IsQuantized => QuantizedW0 is not null;

    /// <summary>The frozen base bias [out], or null.</summary>
    public Tensor? Bias { get; }

    /// <summary>PyTorch's module.training; true for a new layer. Dropout applies only while training.</summary>
    public bool Training { get; set; } = true;

    public bool Merged { get; private set; }

    /// <summary>Records the layer on <paramref name="tape"/> (see <see cref="Tape.Dora"/>).</summary>
    public Variable Forward(Tape tape, Variable x)
    {
        ArgumentNullException.ThrowIfNull(tape);
        ThrowIfDisposed();
        return tape.Dora(this, x);
    }

    /// <summary>y [M, out] for x [M, in] without recording gradients.</summary>
    /// <exception cref="NotSupportedException">A BF16 layer training with Dropout &gt; 0.</exception>
    public Tensor Forward(Tensor x)
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
            var (yDropout, state) = Ops.Dora.ForwardWithDropout(x, _w0, QuantizedW0, Bias, A.Value, B.Value, Magnitude.Value, norm,
                                                                Scale, Dropout, NextDropoutSeed());
            state.Dispose();
            return yDropout;
        }
        var (y, u, _) = QuantizedW0 is not null
            ? Ops.Dora.Forward(x, QuantizedW0, Bias, A.Value, B.Value, Magnitude.Value, norm, Scale, keepZ: false)
            : Ops.Dora.Forward(x, W0, Bias, A.Value, B.Value, Magnitude.Value, norm, Scale, keepZ: false);
        u.Dispose();
        return y;
    }

    /// <summary>n = ‖W0 + s·B·A‖_row (F32 [out]) for the current A and B, from the cached ‖W0‖²_row.</summary>
    /// <exception cref="ArithmeticException">A row's norm is exactly 0 (m/n undefined).</exception>
    public Tensor WeightNorm()
    {
        ThrowIfDisposed();
        if (Merged) throw new InvalidOperationException("The DoraLinear layer is merged; its weight norm is that of the unmerged W0 (call Unmerge).");
        return QuantizedW0 is not null
            ? Ops.Dora.WeightNorm(QuantizedW0, A.Value, B.Value, Scale, _w0RowSquaredNorm)
            : Ops.Dora.WeightNorm(W0, A.Value, B.Value, Scale, _w0RowSquaredNorm);
    }

    /// <summary>W0 ← (m/n) ⊙ (W0 + s·B·A) (PEFT merge), n kept for Unmerge. Does nothing when already merged.</summary>
    /// <exception cref="NotSupportedException">The base is quantized (QDoRA).</exception>
    public void Merge()
    {
        ThrowIfDisposed();
        if (QuantizedW0 is not null)
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
    public IEnumerable<Parameter> Parameters()
    {
        yield return A;
        yield return B;
        yield return Magnitude;
    }

    /// <summary>Whether a forward now runs PEFT's dropout path (training with Dropout &gt; 0).</summary>
    internal bool DropoutActive => Training && Dropout > 0f;

    /// <summary>The dropout seed of the next training forward.</summary>
    internal ulong NextDropoutSeed() => _dropoutSeeds.NextUInt64();

    internal void ThrowIfDropoutUnsupported()
    {
        if (DropoutActive && DType != DType.F32)
            throw new NotSupportedException(
                $"DoraLinear: dropout {Dropout} in training runs in F32 only in this build, the layer is {DType}; " +
                "use dropout 0, an F32 layer, or set Training = false for inference.");
    }

    private void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(_disposed, this);

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        // A failing constructor calls this too, before A, B, the row norm or the magnitude may exist.
        A?.Dispose();
        B?.Dispose();
        Magnitude?.Dispose();
        _w0?.Dispose();
        QuantizedW0?.Dispose();
        Bias?.Dispose();
        _w0RowSquaredNorm?.Dispose();
        _mergedNorm?.Dispose();
    }
}
