namespace LoraKernels.Tests.Support;

/// <summary>
/// The error bounds of the parity tests. Every kernel accumulates in fp32 (DESIGN.md, Numerics),
/// so for an output that sums K products (through a chain of reductions, K is the total length)
///
///     |device - reference| ≤ Atol + Factor·K·2⁻²⁴·Σ|terms| + εout·|reference|
///
/// where the second term is the textbook worst case of K fp32 roundings (γ_K ≈ K·u, u = 2⁻²⁴,
/// times a factor 2 for FMA versus separate rounding and any summation order), and εout is the
/// rounding of the stored result: 0 for F32 (already in the first term), 2⁻⁸ for BF16 (twice bf16's
/// unit roundoff 2⁻⁹, for a result rounded from a value that already carries the fp32 error).
/// Intermediates (u, du) are fp32 on every backend (kernels/lora.cu stages bf16 operands as fp32),
/// so no bf16 rounding is allowed for them. Inputs are rounded through bf16 before the reference
/// sees them, so no input error is counted either.
/// </summary>
internal static class Tolerance
{
    public const double Fp32Unit = 1.0 / (1 << 24);
    public const double Bf16Rounding = 1.0 / (1 << 8);
    /// <summary>Absolute floor, for outputs whose terms nearly cancel; test values are O(0.1..10), so it hides no real error.</summary>
    public const double Atol = 1e-6;
    public const double Factor = 2.0;

    /// <summary>
    /// 2⁻⁹: one factor of every term rounded to the nearest bf16. The 4-bit tensor-core kernels (BF16
    /// activations on sm_80+, and the emulator) round each deq(W) to bf16 as they stage it, as
    /// bitsandbytes' dequantize-then-matmul with a bf16 compute dtype does; the fp32 kernels keep deq(W)
    /// in fp32. A product through deq(W) may then differ by up to 2⁻⁹·Σ|terms| more.
    /// </summary>
    public const double Bf16TermRounding = 1.0 / (1 << 9);

    public static double OutputRounding(DType dtype) => dtype == DType.BF16 ? Bf16Rounding : 0.0;

    /// <summary><see cref="Bounds"/> for a product through a 4-bit weight: plus 2⁻⁹·abs[i] for BF16 (<see cref="Bf16TermRounding"/>).</summary>
    public static double[] QuantizedBaseBounds(double[] reference, double[] abs, int reductionLength, DType outputDtype)
    {
        double[] bounds = Bounds(reference, abs, reductionLength, outputDtype);
        if (outputDtype == DType.BF16)
            for (int i = 0; i < bounds.Length; i++) bounds[i] += Bf16TermRounding * abs[i];
        return bounds;
    }

    /// <summary>The bound per element: Atol + Factor·K·2⁻²⁴·abs[i] + εout·|reference[i]|.</summary>
    public static double[] Bounds(double[] reference, double[] abs, int reductionLength, DType outputDtype)
    {
        var bounds = new double[reference.Length];
        double outputRounding = OutputRounding(outputDtype);
        for (int i = 0; i < bounds.Length; i++)
            bounds[i] = Atol + Factor * reductionLength * Fp32Unit * abs[i] + outputRounding * Math.Abs(reference[i]);
        return bounds;
    }
}
