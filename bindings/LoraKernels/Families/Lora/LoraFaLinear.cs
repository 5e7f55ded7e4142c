// LoRA-FA (Zhang et al. 2023, arXiv:2308.03303; REFERENCE.md 7.2): a LoRA layer whose A is frozen at
// its random initialisation and whose B alone trains, so
//   y = x W0ᵀ + bias + s·(dropout(x) Aᵀ) Bᵀ,   s = alpha/r (or alpha/sqrt(r) with rsLoRA),
// a dense frozen base × the low-rank delta with A frozen (LowRankDelta: the same seed gives the same A
// and the same dropout seeds as LoraLinear).
// Why it saves memory: the gradients it needs are dB = s·dyᵀ u and dx = dy W0 + dropout'(s·dy B A),
// where u = dropout(x) Aᵀ [M, r]; neither needs x, so the backward pass keeps u (M·r·4 bytes)
// instead of x and u (M·in·4 + M·r·4 bytes for LoRA, whose dA = duᵀ dropout(x) needs x).
// The dropout mask is a pure function of (seed, element index), so backward regenerates it.
// Gradients are plain (PEFT's LoraFAOptimizer additionally preconditions dB by (A Aᵀ)⁻¹/s²; that
// optimizer is not part of this layer).
using LoraKernels.Autograd;

namespace LoraKernels.Layers;

public sealed class LoraFaLinear : AdaptedLinear<DenseLinear>
{
    private readonly LowRankDelta _delta;

    /// <summary>
    /// Wraps the base weight <paramref name="w0"/> [out, in] (and <paramref name="bias"/> [out]),
    /// copied to <paramref name="device"/> in <paramref name="dtype"/>; the caller keeps its tensors.
    /// A is drawn exactly as <see cref="LoraLinear"/> draws it for the same seed; the scale is PEFT's,
    /// s = alpha/r (alpha/√r with <paramref name="useRsLora"/>).
    /// </summary>
    public LoraFaLinear(Device device, Tensor w0, Tensor? bias, int r, float alpha, float dropout = 0f,
                        bool useRsLora = false, ulong seed = 0, DType dtype = DType.F32, LoraInit init = LoraInit.Default)
        : base(DenseLinear.Create("LoraFaLinear", device, w0, bias, dtype,
                                  (outFeatures, inFeatures) => LowRankDelta.CheckArguments("LoraFaLinear", r, alpha, dropout, outFeatures, inFeatures)))
    {
        _delta = Create(() => new LowRankDelta(device, dtype, r, alpha, dropout, useRsLora, seed, InFeatures, OutFeatures, trainA: false, init));
    }

    /// <summary>
    /// LoRA-FA with the options PEFT's LoraConfig names: <paramref name="options"/>' Rank (default 8), Alpha (lora_alpha,
    /// default 8; s = alpha/r, or alpha/√r with UseRsLora), Dropout, Init (Default or Gaussian), Seed and DType.
    /// </summary>
    public LoraFaLinear(Device device, Tensor w0, Tensor? bias, Variants.AdapterOptions options)
        : this(device, w0, bias, Variants.AdapterOptions.Require(options).RankOrDefault, options.AlphaOrDefault, options.Dropout,
               options.UseRsLora, options.Seed, options.DType, options.Init)
    {
    }

    public int Rank => _delta.Rank;
    public float Alpha => _delta.Alpha;
    public float Dropout => _delta.Dropout;
    public bool UseRsLora => _delta.UseRsLora;

    /// <summary>The dropout seed the next training forward with dropout will use (tests draw it from a twin layer).</summary>
    internal ulong NextDropoutSeed() => _delta.NextDropoutSeed();

    /// <summary>s = alpha/r, or alpha/sqrt(r) with rsLoRA.</summary>
    public float Scale => _delta.Scale;

    /// <summary>The frozen lora_A [r, in] (not a parameter: it never receives a gradient).</summary>
    public Tensor A => _delta.A.Value;

    /// <summary>lora_B [out, r], the only trainable tensor.</summary>
    public Parameter B => _delta.B;

    /// <summary>The frozen base weight [out, in].</summary>
    public Tensor W0 => Base.Weight;

    /// <summary>
    /// Bytes of activations that the backward pass of the last recorded forward keeps alive:
    /// u = dropout(x) Aᵀ, M·r·4 (u is F32). LoRA's backward keeps x as well.
    /// </summary>
    public long RetainedActivationBytes { get; private set; }

    public override Tensor Forward(Tensor x)
    {
        ThrowIfDisposed();
        var (p, seed) = _delta.NextDropout(Training);
        var (y, u) = Ops.Lora.Forward(x, W0, Bias, A, B.Value, Scale, p, seed);
        u.Dispose();
        return y;
    }

    /// <summary>The trainable parameters: B only.</summary>
    public override IEnumerable<Parameter> Parameters()
    {
        yield return B;
    }

    /// <summary>
    /// The fused forward, recorded with a backward that captures u, the frozen weights and the input
    /// variable, never x's values: dB and dx need only dy, u, W0, A and B. Ops.Lora.Backward takes x in
    /// its signature for dA; with needDA false no backend reads it, so the backward passes an
    /// uninitialised [M, in] placeholder allocated for the call and freed at once (transient workspace,
    /// not a retained activation).
    /// </summary>
    private protected override Variable Record(Tape tape, Variable x)
    {
        var (p, seed) = _delta.NextDropout(Training);
        float scale = Scale;
        Tensor w0 = W0, a = A;
        Parameter b = B;
        var (y, u) = Ops.Lora.Forward(x.Value, w0, Bias, a, b.Value, scale, p, seed);
        RetainedActivationBytes = u.SizeInBytes;
        long rows = x.Value.Shape[0];
        DType dtype = x.Value.DType;
        return tape.Record(y, [x], [b], g =>
        {
            using Tensor unreadInput = Tensor.Empty(w0.Device, dtype, rows, w0.Shape[1]);
            var (dx, _, dB) = Ops.Lora.Backward(unreadInput, w0, a, b.Value, u, g.OutputGradient, scale, p, seed,
                                                needDx: g.NeedsInput(0), needDA: false, needDB: g.NeedsParameter(0));
            return new Gradients([dx], [dB]);
        }, u);
    }
}
