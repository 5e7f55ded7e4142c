namespace LoraKernels.Tests.Dora;

/// <summary>
/// Double-precision DoRA, written out here (it never calls the library): the materialised weight
/// norm ‖W0 + s·B·A‖_row, the forward y = (m/n) ⊙ (x W0ᵀ + s·(x Aᵀ) Bᵀ) + bias and its gradient with
/// n held constant (detached, as PEFT). Each result comes with the same computation on absolute
/// values (Σ|terms|), which the tolerance formulas scale with.
/// </summary>
internal static class DoraReference
{
    /// <summary>Materialised ‖W0 + s·B·A‖_row, and Σ_k (|w| + s·Σ_a|B||A|)² square-rooted (the norm's term magnitude).</summary>
    public static (double[] Norm, double[] Magnitude) WeightNorm(int outFeatures, int inFeatures, int r, float[] w0, float[] a,
                                                                 float[] b, double s)
    {
        var norm = new double[outFeatures];
        var magnitude = new double[outFeatures];
        for (int i = 0; i < outFeatures; i++)
        {
            double sum = 0, sumAbs = 0;
            for (int k = 0; k < inFeatures; k++)
            {
                double w = w0[i * inFeatures + k], wAbs = Math.Abs(w);
                for (int t = 0; t < r; t++)
                {
                    w += s * b[i * r + t] * a[t * inFeatures + k];
                    wAbs += Math.Abs(s * b[i * r + t] * a[t * inFeatures + k]);
                }
                sum += w * w;
                sumAbs += wAbs * wAbs;
            }
            norm[i] = Math.Sqrt(sum);
            magnitude[i] = Math.Sqrt(sumAbs);
        }
        return (norm, magnitude);
    }

    /// <summary>
    /// The norm's bound, relative to the true norm n (native/include/lora_kernels_dora.h's claim, the same on
    /// every backend): a row the expansion keeps is certified within τ·n (τ = 1e-4); a row recomputed directly
    /// errs by at most (r + 2)·2⁻⁵³·‖μ‖, μ_k = |w_k| + s·Σ_a |B_a·A_ak| (<paramref name="magnitude"/>), plus
    /// in·2⁻⁵³·n for its double sum of squares; the result is rounded to fp32 (2⁻²⁴·n). This double reference
    /// errs by another (r + 2)·2⁻⁵³·‖μ‖ (w + s·Σ B·A formed in double too). So
    /// |n_device − n_ref| ≤ (τ + 2·2⁻²⁴)·n_ref + (r + 2)·2⁻⁵¹·‖μ‖: relative for every n_ref above ~2⁻⁴⁵·‖μ‖,
    /// and for an exactly cancelling row (n_ref = 0 from integer-valued inputs) it demands 0 within 1e-13·‖μ‖.
    /// </summary>
    public const double NormTolerance = 1e-4;

    public static double[] NormBounds(double[] norm, double[] magnitude, int r)
    {
        var bounds = new double[norm.Length];
        for (int i = 0; i < norm.Length; i++)
            bounds[i] = (NormTolerance + 2 * Tolerance.Fp32Unit) * norm[i] + (r + 2) * Math.ScaleB(1.0, -51) * magnitude[i];
        return bounds;
    }

    /// <summary>
    /// Rows that cancel to <paramref name="depth"/> = n_i / ‖W0_i‖ (0: exactly), rows 0 (mod 2) of an [out, in] W0
    /// (the other rows random), every input rounded to <paramref name="dtype"/> (the reference sees the same values).
    /// Generic (F32 only): A, B random, W0_i = fl(−s·B_i·A·(1 + δ·noise)), so n_i / ‖W0_i‖ ≈ δ/√3 (at δ = 0 W0's own
    /// rounding, ~2⁻²⁴/√3). Structured (F32 and BF16): A in {−2..2} with every 8th column 0, B in {−2..2}/4, s = 1/2,
    /// so s·B_i·A is a multiple of 1/8 below 2⁷, exact in bf16; W0_i = −s·B_i·A + e_i with e_i only on A's zero
    /// columns and ‖e_i‖ = δ·‖s·B_i·A‖, so n_i = ‖e_i‖ exactly, at any depth, and 0 for δ = 0.
    /// </summary>
    public static (float[] W0, float[] A, float[] B, float Scale) CancellingRows(DType dtype, double depth, int outFeatures,
                                                                               int inFeatures, int r, bool structured)
    {
        var data = new TestData(TestData.SeedFor($"dora-cancel{dtype}{depth}{r}{structured}"));
        float scale = structured ? 0.5f : 1.25f;
        float[] a, b;
        if (structured)
        {
            a = new float[r * inFeatures];
            b = new float[outFeatures * r];
            for (int i = 0; i < a.Length; i++) a[i] = i % inFeatures % 8 == 0 ? 0f : (float)Math.Floor(data.NextDouble() * 5) - 2;
            for (int i = 0; i < b.Length; i++) b[i] = ((float)Math.Floor(data.NextDouble() * 5) - 2) / 4;
            b[0] = 1f;  // row 0's B is never all zero
        }
        else
        {
            a = data.NonZero(r * inFeatures);
            b = data.NonZero(outFeatures * r);
        }
        float[] w0 = data.NonZero(outFeatures * inFeatures);
        float[] noise = data.NonZero(outFeatures * inFeatures);
        for (int i = 0; i < outFeatures; i += 2)
        {
            var sba = new double[inFeatures];
            double sbaNorm2 = 0, eNorm2 = 0;
            for (int k = 0; k < inFeatures; k++)
            {
                double ba = 0;
                for (int t = 0; t < r; t++) ba += (double)b[i * r + t] * a[t * inFeatures + k];
                sba[k] = scale * ba;
                sbaNorm2 += sba[k] * sba[k];
                if (k % 8 == 0) eNorm2 += (double)noise[i * inFeatures + k] * noise[i * inFeatures + k];
            }
            double eScale = depth * Math.Sqrt(sbaNorm2 / eNorm2);
            for (int k = 0; k < inFeatures; k++)
                w0[i * inFeatures + k] = structured
                    ? (float)(-sba[k] + (k % 8 == 0 ? eScale * noise[i * inFeatures + k] : 0))
                    : (float)(-sba[k] * (1 + depth * noise[i * inFeatures + k]));
        }
        return (Reference.RoundTo(dtype, w0), Reference.RoundTo(dtype, a), Reference.RoundTo(dtype, b), scale);
    }

    public sealed record Step(double[] U, double[] Z, double[] Y, double[] Dx, double[] DA, double[] DB, double[] DM);

    /// <summary>One forward and backward; <paramref name="abs"/> runs it on absolute values (the bounds' Σ|terms|).</summary>
    public static Step Run(int m, int inFeatures, int outFeatures, int r, float[] x, float[] w0, float[]? bias, float[] a,
                           float[] b, double s, float[] magnitude, float[] norm, float[] dy, bool abs = false)
    {
        double V(float v) => abs ? Math.Abs(v) : v;
        var u = new double[m * r];
        var z = new double[m * outFeatures];
        var y = new double[m * outFeatures];
        var dz = new double[m * outFeatures];
        var du = new double[m * r];
        var dx = new double[m * inFeatures];
        var dA = new double[r * inFeatures];
        var dB = new double[outFeatures * r];
        var dm = new double[outFeatures];
        for (int t = 0; t < m; t++)
            for (int j = 0; j < r; j++)
                for (int k = 0; k < inFeatures; k++) u[t * r + j] += V(x[t * inFeatures + k]) * V(a[j * inFeatures + k]);
        for (int t = 0; t < m; t++)
            for (int o = 0; o < outFeatures; o++)
            {
                double sum = 0;
                for (int k = 0; k < inFeatures; k++) sum += V(x[t * inFeatures + k]) * V(w0[o * inFeatures + k]);
                for (int j = 0; j < r; j++) sum += s * u[t * r + j] * V(b[o * r + j]);
                double g = magnitude[o] / (double)norm[o];
                int e = t * outFeatures + o;
                z[e] = sum;
                y[e] = g * sum + (bias is null ? 0 : V(bias[o]));
                dm[o] += V(dy[e]) * sum / norm[o];
                dz[e] = V(dy[e]) * g;
            }
        for (int t = 0; t < m; t++)
            for (int j = 0; j < r; j++)
            {
                for (int o = 0; o < outFeatures; o++) du[t * r + j] += dz[t * outFeatures + o] * V(b[o * r + j]);
                du[t * r + j] *= s;
            }
        for (int t = 0; t < m; t++)
            for (int k = 0; k < inFeatures; k++)
            {
                double sum = 0;
                for (int o = 0; o < outFeatures; o++) sum += dz[t * outFeatures + o] * V(w0[o * inFeatures + k]);
                for (int j = 0; j < r; j++) sum += du[t * r + j] * V(a[j * inFeatures + k]);
                dx[t * inFeatures + k] = sum;
            }
        for (int j = 0; j < r; j++)
            for (int k = 0; k < inFeatures; k++)
                for (int t = 0; t < m; t++) dA[j * inFeatures + k] += du[t * r + j] * V(x[t * inFeatures + k]);
        for (int o = 0; o < outFeatures; o++)
            for (int j = 0; j < r; j++)
            {
                for (int t = 0; t < m; t++) dB[o * r + j] += dz[t * outFeatures + o] * u[t * r + j];
                dB[o * r + j] *= s;
            }
        return new Step(u, z, y, dx, dA, dB, dm);
    }
}
