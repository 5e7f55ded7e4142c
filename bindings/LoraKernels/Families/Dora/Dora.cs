// The DoRA op family (REFERENCE.md §2, PEFT's DoraLinearLayer): magnitude m [out], weight norm
// n = ‖W0 + s·B·A‖_row (detached: no gradient flows through it), g = m / n and
//   y = g ⊙ (x W0ᵀ + s·(x Aᵀ) Bᵀ) + bias.
// The norm is computed from ‖W0‖²_row without forming B·A (REFERENCE.md §11), accurate relative to
// the true norm on every row, cancelling ones included (native/include/lora_kernels_dora.h). A row
// whose norm is exactly 0 makes m/n undefined: PEFT divides anyway and returns Inf or NaN; these ops
// refuse it (ArithmeticException naming the rows) rather than return Inf (docs/DECISIONS.md). Checks every
// argument, allocates the outputs, then dispatches to the device's backend (native CPU kernels or
// kernels/dora.cu composed with kernels/lora.cu). Dropout is not part of these ops: PEFT's DoRA
// with dropout > 0 in training needs a second base product on dropout(x) (Dora.Dropout.cs); the
// quantized base (QDoRA) is in Dora.Quantized.cs.
using LoraKernels.Families.Dora;

namespace LoraKernels.Ops;

public static partial class Dora
{

    /// <summary>‖W0‖² per row: w0 [out, in] (F32 or BF16) gives F32 [out]. Compute it once per frozen W0.</summary>
    public static Tensor RowSquaredNorm(Tensor w0)
    {
        const string op = "Dora.RowSquaredNorm";
        Checks.Alive(w0, op, nameof(w0));
        (long outFeatures, _) = Checks.Matrix(op, nameof(w0), w0, "out, in");
        Tensor sqnorm = Tensor.Empty(w0.Device, DType.F32, outFeatures);
        try
        {
            IDoraKernels.On(w0.Device).RowSquaredNorm(w0, sqnorm);
            return sqnorm;
        }
        catch
        {
            sqnorm.Dispose();
            throw;
        }
    }

    /// <summary>
    /// n = ‖W0 + scale·B·A‖_row, F32 [out], for w0 [out, in], a [r, in], b [out, r] (one dtype and device).
    /// <paramref name="w0RowSqNorm"/> (F32 [out], from <see cref="RowSquaredNorm"/>) saves a pass over W0
    /// when given. B·A is never formed as a matrix: n² = ‖w‖² + 2s·(W0 Aᵀ)·B + s²·B (A Aᵀ) Bᵀ per row with
    /// a rigorous error bound; rows where it cannot certify a relative error of 1e-4 (W0_i and s·B_i·A
    /// nearly cancelling) are recomputed directly in double, so every row is accurate relative to its norm.
    /// </summary>
    /// <exception cref="ArithmeticException">A row's norm is exactly 0 (W0_i = −s·B_i·A, e.g. an all-zero W0 row
    /// with B_i = 0): DoRA's scale m/n is undefined there.</exception>
    public static Tensor WeightNorm(Tensor w0, Tensor a, Tensor b, float scale, Tensor? w0RowSqNorm = null) =>
        WeightNorm(w0, a, b, scale, w0RowSqNorm, out _);

    /// <summary><see cref="WeightNorm(Tensor, Tensor, Tensor, float, Tensor?)"/>, also saying what the kernels did.</summary>
    internal static Tensor WeightNorm(Tensor w0, Tensor a, Tensor b, float scale, Tensor? w0RowSqNorm, out DoraNormReport report)
    {
        const string op = "Dora.WeightNorm";
        Checks.Alive(w0, op, nameof(w0));
        (long outFeatures, long inFeatures) = Checks.Matrix(op, nameof(w0), w0, "out, in");
        long r = AdapterChecks.Rank(op, "DoRA", a, inFeatures, w0.DType, w0.Device);
        Checks.Alive(b, op, nameof(b));
        Checks.Shape(op, nameof(b), b, "out, r", [outFeatures, r], w0.DType, w0.Device);
        Checks.Finite(op, nameof(scale), scale);
        if (w0RowSqNorm is not null)
        {
            Checks.Alive(w0RowSqNorm, op, nameof(w0RowSqNorm));
            Checks.Shape(op, nameof(w0RowSqNorm), w0RowSqNorm, "out", [outFeatures], DType.F32, w0.Device);
        }

        Tensor? ownSqNorm = null;
        Tensor norm = Tensor.Empty(w0.Device, DType.F32, outFeatures);
        try
        {
            Tensor sqnorm = w0RowSqNorm ?? (ownSqNorm = RowSquaredNorm(w0));
            report = IDoraKernels.On(w0.Device).WeightNorm(w0, sqnorm, a, b, scale, norm);
            ThrowIfZeroRows(op, report, norm);
            return norm;
        }
        catch
        {
            norm.Dispose();
            throw;
        }
        finally
        {
            ownSqNorm?.Dispose();
        }
    }

    /// <summary>
    /// Refuses norms with exactly zero rows: m/n is undefined there (PEFT's division gives Inf or NaN), and the
    /// forward, backward and merge would all divide by it.
    /// </summary>
    private static void ThrowIfZeroRows(string op, DoraNormReport report, Tensor norm)
    {
        if (report.ZeroRows == 0) return;
        float[] values = norm.ToArray();
        int[] rows = Enumerable.Range(0, values.Length).Where(i => values[i] == 0f).Take(8).ToArray();
        throw new ArithmeticException(
            $"{op}: ‖W0_i + s·B_i·A‖ is exactly 0 for {report.ZeroRows} row(s) (first: {string.Join(", ", rows)}), so DoRA's " +
            "scale m_i / n_i is undefined there (PEFT divides by it and returns Inf or NaN). An all-zero row of W0 with " +
            "B_i = 0 (a new adapter) does this; give those rows a non-zero B_i, or leave them out of the DoRA layer.");
    }

    /// <summary>
    /// y = (magnitude / norm) ⊙ (x W0ᵀ + scale·(x Aᵀ) Bᵀ) + bias. x [M, in], w0 [out, in], bias [out] or
    /// null, a [r, in], b [out, r], magnitude [out] (all x's dtype and device), norm F32 [out] (from
    /// <see cref="WeightNorm"/>). Returns Y [M, out] and what <see cref="Backward"/> takes: U = x Aᵀ
    /// (F32 [M, r]) and Z = x W0ᵀ + scale·U Bᵀ [M, out] (x's dtype). For inference, <see cref="Infer"/> keeps neither.
    /// </summary>
    public static DoraForwardResult Forward(Tensor x, Tensor w0, Tensor? bias, Tensor a, Tensor b,
                                            Tensor magnitude, Tensor norm, float scale)
    {
        var (y, u, z) = Run("Dora.Forward", x, w0, bias, a, b, magnitude, norm, scale, keepZ: true);
        return new(y, u, z!);
    }

    /// <summary>Y of <see cref="Forward"/> alone (inference: nothing is kept for a backward pass).</summary>
    public static Tensor Infer(Tensor x, Tensor w0, Tensor? bias, Tensor a, Tensor b, Tensor magnitude, Tensor norm, float scale)
    {
        var (y, u, _) = Run("Dora.Infer", x, w0, bias, a, b, magnitude, norm, scale, keepZ: false);
        u.Dispose();
        return y;
    }

    private static (Tensor Y, Tensor U, Tensor? Z) Run(string op, Tensor x, Tensor w0, Tensor? bias, Tensor a, Tensor b,
                                                       Tensor magnitude, Tensor norm, float scale, bool keepZ)
    {
        AdapterDims d = AdapterChecks.DenseAdapter(op, "DoRA", x, w0, a, b);
        if (bias is not null)
        {
            Checks.Alive(bias, op, nameof(bias));
            Checks.Shape(op, nameof(bias), bias, "out", [d.Out], d.DType, d.Device);
        }
        CheckMagnitudeAndNorm(op, magnitude, norm, d);
        Checks.Finite(op, nameof(scale), scale);
        AdapterChecks.OutputSize(op, "y", d.M, d.Out);
        AdapterChecks.OutputSize(op, "u", d.M, d.R);

        Tensor y = Tensor.Empty(d.Device, d.DType, d.M, d.Out);
        Tensor? u = null, z = null;
        try
        {
            u = Tensor.Empty(d.Device, DType.F32, d.M, d.R);
            if (keepZ) z = Tensor.Empty(d.Device, d.DType, d.M, d.Out);
            IDoraKernels.On(d.Device).Forward(x, w0, bias, a, b, scale, magnitude, norm, y, u, z);
            return (y, u, z);
        }
        catch
        {
            Checks.DisposeAll(y, u, z);
            throw;
        }
    }

    /// <summary>
    /// Gradients of <see cref="Forward"/> with the norm detached (as PEFT), given dy [M, out] (x's dtype)
    /// and the forward's U (F32 [M, r]) and Z ([M, out]): dm_j = Σ_t dy·z / n_j, and with dz = dy ⊙ m / n,
    /// dx = dz W0 + s·(dz B) A, dA = s·(dz B)ᵀ x, dB = s·dzᵀ U; each only when requested (null otherwise),
    /// in x's dtype.
    /// </summary>
    public static DoraGradients Backward(
        Tensor x, Tensor w0, Tensor a, Tensor b, Tensor magnitude, Tensor norm, Tensor u, Tensor z, Tensor dy, float scale,
        bool needDx = true, bool needDA = true, bool needDB = true, bool needDMagnitude = true)
    {
        const string op = "Dora.Backward";
        AdapterDims d = AdapterChecks.DenseAdapter(op, "DoRA", x, w0, a, b);
        CheckMagnitudeAndNorm(op, magnitude, norm, d);
        Checks.Alive(u, op, nameof(u));
        Checks.Shape(op, nameof(u), u, "M, r", [d.M, d.R], DType.F32, d.Device);
        Checks.Alive(z, op, nameof(z));
        Checks.Shape(op, nameof(z), z, "M, out", [d.M, d.Out], d.DType, d.Device);
        Checks.Alive(dy, op, nameof(dy));
        Checks.Shape(op, nameof(dy), dy, "M, out", [d.M, d.Out], d.DType, d.Device);
        Checks.Finite(op, nameof(scale), scale);
        if (!needDx && !needDA && !needDB && !needDMagnitude) return new(null, null, null, null);

        Tensor? dx = null, dA = null, dB = null, dm = null;
        try
        {
            if (needDx) dx = Tensor.Empty(d.Device, d.DType, d.M, d.In);
            if (needDA) dA = Tensor.Empty(d.Device, d.DType, d.R, d.In);
            if (needDB) dB = Tensor.Empty(d.Device, d.DType, d.Out, d.R);
            if (needDMagnitude) dm = Tensor.Empty(d.Device, d.DType, d.Out);
            IDoraKernels.On(d.Device).Backward(x, w0, a, b, u, z, dy, scale, magnitude, norm, dx, dA, dB, dm);
            return new(dx, dA, dB, dm);
        }
        catch
        {
            Checks.DisposeAll(dx, dA, dB, dm);
            throw;
        }
    }

    /// <summary>
    /// PEFT's DoRA merge in place: W0 = (m / n) ⊙ (W0 + scale·B·A), row by row, where
    /// <paramref name="norm"/> is ‖W0 + scale·B·A‖_row computed before the merge (keep it for <see cref="Unmerge"/>).
    /// Each element is formed in double and rounded once, so a row where W0 and scale·B·A nearly cancel
    /// (n small, m/n large) is merged as accurately as any other.
    /// </summary>
    /// <exception cref="ArgumentException">Some m_i or n_i is zero or not finite: the merge could not be undone.</exception>
    public static void Merge(Tensor w0, Tensor a, Tensor b, Tensor magnitude, Tensor norm, float scale)
    {
        const string op = "Dora.Merge";
        CheckMerge(op, w0, a, b, magnitude, norm, scale);
        IDoraKernels.On(w0.Device).Merge(w0, a, b, magnitude, norm, scale, unmerge: false);
    }

    /// <summary>Undoes <see cref="Merge"/> with the same (pre-merge) norm: W0 = W0 / (m / n) - scale·B·A (each element in double, rounded once).</summary>
    /// <exception cref="ArgumentException">Some m_i or n_i is zero or not finite.</exception>
    public static void Unmerge(Tensor w0, Tensor a, Tensor b, Tensor magnitude, Tensor norm, float scale)
    {
        const string op = "Dora.Unmerge";
        CheckMerge(op, w0, a, b, magnitude, norm, scale);
        IDoraKernels.On(w0.Device).Merge(w0, a, b, magnitude, norm, scale, unmerge: true);
    }

    private static void CheckMerge(string op, Tensor w0, Tensor a, Tensor b, Tensor magnitude, Tensor norm, float scale)
    {
        Checks.Alive(w0, op, nameof(w0));
        (long outFeatures, long inFeatures) = Checks.Matrix(op, nameof(w0), w0, "out, in");
        long r = AdapterChecks.Rank(op, "DoRA", a, inFeatures, w0.DType, w0.Device);
        Checks.Alive(b, op, nameof(b));
        Checks.Shape(op, nameof(b), b, "out, r", [outFeatures, r], w0.DType, w0.Device);
        CheckMagnitudeAndNorm(op, magnitude, norm, new AdapterDims(0, inFeatures, outFeatures, r, w0.DType, w0.Device));
        Checks.Finite(op, nameof(scale), scale);
        // The factor m/n (and n/m to unmerge) must exist: read both back (a merge is not a per-step cost).
        float[] m = magnitude.ToArray(), n = norm.ToArray();
        for (int i = 0; i < m.Length; i++)
        {
            if (!float.IsFinite(m[i]) || m[i] == 0f)
                throw new ArgumentException($"{op}: magnitude[{i}] = {m[i]}; merging needs every m_i finite and non-zero, " +
                                            "or the merge could not be undone.", nameof(magnitude));
            if (!float.IsFinite(n[i]) || n[i] == 0f)
                throw new ArgumentException($"{op}: norm[{i}] = {n[i]}; the norm must be finite and non-zero (Dora.WeightNorm).",
                                            nameof(norm));
        }
    }

    private static void CheckMagnitudeAndNorm(string op, Tensor magnitude, Tensor norm, AdapterDims d)
    {
        Checks.Alive(magnitude, op, nameof(magnitude));
        Checks.Shape(op, nameof(magnitude), magnitude, "out", [d.Out], d.DType, d.Device);
        Checks.Alive(norm, op, nameof(norm));
        Checks.Shape(op, nameof(norm), norm, "out", [d.Out], DType.F32, d.Device);
    }
}
