// The Kronecker delta ΔW = s·kron(w1, w2) that LokrLinear and LokrConv2d add to their frozen base, built as PEFT's
// LoKrLayer.update_layer builds it (REFERENCE.md §5): (in_m, in_n) = factorization(in, f), (out_l, out_k) =
// factorization(out, f) with f = decompose_factor; w1 [out_l, in_m] is full unless decompose_both and
// r < max(out_l, in_m)/2 (then w1_a [out_l, r]·w1_b [r, in_m]); w2 [out_k, in_n (, kh, kw)] is full when
// r ≥ max(out_k, in_n)/2, else w2_a [out_k, r]·w2_b [r, in_n (·kh·kw)]; s = alpha/r in every case. Initialisation
// as PEFT's init_weights: Default (True) w1 = 0 (or w1_a = 0) and the rest kaiming-uniform, so ΔW = 0; Lycoris
// w2 = 0 (or w2_b = 0) and the rest kaiming; Random all kaiming (ΔW ≠ 0). Kaiming draws come from SplitMix64(seed),
// w1's pieces first, then w2's. Kept in one place so both layers build identical deltas from equal arguments.
using LoraKernels.Autograd;
using LoraKernels.Families.Conv;
using LoraKernels.Runtime;

namespace LoraKernels.Families.Kron;

internal sealed class LokrDelta : IDisposable
{
    /// <summary>
    /// The delta of a [out, in] linear weight (<paramref name="kernel"/> null) or of a convolution weight
    /// [out, in, kh, kw] (kernel (kh, kw): w2 then has the window's extents too). Call <see cref="CheckArguments"/> first.
    /// </summary>
    public LokrDelta(Device device, DType dtype, long outFeatures, long inFeatures, (long H, long W)? kernel, int r, float alpha,
                     int decomposeFactor, bool decomposeBoth, Layers.LokrInit init, ulong seed)
    {
        Rank = r;
        Alpha = alpha;
        DecomposeFactor = decomposeFactor;
        DecomposeBoth = decomposeBoth;
        Scale = alpha / r;
        var (inM, inN) = Ops.Kron.Factorization(inFeatures, decomposeFactor);
        var (outL, outK) = Ops.Kron.Factorization(outFeatures, decomposeFactor);
        Shape = new KronShape(outL, outK, inM, inN);
        long taps = kernel is { } k ? k.H * k.W : 1;
        var generator = new SplitMix64(seed);
        Tensor Kaiming(long rows, long cols, long[] shape) =>
            Tensor.FromArray(device, KaimingUniform.Draw(generator, rows * cols, cols), dtype, shape);
        Tensor Zero(long[] shape) => Tensor.Zeros(device, dtype, shape);
        bool zeroW1 = init == Layers.LokrInit.Default, zeroW2 = init == Layers.LokrInit.Lycoris;

        W1 = UsesFullW1(outL, inM, r, decomposeBoth)
            ? KronFactor.Dense("lokr_w1", zeroW1 ? Zero([outL, inM]) : Kaiming(outL, inM, [outL, inM]))
            : KronFactor.LowRank("lokr_w1_a", zeroW1 ? Zero([outL, r]) : Kaiming(outL, r, [outL, r]),
                                 "lokr_w1_b", Kaiming(r, inM, [r, inM]), [outL, inM]);
        try
        {
            long[] w2Shape = kernel is { } window ? [outK, inN, window.H, window.W] : [outK, inN];
            W2 = UsesFullW2(outK, inN, r)
                ? KronFactor.Dense("lokr_w2", zeroW2 ? Zero(w2Shape) : Kaiming(outK, inN * taps, w2Shape))
                : KronFactor.LowRank("lokr_w2_a", Kaiming(outK, r, [outK, r]),
                                     "lokr_w2_b", zeroW2 ? Zero([r, inN * taps]) : Kaiming(r, inN * taps, [r, inN * taps]), w2Shape);
        }
        catch
        {
            W1.Dispose();
            throw;
        }
    }

    public int Rank { get; }
    public float Alpha { get; }
    public int DecomposeFactor { get; }
    public bool DecomposeBoth { get; }

    /// <summary>s = alpha/r (PEFT uses alpha/r whether or not the factors are low-rank).</summary>
    public float Scale { get; }

    public KronShape Shape { get; }
    public KronFactor W1 { get; }
    public KronFactor W2 { get; }

    /// <summary>The trainable parameters: w1's (lokr_w1, or lokr_w1_a and _b), then w2's.</summary>
    public IEnumerable<Parameter> Parameters() => W1.Parameters().Concat(W2.Parameters());

    /// <summary>Both factors dense for one call (low-rank ones formed into temporaries the result owns).</summary>
    public FormedFactors Form()
    {
        var (w1, owned1) = W1.Form();
        try
        {
            var (w2, owned2) = W2.Form();
            return new FormedFactors(w1, owned1, w2, owned2);
        }
        catch
        {
            if (owned1) w1.Dispose();
            throw;
        }
    }

    /// <summary>Whether the tape wants a gradient of any of w1's parameters (they come first in <see cref="Parameters"/>).</summary>
    public bool NeedsW1(BackwardContext g) => Enumerable.Range(0, W1.Parameters().Count()).Any(g.NeedsParameter);

    /// <summary>Whether the tape wants a gradient of any of w2's parameters.</summary>
    public bool NeedsW2(BackwardContext g)
    {
        int first = W1.Parameters().Count();
        return Enumerable.Range(first, W2.Parameters().Count()).Any(g.NeedsParameter);
    }

    /// <summary>The parameters' gradients, in <see cref="Parameters"/>' order, from the dense factors' gradients (taken).</summary>
    public Tensor?[] ParameterGradients(Tensor? dw1, Tensor? dw2, BackwardContext g)
    {
        int first = W1.Parameters().Count();
        Tensor?[] grads1 = W1.Gradients(dw1, g.NeedsParameter);
        try
        {
            return [.. grads1, .. W2.Gradients(dw2, i => g.NeedsParameter(first + i))];
        }
        catch
        {
            Ops.Checks.DisposeAll(grads1);
            throw;
        }
    }

    /// <summary>PEFT's use_w1: full unless decompose_both and r &lt; max(out_l, in_m)/2.</summary>
    public static bool UsesFullW1(long outL, long inM, long r, bool decomposeBoth) => !(decomposeBoth && r < Math.Max(outL, inM) / 2.0);

    /// <summary>PEFT's use_w2: full when r ≥ max(out_k, in_n)/2.</summary>
    public static bool UsesFullW2(long outK, long inN, long r) => r >= Math.Max(outK, inN) / 2.0;

    /// <summary>Throws unless r ≥ 1, alpha is finite and decompose_factor is -1 or positive.</summary>
    public static void CheckArguments(string op, int r, float alpha, int decomposeFactor)
    {
        if (r < 1) throw new ArgumentOutOfRangeException(nameof(r), r, $"{op}: the rank r must be >= 1.");
        if (!float.IsFinite(alpha)) throw new ArgumentOutOfRangeException(nameof(alpha), alpha, $"{op}: alpha must be finite.");
        if (decomposeFactor != -1 && decomposeFactor < 1)
            throw new ArgumentOutOfRangeException(nameof(decomposeFactor), decomposeFactor, $"{op}: decompose_factor must be -1 (nearest √d) or a positive factor.");
    }

    public void Dispose()
    {
        W1.Dispose();
        W2.Dispose();
    }
}

/// <summary>
/// The dense w1 and w2 of one call. Dispose frees the ones formed from low-rank pieces (a full factor is the
/// parameter's own tensor); <see cref="TakeFormed"/> hands those to a tape instead.
/// </summary>
internal sealed class FormedFactors(Tensor w1, bool owned1, Tensor w2, bool owned2) : IDisposable
{
    private bool _owned1 = owned1, _owned2 = owned2;

    public Tensor W1 { get; } = w1;
    public Tensor W2 { get; } = w2;

    /// <summary>The formed temporaries, whose ownership passes to the caller (this object then frees nothing).</summary>
    public Tensor[] TakeFormed()
    {
        Tensor[] formed = [.. new[] { (W1, _owned1), (W2, _owned2) }.Where(f => f.Item2).Select(f => f.Item1)];
        _owned1 = _owned2 = false;
        return formed;
    }

    public void Dispose()
    {
        if (_owned1) W1.Dispose();
        if (_owned2) W2.Dispose();
        _owned1 = _owned2 = false;
    }
}
