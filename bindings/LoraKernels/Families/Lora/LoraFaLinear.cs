// LoRA-FA (Zhang et al. 2023, arXiv:2308.03303; REFERENCE.md 7.2): a LoRA layer whose A is frozen at
// its random initialisation and whose B alone trains, so
//   y = x W0ᵀ + bias + s·(dropout(x) Aᵀ) Bᵀ,   s = alpha/r (or alpha/sqrt(r) with rsLoRA),
// with A [r, in] ~ U(±1/sqrt(in)) from SplitMix64(seed) and B [out, r] = 0, both drawn by RankAdapter
// as for LoraLinear (the same seed gives the same A and the same dropout seeds). The frozen base is
// DenseAdapterLinear's.
// Why it saves memory: the gradients it needs are dB = s·dyᵀ u and dx = dy W0 + dropout'(s·dy B A),
// where u = dropout(x) Aᵀ [M, r]; neither needs x, so the backward pass keeps u (M·r·4 bytes)
// instead of x and u (M·in·4 + M·r·4 bytes for LoRA, whose dA = duᵀ dropout(x) needs x).
// The dropout mask is a pure function of (seed, element index), so backward regenerates it.
// Gradients are plain (PEFT's LoraFAOptimizer additionally preconditions dB by (A Aᵀ)⁻¹/s²; that
// optimizer is not part of this layer).
using LoraKernels.Autograd;
using LoraKernels.Runtime;

namespace LoraKernels.Layers;

public sealed class LoraFaLinear : DenseAdapterLinear
{
    private readonly SplitMix64 _dropoutSeeds;

    /// <summary>
    /// Wraps the base weight <paramref name="w0"/> [out, in] (and <paramref name="bias"/> [out]),
    /// copied to <paramref name="device"/> in <paramref name="dtype"/>; the caller keeps its tensors.
    /// A is drawn exactly as <see cref="LoraLinear"/> draws it for the same seed.
    /// </summary>
    public LoraFaLinear(Device device, Tensor w0, Tensor? bias, int r, float alpha, float dropout = 0f,
                        bool useRsLora = false, ulong seed = 0, DType dtype = DType.F32)
        : base("LoraFaLinear", device, w0, bias, dtype, (outFeatures, inFeatures) =>
                   RankAdapter.CheckArguments("LoraFaLinear", r, alpha, dropout, outFeatures, inFeatures))
    {
        Rank = r;
        Alpha = alpha;
        Dropout = dropout;
        UseRsLora = useRsLora;
        Scale = RankAdapter.Scale(alpha, r, useRsLora);
        _dropoutSeeds = RankAdapter.DropoutSeeds(seed);
        A = Create(() => RankAdapter.InitialATensor(device, dtype, r, InFeatures, seed));
        B = Create(() => RankAdapter.CreateB(device, dtype, r, OutFeatures));
    }

    public int Rank { get; }
    public float Alpha { get; }
    public float Dropout { get; }
    public bool UseRsLora { get; }

    /// <summary>s = alpha/r, or alpha/sqrt(r) with rsLoRA.</summary>
    public float Scale { get; }

    /// <summary>The frozen lora_A [r, in] (not a parameter: it never receives a gradient).</summary>
    public Tensor A { get; }

    /// <summary>lora_B [out, r], the only trainable tensor.</summary>
    public Parameter B { get; }

    /// <summary>
    /// Bytes of activations that the backward pass of the last <see cref="DenseAdapterLinear.Forward(Tape, Variable)"/>
    /// keeps alive: u = dropout(x) Aᵀ, M·r·4 (u is F32). LoRA's backward keeps x as well.
    /// </summary>
    public long RetainedActivationBytes { get; internal set; }

    /// <summary>y [M, out] for x [M, in] without recording gradients (dropout still applies while Training).</summary>
    public override Tensor Forward(Tensor x)
    {
        ThrowIfDisposed();
        float dropoutP = Training ? Dropout : 0f;
        ulong seed = dropoutP > 0f ? NextDropoutSeed() : 0;
        var (y, u) = Ops.Lora.Forward(x, W0, Bias, A, B.Value, Scale, dropoutP, seed);
        u.Dispose();
        return y;
    }

    /// <summary>The trainable parameters: B only.</summary>
    public override IEnumerable<Parameter> Parameters()
    {
        yield return B;
    }

    /// <summary>The dropout seed of the next forward call.</summary>
    internal ulong NextDropoutSeed() => _dropoutSeeds.NextUInt64();

    /// <summary>See <see cref="Tape.LoraFa"/>.</summary>
    private protected override Variable Record(Tape tape, Variable x) => tape.LoraFa(this, x);
}
