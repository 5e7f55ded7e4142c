// QLoRA (Dettmers et al.; PEFT's lora.Linear4bit): a LoRA adapter over a frozen 4-bit base,
//   y = x·deq(W)ᵀ + bias + s·(dropout(x)·Aᵀ)·Bᵀ,   s = alpha/r, or alpha/sqrt(r) with rsLoRA.
// The 4-bit frozen base (Nf4Linear: NF4, block size 64 and double quantization by default, bnb's
// Linear4bit with compress_statistics) × the low-rank delta exactly as LoraLinear's (LowRankDelta),
// so a QLoRA layer and a LoRA layer built from the same seed start from the same A. Forward and
// backward run Ops.Qlora.Forward / Backward; deq(W) is never materialised.
using LoraKernels.Autograd;

namespace LoraKernels.Layers;

public sealed class QloraLinear : AdaptedLinear<Nf4Linear>
{
    private readonly LowRankDelta _delta;

    /// <summary>
    /// Quantizes <paramref name="w0"/> [out, in] (copied to <paramref name="device"/> in <paramref name="dtype"/>)
    /// and adds a rank-<paramref name="r"/> adapter scaled by s = alpha/r (alpha/√r with <paramref name="useRsLora"/>);
    /// the caller keeps its tensors.
    /// </summary>
    public QloraLinear(Device device, Tensor w0, Tensor? bias, int r, float alpha, float dropout = 0f,
                       bool useRsLora = false, ulong seed = 0, DType dtype = DType.F32,
                       QuantType quantType = QuantType.Nf4, int blockSize = 64, bool doubleQuant = true, LoraInit init = LoraInit.Default)
        : this(CreateBase(device, w0, bias, r, alpha, dropout, quantType, blockSize, doubleQuant, dtype), r, alpha, dropout, useRsLora, seed, init)
    {
    }

    /// <summary>
    /// QLoRA with the options PEFT's LoraConfig names (Rank default 8, Alpha default 8, Dropout, UseRsLora,
    /// Init, Seed, DType) over <paramref name="w0"/> quantized as bitsandbytes' 4-bit config says.
    /// </summary>
    public QloraLinear(Device device, Tensor w0, Tensor? bias, Variants.AdapterOptions options,
                       QuantType quantType = QuantType.Nf4, int blockSize = 64, bool doubleQuant = true)
        : this(device, w0, bias, Variants.AdapterOptions.Require(options).RankOrDefault, options.AlphaOrDefault, options.Dropout,
               options.UseRsLora, options.Seed, options.DType, quantType, blockSize, doubleQuant, options.Init)
    {
    }

    /// <summary>
    /// Adds a rank-<paramref name="r"/> adapter (in the base's dtype) to <paramref name="baseLayer"/>, taking
    /// ownership of it (also when construction fails: the base is then disposed).
    /// </summary>
    public QloraLinear(Nf4Linear baseLayer, int r, float alpha, float dropout = 0f, bool useRsLora = false, ulong seed = 0,
                       LoraInit init = LoraInit.Default)
        : base(CheckedBase(baseLayer, r, alpha, dropout))
    {
        _delta = Create(() => new LowRankDelta(Device, DType, r, alpha, dropout, useRsLora, seed, InFeatures, OutFeatures, init: init));
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

    public override Tensor Forward(Tensor x)
    {
        ThrowIfDisposed();
        var (p, seed) = _delta.NextDropout(Training);
        var (y, u) = Ops.Qlora.Forward(x, Base.Weight, Bias, A.Value, B.Value, Scale, p, seed);
        u.Dispose();
        return y;
    }

    /// <summary>The trainable parameters: A, then B.</summary>
    public override IEnumerable<Parameter> Parameters()
    {
        yield return A;
        yield return B;
    }

    /// <summary>The fused 4-bit forward, recorded with a backward that fills A's, B's and x's gradients (the base is frozen).</summary>
    private protected override Variable Record(Tape tape, Variable x)
    {
        var (p, seed) = _delta.NextDropout(Training);
        float scale = Scale;
        QuantizedWeight w = Base.Weight;
        var (y, u) = Ops.Qlora.Forward(x.Value, w, Bias, A.Value, B.Value, scale, p, seed);
        return tape.Record(y, [x], [A, B], g =>
        {
            var (dx, dA, dB) = Ops.Qlora.Backward(x.Value, w, A.Value, B.Value, u, g.OutputGradient, scale, p, seed,
                                                  needDx: g.NeedsInput(0), needDA: g.NeedsParameter(0), needDB: g.NeedsParameter(1));
            return new Gradients([dx], [dA, dB]);
        }, u);
    }

    /// <summary>Checks the adapter's arguments before the base is quantized, so a bad r wastes no quantization.</summary>
    private static Nf4Linear CreateBase(Device device, Tensor w0, Tensor? bias, int r, float alpha, float dropout,
                                        QuantType quantType, int blockSize, bool doubleQuant, DType dtype)
    {
        LowRankDelta.CheckArguments("QloraLinear", r, alpha, dropout);
        return new Nf4Linear(device, w0, bias, quantType, blockSize, doubleQuant, dtype);
    }

    /// <summary>The adapter's arguments against <paramref name="baseLayer"/>; the base is disposed when they are refused.</summary>
    private static Nf4Linear CheckedBase(Nf4Linear baseLayer, int r, float alpha, float dropout)
    {
        ArgumentNullException.ThrowIfNull(baseLayer);
        try
        {
            LowRankDelta.CheckArguments("QloraLinear", r, alpha, dropout, baseLayer.OutFeatures, baseLayer.InFeatures);
            return baseLayer;
        }
        catch
        {
            baseLayer.Dispose();
            throw;
        }
    }
}
