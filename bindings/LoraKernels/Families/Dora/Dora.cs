// The DoRA op family (REFERENCE.md §2, PEFT's DoraLinearLayer): magnitude m [out], weight norm
// n = ‖W0 + s·B·A‖_row (detached: no gradient flows through it), g = m / n and
//   y = g ⊙ (x W0ᵀ + s·(x Aᵀ) Bᵀ) + bias.
// The norm is computed from ‖W0‖²_row without forming B·A (REFERENCE.md §11). Checks every
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
    /// when given. B·A is never formed: n² = ‖w‖² + 2s·(W0 Aᵀ)·B + s²·B (A Aᵀ) Bᵀ per row, clamped at 0.
    /// </summary>
    public static Tensor WeightNorm(Tensor w0, Tensor a, Tensor b, float scale, Tensor? w0RowSqNorm = null)
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
            IDoraKernels.On(w0.Device).WeightNorm(w0, sqnorm, a, b, scale, norm);
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
    /// y = (magnitude / norm) ⊙ (x W0ᵀ + scale·(x Aᵀ) Bᵀ) + bias. x [M, in], w0 [out, in], bias [out] or
    /// null, a [r, in], b [out, r], magnitude [out] (all x's dtype and device), norm F32 [out] (from
    /// <see cref="WeightNorm"/>). Returns Y [M, out], U = x Aᵀ (F32 [M, r]) and, when
    /// <paramref name="keepZ"/>, Z = x W0ᵀ + scale·U Bᵀ [M, out] (x's dtype): <see cref="Backward"/> needs U and Z.
    /// </summary>
    public static (Tensor Y, Tensor U, Tensor? Z) Forward(Tensor x, Tensor w0, Tensor? bias, Tensor a, Tensor b,
                                                          Tensor magnitude, Tensor norm, float scale, bool keepZ = true)
    {
        const string op = "Dora.Forward";
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
    public static (Tensor? Dx, Tensor? DA, Tensor? DB, Tensor? DMagnitude) Backward(
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
        if (!needDx && !needDA && !needDB && !needDMagnitude) return (null, null, null, null);

        Tensor? dx = null, dA = null, dB = null, dm = null;
        try
        {
            if (needDx) dx = Tensor.Empty(d.Device, d.DType, d.M, d.In);
            if (needDA) dA = Tensor.Empty(d.Device, d.DType, d.R, d.In);
            if (needDB) dB = Tensor.Empty(d.Device, d.DType, d.Out, d.R);
            if (needDMagnitude) dm = Tensor.Empty(d.Device, d.DType, d.Out);
            IDoraKernels.On(d.Device).Backward(x, w0, a, b, u, z, dy, scale, magnitude, norm, dx, dA, dB, dm);
            return (dx, dA, dB, dm);
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
    /// </summary>
    public static void Merge(Tensor w0, Tensor a, Tensor b, Tensor magnitude, Tensor norm, float scale)
    {
        const string op = "Dora.Merge";
        CheckMerge(op, w0, a, b, magnitude, norm, scale);
        Lora.Merge(w0, a, b, scale);
        IDoraKernels.On(w0.Device).ScaleRows(w0, magnitude, norm, invert: false);
    }

    /// <summary>Undoes <see cref="Merge"/> with the same (pre-merge) norm: W0 = W0 / (m / n) - scale·B·A (exact up to rounding).</summary>
    public static void Unmerge(Tensor w0, Tensor a, Tensor b, Tensor magnitude, Tensor norm, float scale)
    {
        const string op = "Dora.Unmerge";
        CheckMerge(op, w0, a, b, magnitude, norm, scale);
        IDoraKernels.On(w0.Device).ScaleRows(w0, magnitude, norm, invert: true);
        Lora.Unmerge(w0, a, b, scale);
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
    }

    private static void CheckMagnitudeAndNorm(string op, Tensor magnitude, Tensor norm, AdapterDims d)
    {
        Checks.Alive(magnitude, op, nameof(magnitude));
        Checks.Shape(op, nameof(magnitude), magnitude, "out", [d.Out], d.DType, d.Device);
        Checks.Alive(norm, op, nameof(norm));
        Checks.Shape(op, nameof(norm), norm, "out", [d.Out], DType.F32, d.Device);
    }
}
