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
    /// The norm's bound: the kernels' n² errs by E ≤ 4·(in + 2r + 2)·2⁻²⁴·mag² (fp32 GEMMs of length
    /// in for W0 Aᵀ and A Aᵀ, r-long combinations, fp32 ‖w‖²); as |a − b| = |a² − b²| / (a + b),
    /// |n − n_ref| ≤ min(√E, E / n_ref) + 2·2⁻²⁴·n_ref + 1e-6.
    /// </summary>
    public static double[] NormBounds(double[] norm, double[] magnitude, int inFeatures, int r)
    {
        var bounds = new double[norm.Length];
        for (int i = 0; i < norm.Length; i++)
        {
            double e = 4.0 * (inFeatures + 2.0 * r + 2.0) * Tolerance.Fp32Unit * magnitude[i] * magnitude[i];
            double relative = norm[i] > 0 ? e / norm[i] : double.PositiveInfinity;
            bounds[i] = Math.Min(Math.Sqrt(e), relative) + 2 * Tolerance.Fp32Unit * norm[i] + Tolerance.Atol;
        }
        return bounds;
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
