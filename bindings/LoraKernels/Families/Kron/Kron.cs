// The Kronecker op family (LoKr / KronA, REFERENCE.md §5): a linear layer's ΔW = scale·kron(w1, w2) with
// w1 [out_l, in_m], w2 [out_k, in_n], out = out_l·out_k, in = in_m·in_n, applied without ever forming the [out, in]
// product: per token, w1·X·w2ᵀ on the token viewed as X [in_m, in_n] (kernels/kron.cu, native/cpu/kron.cpp). Merge
// forms it into W0 (linear [out, in] or convolution [O, C, kh, kw] weights). PEFT's factorization(d, f) gives the
// factor shapes. Checks every argument, allocates the outputs, then dispatches to the device's kernels.
using LoraKernels.Families.Kron;

namespace LoraKernels.Ops;

public static class Kron
{
    /// <summary>
    /// y = x W0ᵀ + bias + scale·x·kron(w1, w2)ᵀ. x [M, in], W0 [out, in], bias [out] or null, w1 [out_l, in_m],
    /// w2 [out_k, in_n] with out_l·out_k = out and in_m·in_n = in; all of x's dtype and device. Returns y [M, out].
    /// </summary>
    public static Tensor Forward(Tensor x, Tensor w0, Tensor? bias, Tensor w1, Tensor w2, float scale)
    {
        const string op = "Kron.Forward";
        var (m, shape) = CheckLinear(op, x, w0, w1, w2);
        AdapterChecks.Bias(op, bias, new AdapterDims(m, shape.In, shape.Out, 0, w0.DType, w0.Device));
        Checks.Finite(op, nameof(scale), scale);
        AdapterChecks.OutputSize(op, "y", m, shape.Out);
        AdapterChecks.OutputSize(op, "the per-token workspace", m * shape.InM, shape.OutK);
        Tensor y = Tensor.Empty(w0.Device, w0.DType, m, shape.Out);
        try
        {
            IKronKernels.On(w0.Device).Forward(x, w0, bias, w1, w2, shape, scale, y);
            return y;
        }
        catch
        {
            y.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Gradients of <see cref="Forward"/> given dy [M, out] (x's dtype): dx [M, in], dW1 [out_l, in_m] and dW2
    /// [out_k, in_n], each only when requested (null otherwise). Pass the forward's scale.
    /// </summary>
    public static KronGradients Backward(Tensor x, Tensor w0, Tensor w1, Tensor w2, Tensor dy, float scale,
                                                                 bool needDx = true, bool needDW1 = true, bool needDW2 = true)
    {
        const string op = "Kron.Backward";
        var (m, shape) = CheckLinear(op, x, w0, w1, w2);
        Checks.Alive(dy, op, nameof(dy));
        Checks.Shape(op, nameof(dy), dy, "M, out", [m, shape.Out], w0.DType, w0.Device);
        Checks.Finite(op, nameof(scale), scale);
        if (!needDx && !needDW1 && !needDW2) return new(null, null, null);
        Tensor? dx = null, dw1 = null, dw2 = null;
        try
        {
            if (needDx) dx = Tensor.Empty(w0.Device, w0.DType, m, shape.In);
            if (needDW1) dw1 = Tensor.Empty(w0.Device, w0.DType, shape.OutL, shape.InM);
            if (needDW2) dw2 = Tensor.Empty(w0.Device, w0.DType, shape.OutK, shape.InN);
            IKronKernels.On(w0.Device).Backward(x, w0, w1, w2, dy, shape, scale, dx, dw1, dw2);
            return new(dx, dw1, dw2);
        }
        catch
        {
            Checks.DisposeAll(dx, dw1, dw2);
            throw;
        }
    }

    /// <summary>
    /// W0 += scale·kron(w1, w2) in place: a linear weight [out, in] with w2 [out_k, in_n], or a convolution weight
    /// [O, C, kh, kw] with w2 [out_k, in_n, kh, kw] (w1 [out_l, in_m] acts on the channels, as PEFT's make_kron).
    /// </summary>
    public static void Merge(Tensor w0, Tensor w1, Tensor w2, float scale) => MergeScaled("Kron.Merge", w0, w1, w2, scale);

    /// <summary>W0 -= scale·kron(w1, w2) in place: undoes <see cref="Merge"/> up to rounding.</summary>
    public static void Unmerge(Tensor w0, Tensor w1, Tensor w2, float scale) => MergeScaled("Kron.Unmerge", w0, w1, w2, -scale);

    /// <summary>
    /// PEFT's factorization(d, f) (REFERENCE.md §5.2, LyCORIS' code): (f, d/f) when f &gt; 0 divides d (in that order,
    /// even when f &gt; d/f); otherwise the divisor pair (m ≤ n) nearest √d among divisors m ≤ f (f = -1: no limit;
    /// any other f ≤ 0 leaves (1, d)).
    /// </summary>
    public static (long M, long N) Factorization(long dimension, int factor = -1)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(dimension, 1);
        if (factor > 0 && dimension % factor == 0) return (factor, dimension / factor);
        long limit = factor == -1 ? dimension : factor;
        long m = 1, n = dimension, length = m + n;
        while (m < n)
        {
            long next = m + 1;
            while (dimension % next != 0) next++;
            long nextN = dimension / next;
            if (next + nextN > length || next > limit) break;
            m = next;
            n = nextN;
        }
        return m > n ? (n, m) : (m, n);
    }

    private static void MergeScaled(string op, Tensor w0, Tensor w1, Tensor w2, float signedScale)
    {
        Checks.Alive(w0, op, nameof(w0));
        Checks.Finite(op, "scale", signedScale);
        if (w0.Rank != 2 && w0.Rank != 4 || w0.ElementCount < 1)
            throw new ArgumentException($"{op}: w0 must be a linear weight [out, in] or a convolution weight [O, C, kh, kw], got {w0.Describe()}", nameof(w0));
        Checks.Size(op, nameof(w0), w0);
        long spatial = w0.Rank == 4 ? w0.Shape[2] * w0.Shape[3] : 1;
        KronShape shape = CheckFactors(op, w0.Shape[0], w0.Shape[1], w0, w1, w2);
        if (w0.Rank == 4 && (w2.Rank != 4 || w2.Shape[2] != w0.Shape[2] || w2.Shape[3] != w0.Shape[3]))
            throw new ArgumentException($"{op}: for a convolution weight {w0.Describe()}, w2 must be [out_k, in_n, kh, kw] = [{shape.OutK}, {shape.InN}, {w0.Shape[2]}, {w0.Shape[3]}], got {w2.Describe()}", nameof(w2));
        IKronKernels.On(w0.Device).Merge(w0, w1, w2, shape, spatial, signedScale);
    }

    /// <summary>x [M, in] against W0 [out, in], then the factors; returns M and the factor shapes.</summary>
    private static (long M, KronShape Shape) CheckLinear(string op, Tensor x, Tensor w0, Tensor w1, Tensor w2)
    {
        Checks.Alive(w0, op, nameof(w0));
        (long outFeatures, long inFeatures) = Checks.Matrix(op, nameof(w0), w0, "out, in");
        long m = AdapterChecks.Activations(op, x, inFeatures, w0.DType, w0.Device, "w0");
        KronShape shape = CheckFactors(op, outFeatures, inFeatures, w0, w1, w2);
        if (w2.Rank != 2)
            throw new ArgumentException($"{op}: w2 must be [out_k, in_n] for a linear layer, got {w2.Describe()}", nameof(w2));
        return (m, shape);
    }

    /// <summary>
    /// w1 [out_l, in_m] and w2 [out_k, in_n (, kh, kw)] with out_l·out_k = <paramref name="outFeatures"/> and
    /// in_m·in_n = <paramref name="inFeatures"/>, W0's dtype and device: the factors must tile W0 exactly.
    /// </summary>
    private static KronShape CheckFactors(string op, long outFeatures, long inFeatures, Tensor w0, Tensor w1, Tensor w2)
    {
        Checks.Alive(w1, op, nameof(w1));
        Checks.Alive(w2, op, nameof(w2));
        if (w1.Rank != 2 || w1.ElementCount < 1 || w1.DType != w0.DType || !ReferenceEquals(w1.Device, w0.Device))
            throw new ArgumentException($"{op}: w1 must be a matrix [out_l, in_m] with dtype {w0.DType} on {w0.Device}, got {w1.Describe()}", nameof(w1));
        if ((w2.Rank != 2 && w2.Rank != 4) || w2.ElementCount < 1 || w2.DType != w0.DType || !ReferenceEquals(w2.Device, w0.Device))
            throw new ArgumentException($"{op}: w2 must be [out_k, in_n] (or [out_k, in_n, kh, kw] for a convolution) with dtype {w0.DType} on {w0.Device}, got {w2.Describe()}", nameof(w2));
        var shape = new KronShape(w1.Shape[0], w2.Shape[0], w1.Shape[1], w2.Shape[1]);
        if (shape.Out != outFeatures || shape.In != inFeatures)
            throw new ArgumentException(
                $"{op}: w1 {w1.Describe()} and w2 {w2.Describe()} give kron(w1, w2) of [{shape.Out}, {shape.In}], but w0 is {w0.Describe()}: " +
                $"the factors must divide it exactly (out = out_l·out_k = {outFeatures}, in = in_m·in_n = {inFeatures}; Kron.Factorization gives PEFT's choice).",
                shape.Out != outFeatures ? nameof(w1) : nameof(w2));
        Checks.Size(op, nameof(w1), w1);
        Checks.Size(op, nameof(w2), w2);
        return shape;
    }
}
