// A linear layer with a Kronecker adapter, as PEFT's lokr.Linear (REFERENCE.md §5):
//   y = x W0ᵀ + bias + s·x·kron(w1, w2)ᵀ,   s = alpha/r,
// with PEFT's factor shapes, low-rank rules and initialisation (LokrDelta). A dense frozen base (DenseLinear) ×
// the Kronecker delta; the [out, in] product is never formed by the forward or the backward (Ops.Kron: per token
// w1·X·w2ᵀ), only by Merge, which adds it to W0. rank_dropout and module_dropout (PEFT's defaults 0) are not
// implemented: in eval mode PEFT does not apply them either, so adapters that set them load and run exactly.
using LoraKernels.Autograd;
using LoraKernels.Families.Kron;

namespace LoraKernels.Layers;

/// <summary>PEFT's LoKrConfig.init_weights: Default (True), Lycoris ("lycoris"), Random (False).</summary>
public enum LokrInit
{
    /// <summary>w1 (or w1_a) = 0, the rest kaiming-uniform: ΔW = 0, a new layer computes the base layer.</summary>
    Default,
    /// <summary>w2 (or w2_b) = 0, the rest kaiming-uniform (LyCORIS' own init): ΔW = 0.</summary>
    Lycoris,
    /// <summary>Every factor kaiming-uniform: ΔW ≠ 0 (for tests and debugging).</summary>
    Random,
}

public sealed class LokrLinear : LokrLayer<DenseLinear>
{

    /// <summary>
    /// Wraps <paramref name="w0"/> [out, in] (and <paramref name="bias"/> [out]), copied to <paramref name="device"/> in
    /// <paramref name="dtype"/>. <paramref name="decomposeFactor"/> and <paramref name="decomposeBoth"/> are PEFT's
    /// decompose_factor and decompose_both; the factor shapes follow Kron.Factorization.
    /// </summary>
    public LokrLinear(Device device, Tensor w0, Tensor? bias, int r, float alpha, int decomposeFactor = -1, bool decomposeBoth = false,
                      LokrInit init = LokrInit.Default, ulong seed = 0, DType dtype = DType.F32)
        : base(DenseLinear.Create("LokrLinear", device, w0, bias, dtype,
                                  (_, _) => LokrDelta.CheckArguments("LokrLinear", r, alpha, decomposeFactor)))
    {
        Delta = Create(() => new LokrDelta(device, dtype, OutFeatures, InFeatures, null, r, alpha, decomposeFactor, decomposeBoth, init, seed));
    }

    /// <summary>The frozen base weight [out, in] (holding W0 + ΔW while merged).</summary>
    public Tensor W0 => Base.Weight;


    public override Tensor Forward(Tensor x)
    {
        ThrowIfDisposed();
        using FormedFactors factors = Delta.Form();
        // Merged: W0 already holds ΔW, and a zero scale leaves x W0ᵀ + bias (the kernels skip the adapter).
        return Ops.Kron.Forward(x, W0, Bias, factors.W1, factors.W2, Merged ? 0f : Scale);
    }


    /// <summary>Ops.Kron's forward on the formed factors, recorded with a backward that splits the factor gradients back to the parameters.</summary>
    private protected override Variable Record(Tape tape, Variable x)
    {
        ThrowIfMerged();
        float scale = Scale;
        Tensor w0 = W0;
        LokrDelta delta = Delta;
        using FormedFactors factors = delta.Form();
        Tensor w1 = factors.W1, w2 = factors.W2;
        Tensor y = Ops.Kron.Forward(x.Value, w0, Bias, w1, w2, scale);
        return tape.Record(y, [x], [.. delta.Parameters()], g =>
        {
            var (dx, dw1, dw2) = Ops.Kron.Backward(x.Value, w0, w1, w2, g.OutputGradient, scale, g.NeedsInput(0),
                                                   delta.NeedsW1(g), delta.NeedsW2(g));
            return new Gradients([dx], delta.ParameterGradients(dw1, dw2, g));
        }, factors.TakeFormed());
    }

    private protected override Tensor MergeTarget => W0;
}
