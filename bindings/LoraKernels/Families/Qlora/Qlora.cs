// QLoRA, the LoRA adapter over a frozen 4-bit base (Dettmers et al.; PEFT's lora.Linear4bit):
//   y = x·deq(W)ᵀ + bias + scale·(dropout(x)·Aᵀ)·Bᵀ
// forward and backward, mirroring Ops.Lora with the base quantized (Ops.Nf4); deq(W) is never
// materialised. Every argument is checked before anything is allocated or launched.
using LoraKernels.Families.Qlora;

namespace LoraKernels.Ops;

public static class Qlora
{
    /// <summary>
    /// QLoRA forward: y = x·deq(W)ᵀ + bias + scale·(dropout(x)·Aᵀ)·Bᵀ, as <see cref="Lora.Forward"/> with
    /// the base weight quantized. A [r, in] and B [out, r] in x's dtype. Returns Y [M, out] (x's
    /// dtype) and U = dropout(x)·Aᵀ [M, r] (F32) for <see cref="Backward"/>.
    /// </summary>
    public static ForwardResult Forward(Tensor x, QuantizedWeight w, Tensor? bias, Tensor a, Tensor b,
                                                    float scale, float dropoutP = 0f, ulong seed = 0)
    {
        const string op = "Qlora.Forward";
        AdapterDims d = CheckAdapter(op, x, w, a, b);
        AdapterChecks.Bias(op, bias, d);
        Checks.Finite(op, nameof(scale), scale);
        Checks.DropoutProbability(op, nameof(dropoutP), dropoutP);
        AdapterChecks.OutputSize(op, "y", d.M, d.Out);
        AdapterChecks.OutputSize(op, "u", d.M, d.R);

        Tensor y = Tensor.Empty(d.Device, d.DType, d.M, d.Out);
        Tensor? u = null;
        try
        {
            u = Tensor.Empty(d.Device, DType.F32, d.M, d.R);
            IQloraKernels.On(d.Device).Forward(x, w, bias, a, b, scale, dropoutP, seed, y, u);
            return new(y, u);
        }
        catch
        {
            Checks.DisposeAll(y, u);
            throw;
        }
    }

    /// <summary>
    /// Gradients of <see cref="Forward"/> given dy [M, out] (x's dtype) and the forward's u [M, r]
    /// (F32): dx [M, in] = dy·deq(W) + dropout'(du·A), dA [r, in], dB [out, r], each only when requested.
    /// The base weight is frozen, so it has no gradient. Pass the forward's scale, dropout and seed.
    /// </summary>
    public static LoraGradients Backward(Tensor x, QuantizedWeight w, Tensor a, Tensor b, Tensor u,
                                                                     Tensor dy, float scale, float dropoutP = 0f, ulong seed = 0,
                                                                     bool needDx = true, bool needDA = true, bool needDB = true)
    {
        const string op = "Qlora.Backward";
        AdapterDims d = CheckAdapter(op, x, w, a, b);
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
            IQloraKernels.On(d.Device).Backward(x, w, a, b, u, dy, scale, dropoutP, seed, dx, dA, dB);
            return new(dx, dA, dB);
        }
        catch
        {
            Checks.DisposeAll(dx, dA, dB);
            throw;
        }
    }

    /// <summary>W and x as <see cref="Nf4.CheckBase"/>, then A [r, in] and B [out, r] in x's dtype; when A and B agree on a dtype that x lacks, x is blamed.</summary>
    private static AdapterDims CheckAdapter(string op, Tensor x, QuantizedWeight w, Tensor a, Tensor b)
    {
        AdapterDims d = Nf4.CheckBase(op, x, w);
        Checks.Alive(a, op, nameof(a));
        Checks.Alive(b, op, nameof(b));
        if (a.DType == b.DType && a.DType != x.DType)
            throw new ArgumentException($"{op}: x must have the adapter's dtype {a.DType} (a and b have it), got {x.Describe()}", nameof(x));
        long r = AdapterChecks.Rank(op, "LoRA", a, d.In, d.DType, d.Device);
        Checks.Alive(b, op, nameof(b));
        Checks.Shape(op, nameof(b), b, "out, r", [d.Out, r], d.DType, d.Device);
        return d with { R = r };
    }
}
