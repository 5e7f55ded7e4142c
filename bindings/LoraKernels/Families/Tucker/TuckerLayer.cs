// What a linear and a convolution Tucker layer share: the factors A = U_inᵀ [r_in, in] and B = U_out [out, r_out]
// (the layer's own, or a TuckerFactors group's), the core S [r_out, r_in (, kh, kw)], s = alpha/r_in, their
// parameters, and merging s·ΔW = s·(S ×₁ B ×₂ Aᵀ) into a weight (Ops.Tucker.Merge forms it for either shape).
using LoraKernels.Autograd;

namespace LoraKernels.Layers;

public abstract class TuckerLayer<TBase> : MergeableLinear<TBase> where TBase : FrozenLinear
{
    /// <summary>Takes ownership of <paramref name="frozenBase"/>; the derived constructor sets the factors and core.</summary>
    private protected TuckerLayer(TBase frozenBase, float alpha) : base(frozenBase) => Alpha = alpha;

    /// <summary>The factors (the layer's own, or the group's when shared).</summary>
    public TuckerFactors Factors { get; private protected set; } = null!;

    /// <summary>Whether the factors are shared with other layers (LoTR) rather than owned.</summary>
    public bool Shared { get; private protected set; }

    /// <summary>A = U_inᵀ [r_in, in].</summary>
    public Parameter A => Factors.A;

    /// <summary>The core S: [r_out, r_in] for a linear layer, [r_out, r_in, kh, kw] for a convolution.</summary>
    public Parameter Core { get; private protected set; } = null!;

    /// <summary>B = U_out [out, r_out].</summary>
    public Parameter B => Factors.B;

    public int RankIn => Factors.RankIn;
    public int RankOut => Factors.RankOut;
    public float Alpha { get; }

    /// <summary>s = alpha/r_in (LoRA's alpha/r, r the rank the input is projected to).</summary>
    public float Scale => Alpha / RankIn;

    /// <summary>The trainable parameters: A, the core, then B (A and B the group's when shared).</summary>
    public override IEnumerable<Parameter> Parameters()
    {
        yield return A;
        yield return Core;
        yield return B;
    }

    /// <summary>w += sign·s·ΔW (merge, unmerge, a formed inference weight).</summary>
    private protected override void AddDelta(Tensor w, float sign) => Ops.Tucker.Merge(w, A.Value, Core.Value, B.Value, sign * Scale);

    /// <summary>Throws unless alpha is finite.</summary>
    private protected static void CheckAlpha(string op, float alpha)
    {
        if (!float.IsFinite(alpha)) throw new ArgumentOutOfRangeException(nameof(alpha), alpha, $"{op}: alpha must be finite.");
    }
}
