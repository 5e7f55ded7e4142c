// What a linear and a convolution LoKr layer share: the Kronecker delta (LokrDelta: PEFT's factor shapes, low-rank
// rules, initialisation and s = alpha/r), its parameters in PEFT's names, and merging s·kron(w1, w2) into a weight.
using LoraKernels.Autograd;
using LoraKernels.Families.Kron;

namespace LoraKernels.Layers;

public abstract class LokrLayer<TBase> : MergeableLinear<TBase> where TBase : FrozenLinear
{
    /// <summary>Takes ownership of <paramref name="frozenBase"/>; the derived constructor builds the delta.</summary>
    private protected LokrLayer(TBase frozenBase) : base(frozenBase)
    {
    }

    private protected LokrDelta Delta { get; set; } = null!;

    public int Rank => Delta.Rank;
    public float Alpha => Delta.Alpha;
    public int DecomposeFactor => Delta.DecomposeFactor;
    public bool DecomposeBoth => Delta.DecomposeBoth;

    /// <summary>s = alpha/r (PEFT's, whether or not the factors are low-rank).</summary>
    public float Scale => Delta.Scale;

    /// <summary>The factor shapes: w1 [OutL, InM], w2 [OutK, InN] (a convolution's w2 also spans the window).</summary>
    public (int OutL, int OutK, int InM, int InN) Factors =>
        ((int)Delta.Shape.OutL, (int)Delta.Shape.OutK, (int)Delta.Shape.InM, (int)Delta.Shape.InN);

    /// <summary>lokr_w1 [out_l, in_m], or null when w1 is low-rank.</summary>
    public Parameter? W1 => Delta.W1.Full;
    /// <summary>lokr_w1_a [out_l, r] and lokr_w1_b [r, in_m], or null when w1 is full.</summary>
    public Parameter? W1A => Delta.W1.A;
    public Parameter? W1B => Delta.W1.B;
    /// <summary>lokr_w2, or null when w2 is low-rank.</summary>
    public Parameter? W2 => Delta.W2.Full;
    /// <summary>lokr_w2_a [out_k, r] and lokr_w2_b [r, in_n (·kh·kw)], or null when w2 is full.</summary>
    public Parameter? W2A => Delta.W2.A;
    public Parameter? W2B => Delta.W2.B;

    /// <summary>The trainable parameters: w1's (lokr_w1, or lokr_w1_a then _b), then w2's.</summary>
    public override IEnumerable<Parameter> Parameters() => Delta.Parameters();

    /// <summary>w += sign·s·kron(w1, w2), the factors formed for the call (merge, unmerge, a formed inference weight).</summary>
    private protected override void AddDelta(Tensor w, float sign)
    {
        using FormedFactors factors = Delta.Form();
        Ops.Kron.Merge(w, factors.W1, factors.W2, sign * Scale);
    }
}
