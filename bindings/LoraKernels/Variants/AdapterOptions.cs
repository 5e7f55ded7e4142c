// A layer's adapter options, named after PEFT's LoraConfig so that a config reads across one to one
// (r → Rank, lora_alpha → Alpha, lora_dropout → Dropout, use_rslora → UseRsLora, init_lora_weights →
// Init; PeftConfig.ToAdapterOptions does it for a saved config). The LoRA-family layers take it in a
// constructor, and Catalogue.Create passes it to any variant. Unset values take the variant's
// defaults (REFERENCE.md: PEFT's LoraConfig r = 8, lora_alpha = 8; VeRA r = 256; AdaLoRA init_r = 12; SoRA alpha = 16).
using LoraKernels.Layers;

namespace LoraKernels.Variants;

public sealed record AdapterOptions
{
    /// <summary>The rank r (null: the variant's default).</summary>
    public int? Rank { get; init; }
    /// <summary>lora_alpha (null: PEFT's default 8); the scale is alpha/r, or alpha/√r with rsLoRA.</summary>
    public float? Alpha { get; init; }
    /// <summary>Dropout probability on the adapter branch's input (lora_dropout).</summary>
    public float Dropout { get; init; }
    /// <summary>use_rslora: the scale is alpha/√r instead of alpha/r.</summary>
    public bool UseRsLora { get; init; }
    /// <summary>init_lora_weights: how A and B start (PiSSA also replaces the base: build it with Pissa.CreateLayer).</summary>
    public LoraInit Init { get; init; } = LoraInit.Default;
    /// <summary>Seed of the variant's random initialisation (and of its dropout masks).</summary>
    public ulong Seed { get; init; }
    /// <summary>Storage dtype of the layer's dense tensors.</summary>
    public DType DType { get; init; } = DType.F32;
    /// <summary>PiSSA: null for the exact SVD, K for the randomized SVD with K subspace iterations ("pissa_niter_K").</summary>
    public int? PissaIterations { get; init; }
    /// <summary>LoftQ: alternating quantization/SVD rounds (PEFT's loftq_iter, default 1).</summary>
    public int LoftQIterations { get; init; } = 1;
    /// <summary>
    /// VeRA: the frozen projections shared by every VeRA layer of a model (VeraProjections.ForLayers over
    /// all the layers' shapes, rank r); required for "vera", owned by the caller.
    /// </summary>
    public VeraProjections? VeraProjections { get; init; }
    /// <summary>VeRA: the initial value of λ_d (PEFT's d_initial).</summary>
    public float VeraDInitial { get; init; } = 0.1f;
    /// <summary>LoKr: decompose_factor (-1: the divisor pair nearest √d).</summary>
    public int LoKrFactor { get; init; } = -1;
    /// <summary>LoKr: decompose_both (w1 low-rank too when r &lt; max(out_l, in_m)/2).</summary>
    public bool LoKrDecomposeBoth { get; init; }
    /// <summary>LoKr, FLoRA on a convolution weight [O, C, kh, kw]: its stride, padding and dilation (null: 1, 0, 1).</summary>
    public Ops.Conv2dGeometry? Convolution { get; init; }
    /// <summary>LoTR: the factors shared by a group of equal-shape layers (null: the layer owns its own).</summary>
    public TuckerFactors? TuckerFactors { get; init; }
    /// <summary>Mixture of rank-1 experts: the number of experts (null: r).</summary>
    public int? Experts { get; init; }
    /// <summary>Mixture of rank-1 experts: experts per token (null: 2).</summary>
    public int? TopK { get; init; }
    /// <summary>Mixture of rank-1 experts: route every token to every expert by the softmax (no top-k).</summary>
    public bool DenseRouting { get; init; }
    /// <summary>Mixture of rank-1 experts: the load-balancing loss's weight (null: 0.01).</summary>
    public float? BalanceCoefficient { get; init; }
    /// <summary>
    /// Mixture of rank-1 experts: the pool shared by every module of one width (RankOneExpertPool.Create), owned by the
    /// caller; null gives each layer a pool of its own.
    /// </summary>
    public RankOneExpertPool? ExpertPool { get; init; }

    internal float AlphaOrDefault => Alpha ?? 8f;
    internal int RankOrDefault => Rank ?? 8;

    /// <summary>The scale s the layer will apply: alpha/r, or alpha/√r with rsLoRA (r and alpha defaulted as PEFT).</summary>
    public float Scale => LowRankDelta.ScaleOf(AlphaOrDefault, RankOrDefault, UseRsLora);

    internal static AdapterOptions Require(AdapterOptions? options) => options ?? throw new ArgumentNullException(nameof(options));
}
