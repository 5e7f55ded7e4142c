namespace LoraKernels.Tests.Support;

/// <summary>
/// A double-precision reference value with its magnitude M, the generalisation of Σ|terms| that the
/// tolerances scale with (Tolerance.Bounds) to composite ops (routing weights, activations, scans): M bounds,
/// to first order, how far an fp32 computation of the value can drift per unit of roundoff, so a device
/// result within Atol + Factor·K·2⁻²⁴·M (K the longest chain) is as good as fp32 allows.
///   leaf x:            M = |x|
///   w·a (w exact):     M = |w|·M_a                      (Σ of such terms: Σ|w|·M_a, Σ|terms| for leaves)
///   a·b:               M = |a|·M_b + M_a·|b|             (first-order propagation of both errors)
///   f(a):              M = |f'(a)|·M_a + |f(a)|          (the argument's error, plus f's own few ulps)
/// M ≥ |value| always, so a bound from it never vanishes where the value does not.
/// </summary>
public readonly record struct Tracked(double Value, double Magnitude)
{
    public static Tracked Leaf(double value) => new(value, Math.Abs(value));
    public static readonly Tracked Zero = new(0, 0);

    public static Tracked operator +(Tracked a, Tracked b) => new(a.Value + b.Value, a.Magnitude + b.Magnitude);
    public static Tracked operator -(Tracked a, Tracked b) => new(a.Value - b.Value, a.Magnitude + b.Magnitude);
    public static Tracked operator *(double w, Tracked a) => new(w * a.Value, Math.Abs(w) * a.Magnitude);
    public static Tracked operator *(Tracked a, Tracked b) =>
        new(a.Value * b.Value, Math.Abs(a.Value) * b.Magnitude + a.Magnitude * Math.Abs(b.Value));

    /// <summary>f(a) with derivative <paramref name="slope"/> = f'(a.Value).</summary>
    public Tracked Apply(double value, double slope) => new(value, Math.Abs(slope) * Magnitude + Math.Abs(value));

    public static double[] Values(Tracked[] t) => Array.ConvertAll(t, v => v.Value);
    public static double[] Magnitudes(Tracked[] t) => Array.ConvertAll(t, v => v.Magnitude);
    public static Tracked[] Leaves(float[] values) => Array.ConvertAll(values, v => Leaf(v));

    /// <summary>The device bound of every element: Tolerance.Bounds over the values and magnitudes.</summary>
    public static double[] Bounds(Tracked[] t, int chain, DType dtype = DType.F32) => Tolerance.Bounds(Values(t), Magnitudes(t), chain, dtype);
}
