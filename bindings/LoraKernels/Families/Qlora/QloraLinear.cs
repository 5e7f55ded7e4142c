// QLoRA (Dettmers et al.; PEFT's lora.Linear4bit): a LoRA adapter over a frozen 4-bit base,
//   y = x·deq(W)ᵀ + bias + s·(dropout(x)·Aᵀ)·Bᵀ,   s = alpha/r, or alpha/sqrt(r) with rsLoRA.
// The base is an Nf4Linear (NF4, block size 64 and double quantization by default: bnb's
// Linear4bit with compress_statistics); the adapter (A, B, their initialisation, scale and the
// dropout seed stream) is exactly LoraLinear's, through RankAdapter, so a QLoRA layer and a LoRA
// layer built from the same seed start from the same A. It does not derive from
// DenseAdapterLinear: there is no dense W0 to own, only the quantized base. Forward and backward run
// Ops.Qlora.Forward / Backward; deq(W) is never materialised.
using LoraKernels.Autograd;
using LoraKernels.Runtime;

namespace LoraKernels.Layers;

public sealed class QloraLinear : IAdapterLayer
{
    private readonly SplitMix64 _dropoutSeeds;
    private bool _disposed;

    /// <summary>
    /// Quantizes <paramref name="w0"/> [out, in] (copied to <paramref name="device"/> in <paramref name="dtype"/>)
    /// and adds a rank-<paramref name="r"/> adapter; the caller keeps its tensors.
    /// </summary>
    public QloraLinear(Device device, Tensor w0, Tensor? bias, int r, float alpha, float dropout = 0f,
                       bool useRsLora = false, ulong seed = 0, DType dtype = DType.F32,
                       QuantType quantType = QuantType.Nf4, int blockSize = 64, bool doubleQuant = true)
        : this(CreateBase(device, w0, bias, r, alpha, dropout, quantType, blockSize, doubleQuant, dtype), r, alpha, dropout, useRsLora, seed)
    {
    }

    /// <summary>
    /// Adds a rank-<paramref name="r"/> adapter (in the base's dtype) to <paramref name="baseLayer"/>, taking
    /// ownership of it (also when construction fails: the base is then disposed).
    /// </summary>
    public QloraLinear(Nf4Linear baseLayer, int r, float alpha, float dropout = 0f, bool useRsLora = false, ulong seed = 0)
    {
        const string op = "QloraLinear";
        ArgumentNullException.ThrowIfNull(baseLayer);
        try
        {
            RankAdapter.CheckArguments(op, r, alpha, dropout, baseLayer.OutFeatures, baseLayer.InFeatures);
        }
        catch
        {
            baseLayer.Dispose();
            throw;
        }
        Base = baseLayer;
        Rank = r;
        Alpha = alpha;
        Dropout = dropout;
        UseRsLora = useRsLora;
        Scale = RankAdapter.Scale(alpha, r, useRsLora);
        _dropoutSeeds = RankAdapter.DropoutSeeds(seed);
        try
        {
            (A, B) = RankAdapter.CreatePair(baseLayer.Device, baseLayer.DType, r, baseLayer.InFeatures, baseLayer.OutFeatures, seed);
        }
        catch
        {
            baseLayer.Dispose();
            throw;
        }
    }

    /// <summary>The frozen 4-bit base layer (owned).</summary>
    public Nf4Linear Base { get; }

    public Device Device => Base.Device;
    public DType DType => Base.DType;
    public int InFeatures => Base.InFeatures;
    public int OutFeatures => Base.OutFeatures;
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

    /// <summary>Whether dropout is active (true for a new layer).</summary>
    public bool Training { get; set; } = true;

    /// <summary>Records the layer on <paramref name="tape"/> (see <see cref="Tape.Qlora"/>).</summary>
    public Variable Forward(Tape tape, Variable x)
    {
        ArgumentNullException.ThrowIfNull(tape);
        ThrowIfDisposed();
        return tape.Qlora(this, x);
    }

    /// <summary>y [M, out] for x [M, in] without recording gradients (dropout still applies while Training).</summary>
    public Tensor Forward(Tensor x)
    {
        ThrowIfDisposed();
        float dropoutP = Training ? Dropout : 0f;
        ulong seed = dropoutP > 0f ? NextDropoutSeed() : 0;
        var (y, u) = Ops.Qlora.Forward(x, Base.Weight, Base.Bias, A.Value, B.Value, Scale, dropoutP, seed);
        u.Dispose();
        return y;
    }

    /// <summary>The trainable parameters: A, then B.</summary>
    public IEnumerable<Parameter> Parameters()
    {
        yield return A;
        yield return B;
    }

    /// <summary>The dropout seed of the next forward call.</summary>
    internal ulong NextDropoutSeed() => _dropoutSeeds.NextUInt64();

    private void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(_disposed, this);

    /// <summary>Checks the adapter's arguments before the base is quantized, so a bad r wastes no quantization.</summary>
    private static Nf4Linear CreateBase(Device device, Tensor w0, Tensor? bias, int r, float alpha, float dropout,
                                        QuantType quantType, int blockSize, bool doubleQuant, DType dtype)
    {
        RankAdapter.CheckArguments("QloraLinear", r, alpha, dropout);
        return new Nf4Linear(device, w0, bias, quantType, blockSize, doubleQuant, dtype);
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        A.Dispose();
        B.Dispose();
        Base.Dispose();
    }
}
