// The VeRA op family (REFERENCE.md §3): y = x W0ᵀ + bias + λ_b ⊙ ((λ_d ⊙ (dropout(x) A_lᵀ)) B_lᵀ), its
// backward and merge. A_l = veraA[:, :in] and B_l = veraB[:out, :] are slices of the shared frozen
// projections (VeraProjections), read in place. Checks every argument, allocates the outputs, then
// dispatches to the device's backend (native CPU kernels or kernels/vera.cu with kernels/lora.cu).
using LoraKernels.Families.Vera;

namespace LoraKernels.Ops;

public static class Vera
{

    /// <summary>
    /// x [M, in], W0 [out, in], bias [out] or null, veraA [r, maxIn ≥ in], veraB [maxOut ≥ out, r],
    /// λ_d [r], λ_b [out], all of x's dtype and device. Returns Y [M, out] (x's dtype) and
    /// U = dropout(x) A_lᵀ [M, r] (F32), which <see cref="Backward"/> needs.
    /// </summary>
    public static ForwardResult Forward(Tensor x, Tensor w0, Tensor? bias, Tensor veraA, Tensor veraB,
                                               Tensor lambdaD, Tensor lambdaB, float dropoutP = 0f, ulong seed = 0)
    {
        const string op = "Vera.Forward";
        Checks.Alive(w0, op, nameof(w0));
        (_, long inFeatures) = Checks.Matrix(op, nameof(w0), w0, "out, in");
        long m = AdapterChecks.Activations(op, x, inFeatures, w0.DType, w0.Device, "w0");
        AdapterDims d = CheckAdapter(op, m, w0, veraA, veraB, lambdaD, lambdaB);
        if (bias is not null)
        {
            Checks.Alive(bias, op, nameof(bias));
            Checks.Shape(op, nameof(bias), bias, "out", [d.Out], d.DType, d.Device);
        }
        Checks.DropoutProbability(op, nameof(dropoutP), dropoutP);
        AdapterChecks.OutputSize(op, "y", d.M, d.Out);
        AdapterChecks.OutputSize(op, "u", d.M, d.R);

        Tensor y = Tensor.Empty(d.Device, d.DType, d.M, d.Out);
        Tensor? u = null;
        try
        {
            u = Tensor.Empty(d.Device, DType.F32, d.M, d.R);
            IVeraKernels.On(d.Device).Forward(x, w0, bias, veraA, veraB, lambdaD, lambdaB, dropoutP, seed, y, u);
            return new(y, u);
        }
        catch
        {
            Checks.DisposeAll(y, u);
            throw;
        }
    }

    /// <summary>
    /// Gradients of <see cref="Forward"/> given dy [M, out] (W0's dtype) and the forward's u [M, r] (F32):
    /// dx [M, in], dλ_d [r] and dλ_b [out] (W0's dtype), each only when requested (null otherwise).
    /// The projections are frozen and get no gradient. Pass the forward's dropout probability and seed.
    /// </summary>
    public static VeraGradients Backward(
        Tensor w0, Tensor veraA, Tensor veraB, Tensor lambdaD, Tensor lambdaB, Tensor u, Tensor dy, float dropoutP = 0f,
        ulong seed = 0, bool needDx = true, bool needDLambdaD = true, bool needDLambdaB = true)
    {
        const string op = "Vera.Backward";
        Checks.Alive(dy, op, nameof(dy));
        Checks.Alive(w0, op, nameof(w0));
        (long outFeatures, _) = Checks.Matrix(op, nameof(w0), w0, "out, in");
        (long m, _) = Checks.Matrix(op, nameof(dy), dy, "M, out");
        Checks.Shape(op, nameof(dy), dy, "M, out", [m, outFeatures], w0.DType, w0.Device);
        AdapterDims d = CheckAdapter(op, m, w0, veraA, veraB, lambdaD, lambdaB);
        Checks.Alive(u, op, nameof(u));
        Checks.Shape(op, nameof(u), u, "M, r", [d.M, d.R], DType.F32, d.Device);
        Checks.DropoutProbability(op, nameof(dropoutP), dropoutP);
        if (!needDx && !needDLambdaD && !needDLambdaB) return new(null, null, null);

        Tensor? dx = null, dLambdaD = null, dLambdaB = null;
        try
        {
            if (needDx) dx = Tensor.Empty(d.Device, d.DType, d.M, d.In);
            if (needDLambdaD) dLambdaD = Tensor.Empty(d.Device, d.DType, d.R);
            if (needDLambdaB) dLambdaB = Tensor.Empty(d.Device, d.DType, d.Out);
            IVeraKernels.On(d.Device).Backward(w0, veraA, veraB, lambdaD, lambdaB, u, dy, dropoutP, seed, dx, dLambdaD, dLambdaB);
            return new(dx, dLambdaD, dLambdaB);
        }
        catch
        {
            Checks.DisposeAll(dx, dLambdaD, dLambdaB);
            throw;
        }
    }

    /// <summary>W0 += diag(λ_b)·B_l·diag(λ_d)·A_l in place (PEFT's merge).</summary>
    public static void Merge(Tensor w0, Tensor veraA, Tensor veraB, Tensor lambdaD, Tensor lambdaB) =>
        MergeScaled("Vera.Merge", w0, veraA, veraB, lambdaD, lambdaB, 1f);

    /// <summary>W0 -= diag(λ_b)·B_l·diag(λ_d)·A_l in place: undoes <see cref="Merge"/> up to rounding.</summary>
    public static void Unmerge(Tensor w0, Tensor veraA, Tensor veraB, Tensor lambdaD, Tensor lambdaB) =>
        MergeScaled("Vera.Unmerge", w0, veraA, veraB, lambdaD, lambdaB, -1f);

    private static void MergeScaled(string op, Tensor w0, Tensor veraA, Tensor veraB, Tensor lambdaD, Tensor lambdaB,
                                    float scale)
    {
        Checks.Alive(w0, op, nameof(w0));
        Checks.Matrix(op, nameof(w0), w0, "out, in");
        CheckAdapter(op, 0, w0, veraA, veraB, lambdaD, lambdaB);
        IVeraKernels.On(w0.Device).Merge(w0, veraA, veraB, lambdaD, lambdaB, scale);
    }

    /// <summary>
    /// veraA [r, maxIn] with r ≥ 1 and maxIn ≥ in, veraB [maxOut, r] with maxOut ≥ out, λ_d [r],
    /// λ_b [out]; all of W0's dtype and device (W0 [out, in] already checked as a matrix).
    /// </summary>
    private static AdapterDims CheckAdapter(string op, long m, Tensor w0, Tensor veraA, Tensor veraB, Tensor lambdaD,
                                     Tensor lambdaB)
    {
        long outFeatures = w0.Shape[0], inFeatures = w0.Shape[1];
        DType dtype = w0.DType;
        Device device = w0.Device;
        Checks.Alive(veraA, op, nameof(veraA));
        if (veraA.Rank != 2 || veraA.Shape[0] < 1 || veraA.DType != dtype || !ReferenceEquals(veraA.Device, device))
            throw new ArgumentException(
                $"{op}: veraA must be [r, maxIn] with r >= 1, dtype {dtype} on {device}, got {veraA.Describe()}", nameof(veraA));
        if (veraA.Shape[1] < inFeatures)
            throw new ArgumentException(
                $"{op}: veraA is {veraA.Describe()} but the layer has in = {inFeatures}: the shared projections must be at least as large as every layer (maxIn >= in).",
                nameof(veraA));
        Checks.Size(op, nameof(veraA), veraA);
        long r = veraA.Shape[0];
        Checks.Alive(veraB, op, nameof(veraB));
        if (veraB.Rank != 2 || veraB.Shape[1] != r || veraB.DType != dtype || !ReferenceEquals(veraB.Device, device))
            throw new ArgumentException(
                $"{op}: veraB must be [maxOut, r] = [maxOut, {r}] with dtype {dtype} on {device}, got {veraB.Describe()}", nameof(veraB));
        if (veraB.Shape[0] < outFeatures)
            throw new ArgumentException(
                $"{op}: veraB is {veraB.Describe()} but the layer has out = {outFeatures}: the shared projections must be at least as large as every layer (maxOut >= out).",
                nameof(veraB));
        Checks.Size(op, nameof(veraB), veraB);
        Checks.Alive(lambdaD, op, nameof(lambdaD));
        Checks.Shape(op, nameof(lambdaD), lambdaD, "r", [r], dtype, device);
        Checks.Alive(lambdaB, op, nameof(lambdaB));
        Checks.Shape(op, nameof(lambdaB), lambdaB, "out", [outFeatures], dtype, device);
        return new AdapterDims(m, inFeatures, outFeatures, r, dtype, device);
    }
}
