// QDoRA: the DoRA ops over a frozen 4-bit base W (PEFT's DoRA on a bnb Linear4bit, REFERENCE.md §2),
// composed from the 4-bit ops and the DoRA column-scale/gradient passes; deq(W) is formed once, for
// ‖deq(W)‖²_row (W is frozen), and per step only on the GPU backend in a step where some row needs
// the norm's direct recomputation (rows nearly cancelling s·B·A):
//   norm:     the dense norm's method (Dora.WeightNorm) with P = deq(W) Aᵀ decoded from the codes
//             (native/cpu/dora.cpp, kernels/nf4.cu's lk_nf4_project_f32), accurate on every row.
//   forward:  z = x·deq(W)ᵀ + s·(x Aᵀ) Bᵀ by Qlora.Forward without bias, y = (m/n) ⊙ z + bias.
//   backward: dm = Σ_t dy ⊙ z / n and dz = dy ⊙ m/n, then Qlora.Backward on dz.
// The norm needs Pᵀ in fp32, so these ops take F32 tensors only.
using LoraKernels.Families.Dora;

namespace LoraKernels.Ops;

public static partial class Dora
{
    /// <summary>
    /// ‖deq(W)‖² per row, F32 [out]: dequantizes W once into a temporary (out·in values, freed before
    /// returning), then reduces its rows. Compute it once per frozen quantized base.
    /// </summary>
    public static Tensor RowSquaredNorm(QuantizedWeight w0)
    {
        using Tensor dense = Nf4.Dequantize(w0);
        return RowSquaredNorm(dense);
    }

    /// <summary>
    /// n = ‖deq(W) + scale·B·A‖_row, F32 [out], for a quantized w0 [out, in] (F32 compute dtype), a [r, in]
    /// and b [out, r] (F32, w0's device) and <paramref name="w0RowSqNorm"/> = ‖deq(W)‖²_row (F32 [out],
    /// from <see cref="RowSquaredNorm(QuantizedWeight)"/>); accurate on every row as the dense overload.
    /// </summary>
    /// <exception cref="ArithmeticException">A row's norm is exactly 0 (m/n is undefined there).</exception>
    public static Tensor WeightNorm(QuantizedWeight w0, Tensor a, Tensor b, float scale, Tensor w0RowSqNorm) =>
        WeightNorm(w0, a, b, scale, w0RowSqNorm, out _);

    /// <summary><see cref="WeightNorm(QuantizedWeight, Tensor, Tensor, float, Tensor)"/>, also saying what the kernels did.</summary>
    internal static Tensor WeightNorm(QuantizedWeight w0, Tensor a, Tensor b, float scale, Tensor w0RowSqNorm, out DoraNormReport report)
    {
        const string op = "Dora.WeightNorm";
        ArgumentNullException.ThrowIfNull(w0);
        Checks.Alive(a, op, nameof(a));
        Checks.Fp32(op, nameof(a), a);
        if (a.Rank == 2 && a.Shape[0] == 0)
            throw new ArgumentOutOfRangeException(nameof(a), $"{op}: a is {a.Describe()}, so r = 0; DoRA needs rank r >= 1.");
        long outFeatures = CheckQuantizedOut(op, w0), r = a.Rank == 2 ? a.Shape[0] : 0;
        if (a.Rank != 2 || a.Shape[1] != w0.Shape[1])
            throw new ArgumentException($"{op}: a must be [r, in] = [r, {w0.Shape[1]}], got {a.Describe()}", nameof(a));
        if (!ReferenceEquals(a.Device, w0.Device))
            throw new ArgumentException($"{op}: a is on {a.Device}, w0 on {w0.Device}.", nameof(a));
        if (w0.DType != DType.F32)
            throw new NotSupportedException($"{op}: QDoRA's norm needs an F32 compute dtype, got {w0.Describe()}.");
        Checks.Alive(b, op, nameof(b));
        Checks.Shape(op, nameof(b), b, "out, r", [outFeatures, r], DType.F32, a.Device);
        Checks.Finite(op, nameof(scale), scale);
        Checks.Alive(w0RowSqNorm, op, nameof(w0RowSqNorm));
        Checks.Shape(op, nameof(w0RowSqNorm), w0RowSqNorm, "out", [outFeatures], DType.F32, a.Device);

        Tensor norm = Tensor.Empty(a.Device, DType.F32, outFeatures);
        try
        {
            report = IDoraKernels.On(a.Device).WeightNormQuantized(w0, w0RowSqNorm, a, b, scale, norm);
            ThrowIfZeroRows(op, report, norm);
            return norm;
        }
        catch
        {
            norm.Dispose();
            throw;
        }
    }

    /// <summary>
    /// y = (magnitude / norm) ⊙ (x·deq(W)ᵀ + scale·(x Aᵀ) Bᵀ) + bias over a quantized w0 [out, in]; x [M, in],
    /// bias [out] or null, a [r, in], b [out, r], magnitude [out] (all F32, one device), norm F32 [out]
    /// (from <see cref="WeightNorm(QuantizedWeight, Tensor, Tensor, float, Tensor)"/>). Returns Y and what the
    /// backward takes: U = x Aᵀ (F32 [M, r]) and Z = x·deq(W)ᵀ + scale·U Bᵀ.
    /// </summary>
    public static DoraForwardResult Forward(Tensor x, QuantizedWeight w0, Tensor? bias, Tensor a, Tensor b,
                                            Tensor magnitude, Tensor norm, float scale)
    {
        var (y, u, z) = Run("Dora.Forward", x, w0, bias, a, b, magnitude, norm, scale, keepZ: true);
        return new(y, u, z!);
    }

    /// <summary>Y of the quantized <see cref="Forward(Tensor, QuantizedWeight, Tensor?, Tensor, Tensor, Tensor, Tensor, float)"/> alone (inference).</summary>
    public static Tensor Infer(Tensor x, QuantizedWeight w0, Tensor? bias, Tensor a, Tensor b, Tensor magnitude, Tensor norm, float scale)
    {
        var (y, u, _) = Run("Dora.Infer", x, w0, bias, a, b, magnitude, norm, scale, keepZ: false);
        u.Dispose();
        return y;
    }

    private static (Tensor Y, Tensor U, Tensor? Z) Run(string op, Tensor x, QuantizedWeight w0, Tensor? bias, Tensor a, Tensor b,
                                                       Tensor magnitude, Tensor norm, float scale, bool keepZ)
    {
        Checks.Alive(x, op, nameof(x));
        Checks.Fp32(op, nameof(x), x);
        long outFeatures = CheckQuantizedOut(op, w0);
        if (bias is not null)
        {
            Checks.Alive(bias, op, nameof(bias));
            Checks.Shape(op, nameof(bias), bias, "out", [outFeatures], x.DType, x.Device);
        }
        CheckMagnitudeAndNorm(op, magnitude, norm, new AdapterDims(0, 0, outFeatures, 0, x.DType, x.Device));

        // Qlora.Forward checks x, W, A, B and the scale.
        var (z, u) = Qlora.Forward(x, w0, null, a, b, scale);
        Tensor? y = null;
        try
        {
            y = keepZ ? Tensor.Empty(x.Device, x.DType, z.Shape[0], z.Shape[1]) : z;
            IDoraKernels.On(x.Device).ScaleColumns(z, magnitude, norm, bias, y);
            return (y, u, keepZ ? z : null);
        }
        catch
        {
            if (!ReferenceEquals(y, z)) y?.Dispose();
            Checks.DisposeAll(z, u);
            throw;
        }
    }

    /// <summary>
    /// Gradients of the quantized <see cref="Forward(Tensor, QuantizedWeight, Tensor?, Tensor, Tensor, Tensor, Tensor, float)"/>
    /// with the norm detached: dm_j = Σ_t dy·z / n_j, and with dz = dy ⊙ m / n, dx = dz·deq(W) + s·(dz B) A,
    /// dA = s·(dz B)ᵀ x, dB = s·dzᵀ U; each only when requested.
    /// </summary>
    public static DoraGradients Backward(
        Tensor x, QuantizedWeight w0, Tensor a, Tensor b, Tensor magnitude, Tensor norm, Tensor u, Tensor z, Tensor dy, float scale,
        bool needDx = true, bool needDA = true, bool needDB = true, bool needDMagnitude = true)
    {
        const string op = "Dora.Backward";
        Checks.Alive(x, op, nameof(x));
        Checks.Fp32(op, nameof(x), x);
        (long m, _) = Checks.Matrix(op, nameof(x), x, "M, in");
        long outFeatures = CheckQuantizedOut(op, w0);
        var d = new AdapterDims(m, 0, outFeatures, 0, x.DType, x.Device);
        CheckMagnitudeAndNorm(op, magnitude, norm, d);
        Checks.Alive(z, op, nameof(z));
        Checks.Shape(op, nameof(z), z, "M, out", [m, outFeatures], x.DType, x.Device);
        Checks.Alive(dy, op, nameof(dy));
        Checks.Shape(op, nameof(dy), dy, "M, out", [m, outFeatures], x.DType, x.Device);
        bool lora = needDx || needDA || needDB;
        if (!lora && !needDMagnitude) return new(null, null, null, null);

        Tensor? dz = null, dm = null;
        try
        {
            if (needDMagnitude) dm = Tensor.Empty(x.Device, x.DType, outFeatures);
            if (lora) dz = Tensor.Empty(x.Device, x.DType, m, outFeatures);
            IDoraKernels.On(x.Device).ScaleGrad(dy, z, magnitude, norm, dm, dz);
            if (!lora) return new(null, null, null, dm);
            // Qlora.Backward checks x, W, A, B, U and the scale.
            var (dx, dA, dB) = Qlora.Backward(x, w0, a, b, u, dz!, scale, needDx: needDx, needDA: needDA, needDB: needDB);
            return new(dx, dA, dB, dm);
        }
        catch
        {
            dm?.Dispose();
            throw;
        }
        finally
        {
            dz?.Dispose();
        }
    }

    private static long CheckQuantizedOut(string op, QuantizedWeight? w0)
    {
        if (w0 is null) throw new ArgumentNullException(nameof(w0), $"{op}: w0 is null.");
        w0.ThrowIfDisposed(nameof(w0));
        if (w0.Shape.Count != 2 || w0.Shape[0] < 1)
            throw new ArgumentException($"{op}: w0 must be a quantized matrix [out, in] with out >= 1, got {w0.Describe()}", nameof(w0));
        return w0.Shape[0];
    }
}
