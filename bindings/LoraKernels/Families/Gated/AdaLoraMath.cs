// AdaLoRA's per-step arithmetic on a layer's tensors (REFERENCE.md 6.3-6.4), checked and dispatched
// to the gated family's kernels: the importance EMAs, the triplet scores, and the orthogonality
// regulariser's Gram matrix and gradient. AdaLoraAllocator is their one caller; the tests drive them
// directly against the reference.
using LoraKernels.Ops;

namespace LoraKernels.Families.Gated;

internal static class AdaLoraMath
{
    /// <summary>Ī ← β1·Ī + (1 − β1)·|p ⊙ grad| and U ← β2·U + (1 − β2)·|I − Ī| in place (grad, Ī, U F32 of p's shape).</summary>
    public static void Sensitivity(Tensor p, Tensor grad, Tensor importance, Tensor uncertainty, float beta1, float beta2)
    {
        const string op = "AdaLora.Sensitivity";
        Checks.Alive(p, op, nameof(p));
        Checks.NotEmpty(op, nameof(p), p);
        long[] shape = [.. p.Shape];
        foreach (var (tensor, name) in new[] { (grad, nameof(grad)), (importance, nameof(importance)), (uncertainty, nameof(uncertainty)) })
        {
            Checks.Alive(tensor, op, name);
            Checks.Shape(op, name, tensor, "", shape, DType.F32, p.Device);
        }
        IGatedKernels.On(p.Device).Sensitivity(p, grad, importance, uncertainty, beta1, beta2);
    }

    /// <summary>The r triplet scores of a layer from the EMAs of its A [r, in], E [r] and B [out, r] (in that order).</summary>
    public static float[] TripletScores(Variants.AdaLoraAllocator.Ema[] ema)
    {
        Tensor importanceA = ema[0].Importance, importanceB = ema[2].Importance;
        using Tensor score = Tensor.Empty(importanceA.Device, DType.F32, importanceA.Shape[0]);
        IGatedKernels.On(importanceA.Device).TripletScore(importanceA, ema[0].Uncertainty, ema[1].Importance, ema[1].Uncertainty,
                                                          importanceB, ema[2].Uncertainty, score);
        return score.ToArray();
    }

    /// <summary>C = X Xᵀ (<paramref name="transpose"/> false, X = lora_A [r, in]) or Xᵀ X (true, X = lora_B [out, r]), F32 [r, r].</summary>
    public static Tensor Gram(Tensor x, bool transpose)
    {
        const string op = "AdaLora.Gram";
        Checks.Alive(x, op, nameof(x));
        (long rows, long columns) = Checks.Matrix(op, nameof(x), x, transpose ? "out, r" : "r, in");
        long side = transpose ? columns : rows;
        Tensor c = Tensor.Empty(x.Device, DType.F32, side, side);
        try
        {
            IGatedKernels.On(x.Device).Gram(x, transpose, c);
            return c;
        }
        catch
        {
            c.Dispose();
            throw;
        }
    }

    /// <summary>coefficient·(C − I)·X or coefficient·X·(C − I) (x's shape and dtype), for C from <see cref="Gram"/>.</summary>
    public static Tensor OrthogonalityGradient(Tensor x, Tensor c, bool transpose, float coefficient)
    {
        const string op = "AdaLora.OrthogonalityGradient";
        Checks.Alive(x, op, nameof(x));
        (long rows, long columns) = Checks.Matrix(op, nameof(x), x, transpose ? "out, r" : "r, in");
        long side = transpose ? columns : rows;
        Checks.Alive(c, op, nameof(c));
        Checks.Shape(op, nameof(c), c, "r, r", [side, side], DType.F32, x.Device);
        Checks.Finite(op, nameof(coefficient), coefficient);
        Tensor g = Tensor.Empty(x.Device, x.DType, rows, columns);
        try
        {
            IGatedKernels.On(x.Device).OrthogonalityGradient(x, c, transpose, coefficient, g);
            return g;
        }
        catch
        {
            g.Dispose();
            throw;
        }
    }
}
