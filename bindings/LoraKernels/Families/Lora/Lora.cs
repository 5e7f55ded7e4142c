// The LoRA op family: fused forward, backward and merge of y = x W0ᵀ + bias + scale·(dropout(x) Aᵀ) Bᵀ
// (REFERENCE.md 1.5-1.6). Checks every argument, allocates the outputs, then dispatches to the
// device's backend (native CPU kernels or kernels/lora.cu).
using LoraKernels.Families.Lora;

namespace LoraKernels.Ops;

public static class Lora
{

    /// <summary>
    /// y = x W0ᵀ + bias + scale·(dropout(x) Aᵀ) Bᵀ. x [M, in], W0 [out, in], bias [out] or null,
    /// A [r, in], B [out, r], all of x's dtype and device. Returns Y [M, out] (x's dtype) and
    /// U = dropout(x) Aᵀ [M, r] (F32), which <see cref="Backward"/> needs. The dropout mask is a
    /// pure function of (seed, element index), so the backward pass regenerates it. <paramref name="path"/>
    /// selects the fused kernels (the default) or, on a GPU device, the vendor GEMM sequence PEFT runs
    /// (<see cref="LoraForwardPath.VendorGemm"/>: a baseline and a fallback).
    /// </summary>
    public static ForwardResult Forward(Tensor x, Tensor w0, Tensor? bias, Tensor a, Tensor b,
                                        float scale, float dropoutP = 0f, ulong seed = 0,
                                        LoraForwardPath path = LoraForwardPath.Fused)
    {
        const string op = "Lora.Forward";
        AdapterDims d = AdapterChecks.DenseAdapter(op, "LoRA", x, w0, a, b);
        if (bias is not null)
        {
            Checks.Alive(bias, op, nameof(bias));
            Checks.Shape(op, nameof(bias), bias, "out", [d.Out], d.DType, d.Device);
        }
        Checks.Finite(op, nameof(scale), scale);
        Checks.DropoutProbability(op, nameof(dropoutP), dropoutP);
        if (!Enum.IsDefined(path))
            throw new ArgumentOutOfRangeException(nameof(path), path, $"{op}: path must be LoraForwardPath.Fused or LoraForwardPath.VendorGemm.");
        if (path == LoraForwardPath.VendorGemm && d.Device.Kind == DeviceKind.Cpu)
            throw new NotSupportedException($"{op}: LoraForwardPath.VendorGemm is the GPU's vendor GEMM sequence (cuBLAS) and does not run on {d.Device}; use LoraForwardPath.Fused.");
        AdapterChecks.OutputSize(op, "y", d.M, d.Out);
        AdapterChecks.OutputSize(op, "u", d.M, d.R);

        Tensor y = Tensor.Empty(d.Device, d.DType, d.M, d.Out);
        Tensor? u = null;
        try
        {
            u = Tensor.Empty(d.Device, DType.F32, d.M, d.R);
            if (path == LoraForwardPath.VendorGemm) VendorLoraForward.On(d.Device).Forward(x, w0, bias, a, b, scale, dropoutP, seed, y, u);
            else ILoraKernels.On(d.Device).Forward(x, w0, bias, a, b, scale, dropoutP, seed, y, u);
            return new(y, u);
        }
        catch
        {
            Checks.DisposeAll(y, u);
            throw;
        }
    }

    /// <summary>
    /// Gradients of <see cref="Forward"/> given dy [M, out] (x's dtype) and the forward's u [M, r] (F32):
    /// dx [M, in] (x's dtype), dA [r, in] and dB [out, r] (A's and B's dtype), each only when requested
    /// (null otherwise). Pass the forward's scale, dropout probability and seed.
    /// </summary>
    public static LoraGradients Backward(Tensor x, Tensor w0, Tensor a, Tensor b, Tensor u,
                                                               Tensor dy, float scale, float dropoutP = 0f, ulong seed = 0,
                                                               bool needDx = true, bool needDA = true, bool needDB = true)
    {
        const string op = "Lora.Backward";
        AdapterDims d = AdapterChecks.DenseAdapter(op, "LoRA", x, w0, a, b);
        Checks.Alive(u, op, nameof(u));
        Checks.Shape(op, nameof(u), u, "M, r", [d.M, d.R], DType.F32, d.Device);
        Checks.Alive(dy, op, nameof(dy));
        Checks.Shape(op, nameof(dy), dy, "M, out", [d.M, d.Out], d.DType, d.Device);
        Checks.Finite(op, nameof(scale), scale);
        Checks.DropoutProbability(op, nameof(dropoutP), dropoutP);
        if (!needDx && !needDA && !needDB) return new(null, null, null);

        Tensor? dx = null, dA = null, dB = null;
        try
        {
            if (needDx) dx = Tensor.Empty(d.Device, d.DType, d.M, d.In);
            if (needDA) dA = Tensor.Empty(d.Device, d.DType, d.R, d.In);
            if (needDB) dB = Tensor.Empty(d.Device, d.DType, d.Out, d.R);
            ILoraKernels.On(d.Device).Backward(x, w0, a, b, u, dy, scale, dropoutP, seed, dx, dA, dB);
            return new(dx, dA, dB);
        }
        catch
        {
            Checks.DisposeAll(dx, dA, dB);
            throw;
        }
    }

    /// <summary>W0 += scale·B·A in place (W0 [out, in], A [r, in], B [out, r], one dtype and device).</summary>
    public static void Merge(Tensor w0, Tensor a, Tensor b, float scale) => MergeScaled("Lora.Merge", w0, a, b, scale);

    /// <summary>W0 -= scale·B·A in place: undoes <see cref="Merge"/> up to rounding (exactly only in exact arithmetic).</summary>
    public static void Unmerge(Tensor w0, Tensor a, Tensor b, float scale) => MergeScaled("Lora.Unmerge", w0, a, b, -scale);

    private static void MergeScaled(string op, Tensor w0, Tensor a, Tensor b, float signedScale)
    {
        Checks.Alive(w0, op, nameof(w0));
        (long outFeatures, long inFeatures) = Checks.Matrix(op, nameof(w0), w0, "out, in");
        long r = AdapterChecks.Rank(op, "LoRA", a, inFeatures, w0.DType, w0.Device);
        Checks.Alive(b, op, nameof(b));
        Checks.Shape(op, nameof(b), b, "out, r", [outFeatures, r], w0.DType, w0.Device);
        Checks.Finite(op, "scale", signedScale);
        ILoraKernels.On(w0.Device).Merge(w0, a, b, signedScale);
    }
}
