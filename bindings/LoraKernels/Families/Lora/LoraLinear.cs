// A linear layer with a LoRA adapter, as PEFT's lora.Linear (REFERENCE.md section 1):
//   y = x W0ᵀ + bias + s·(dropout(x) Aᵀ) Bᵀ,   s = alpha/r, or alpha/sqrt(r) with rsLoRA.
// A dense frozen base (DenseLinear: W0 and bias copied to the layer's device and dtype, the caller
// keeps its tensors) × the low-rank delta (LowRankDelta: A [r, in] U(±1/sqrt(in)) from SplitMix64(seed),
// reproducible within LoraKernels, not PyTorch's draws, REFERENCE.md section 11; B [out, r] = 0, so a
// new layer computes exactly the base layer). Dropout acts on the adapter branch only, only while
// Training, with a fresh seed for every forward call (the recording keeps it for the backward pass).
// Merge folds s·B·A into W0 for inference; while merged the layer computes x W0ᵀ + bias alone and
// refuses to be trained.
using LoraKernels.Autograd;

namespace LoraKernels.Layers;

public sealed class LoraLinear : AdaptedLinear<DenseLinear>
{
    private readonly LowRankDelta _delta;

    /// <summary>
    /// Wraps the base weight <paramref name="w0"/> [out, in] (and <paramref name="bias"/> [out]),
    /// copied to <paramref name="device"/> in <paramref name="dtype"/>; the caller keeps its tensors.
    /// The branch's scale is derived from <paramref name="alpha"/> as PEFT's lora_alpha: s = alpha/r,
    /// or alpha/√r when <paramref name="useRsLora"/> (PEFT's use_rslora).
    /// </summary>
    public LoraLinear(Device device, Tensor w0, Tensor? bias, int r, float alpha, float dropout = 0f,
                      bool useRsLora = false, ulong seed = 0, DType dtype = DType.F32, LoraInit init = LoraInit.Default)
        : base(DenseLinear.Create("LoraLinear", device, w0, bias, dtype,
                                  (outFeatures, inFeatures) => LowRankDelta.CheckArguments("LoraLinear", r, alpha, dropout, outFeatures, inFeatures)))
    {
        _delta = Create(() => new LowRankDelta(device, dtype, r, alpha, dropout, useRsLora, seed, InFeatures, OutFeatures, init: init));
    }

    /// <summary>
    /// The layer PEFT's LoraConfig describes: <paramref name="options"/>' Rank (default 8), Alpha (lora_alpha,
    /// default 8; s = alpha/r, or alpha/√r with UseRsLora), Dropout, Init (Default or Gaussian), Seed and DType.
    /// </summary>
    public LoraLinear(Device device, Tensor w0, Tensor? bias, Variants.AdapterOptions options)
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

    /// <summary>lora_A [r, in].</summary>
    public Parameter A => _delta.A;

    /// <summary>lora_B [out, r].</summary>
    public Parameter B => _delta.B;

    /// <summary>The frozen base weight [out, in] (holding W0 + s·B·A while merged).</summary>
    public Tensor W0 => Base.Weight;

    public bool Merged { get; private set; }

    public override Tensor Forward(Tensor x)
    {
        ThrowIfDisposed();
        // Merged: W0 already holds s·B·A, and a zero scale leaves x W0ᵀ + bias.
        var (p, seed) = Merged ? (0f, 0ul) : _delta.NextDropout(Training);
        var (y, u) = Ops.Lora.Forward(x, W0, Bias, A.Value, B.Value, Merged ? 0f : Scale, p, seed);
        u.Dispose();
        return y;
    }

    /// <summary>W0 += s·B·A (PEFT merge). Does nothing when already merged, as PEFT (which warns).</summary>
    public void Merge()
    {
        ThrowIfDisposed();
        if (Merged) return;
        Ops.Lora.Merge(W0, A.Value, B.Value, Scale);
        Merged = true;
    }

    /// <summary>W0 -= s·B·A (PEFT unmerge; exact up to rounding, and bf16 rounding for a BF16 layer). Does nothing when not merged.</summary>
    public void Unmerge()
    {
        ThrowIfDisposed();
        if (!Merged) return;
        Ops.Lora.Unmerge(W0, A.Value, B.Value, Scale);
        Merged = false;
    }

    /// <summary>The trainable parameters: A, then B.</summary>
    public override IEnumerable<Parameter> Parameters()
    {
        yield return A;
        yield return B;
    }

    /// <summary>The fused forward, recorded with a backward that keeps u = dropout(x) Aᵀ and the dropout seed.</summary>
    /// <exception cref="InvalidOperationException">The layer is merged (unmerge it to train).</exception>
    private protected override Variable Record(Tape tape, Variable x)
    {
        if (Merged) throw new InvalidOperationException("The LoraLinear layer is merged (W0 holds W0 + s·B·A); call Unmerge before training it.");
        var (p, seed) = _delta.NextDropout(Training);
        float scale = Scale;
        var (y, u) = Ops.Lora.Forward(x.Value, W0, Bias, A.Value, B.Value, scale, p, seed);
        return tape.Record(y, [x], [A, B], g =>
        {
            var (dx, dA, dB) = Ops.Lora.Backward(x.Value, W0, A.Value, B.Value, u, g.OutputGradient, scale, p, seed,
                                                 needDx: g.NeedsInput(0), needDA: g.NeedsParameter(0), needDB: g.NeedsParameter(1));
            return new Gradients([dx], [dA, dB]);
        }, u);
    }
}
