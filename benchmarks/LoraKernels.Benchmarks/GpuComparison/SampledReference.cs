namespace LoraKernels.Benchmarks.GpuComparison;

/// <summary>
/// Checks a timed case's output against the CPU before its time is reported: selected rows of a
/// product out[i, j] = Σ_k term(i, j, k), recomputed in double on the host (all cores) with the sum of
/// |term| beside it. At training sizes a full CPU reference would take minutes; a few rows, first,
/// middle and last, catch a wrong layout, tile or transpose as surely. The bound,
/// 2⁻⁸·|ref| + 2⁻⁶·Σ|term| + 1e-6, admits every rounding the bf16 paths make (outputs, bf16 u and du,
/// a 4-bit weight's bf16 staging) and nothing of the O(Σ|term|) a wrong element costs; ulp-level
/// agreement is the parity tests' job.
/// </summary>
internal static class SampledReference
{
    public const double BoundRelative = 1.0 / 256, BoundTerms = 1.0 / 64, BoundAbsolute = 1e-6;

    /// <summary>Row indices to check among <paramref name="rows"/>: first, middle, last (distinct).</summary>
    public static int[] Rows(int rows) => new[] { 0, rows / 2, rows - 1 }.Distinct().ToArray();

    /// <summary>
    /// The largest |got - ref| / bound over the sampled rows, where got[i·columns + j] is the device's value
    /// and term(i, j, k) for k in [0, K) the products that make it. Above 1 means the output is wrong.
    /// </summary>
    public static double WorstRatio(float[] got, int columns, int[] rows, int reduction, Func<int, int, int, double> term)
    {
        double worst = 0;
        object gate = new();
        foreach (int i in rows)
            Parallel.For(0, columns, () => 0.0, (j, _, local) =>
            {
                double sum = 0, abs = 0;
                for (int k = 0; k < reduction; k++)
                {
                    double t = term(i, j, k);
                    sum += t;
                    abs += Math.Abs(t);
                }
                double bound = BoundRelative * Math.Abs(sum) + BoundTerms * abs + BoundAbsolute;
                double ratio = Math.Abs(got[(long)i * columns + j] - sum) / bound;
                return double.IsNaN(ratio) ? double.PositiveInfinity : Math.Max(local, ratio);
            }, local => { lock (gate) worst = Math.Max(worst, local); });
        return worst;
    }
}
