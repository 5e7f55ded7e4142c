// A convolution with a LoRA adapter, as PEFT's lora.Conv2d (REFERENCE.md §1.6): lora_A is a kh×kw convolution
// from C to r channels with the base's window (stride, padding and dilation), lora_B a 1×1 convolution from r to O,
//   y = conv(x, W0) + bias + s·conv₁ₓ₁(conv(x, A), B),   s = alpha/r (alpha/√r with rsLoRA),
// so ΔW[o] = s·Σ_j B[o, j]·A[j] (the 1×1 B folds into A) and merging is exact. A [r, C, kh, kw] starts
// U(±1/√(C·kh·kw)) (PEFT's kaiming_uniform, a = √5) from SplitMix64(seed), B [O, r] at zero (PEFT stores it as
// [O, r, 1, 1]). PEFT passes no dilation to lora_A; here A takes the base's, so a dilated base stays mergeable.
// F32. Training applies the adapter (A's convolution, then B as a batched 1×1 product); inference forms ΔW into a
// copy of W0 when that costs fewer FLOPs (ConvAdapterForm).
using LoraKernels.Autograd;
using LoraKernels.Families.Conv;
using LoraKernels.Families.Tucker;
using LoraKernels.Ops;
using LoraKernels.Runtime;

namespace LoraKernels.Layers;

public sealed class LoraConv2d : MergeableLinear<FrozenConv2d>
{
    /// <summary>
    /// Wraps the base weight <paramref name="w0"/> [O, C, kh, kw] (and <paramref name="bias"/> [O]), copied to
    /// <paramref name="device"/> as F32, convolved with <paramref name="geometry"/> (default: stride 1, no padding).
    /// </summary>
    public LoraConv2d(Device device, Tensor w0, Tensor? bias, int r, float alpha, Conv2dGeometry? geometry = null,
                      bool useRsLora = false, ulong seed = 0)
        : base(FrozenConv2d.Create("LoraConv2d", device, w0, bias, geometry ?? Conv2dGeometry.Pointwise,
                                   shape => LowRankDelta.CheckArguments("LoraConv2d", r, alpha, 0f, shape[0], shape[1] * shape[2] * shape[3])))
    {
        Rank = r;
        Alpha = alpha;
        UseRsLora = useRsLora;
        Scale = LowRankDelta.ScaleOf(alpha, r, useRsLora);
        long patch = (long)InFeatures * Base.KernelH * Base.KernelW;
        A = Create(() => new Parameter("lora_A", Tensor.FromArray(device, KaimingUniform.Draw(new SplitMix64(seed), r * patch, patch),
                                                                  r, InFeatures, Base.KernelH, Base.KernelW)));
        B = Create(() => new Parameter("lora_B", Tensor.Zeros(device, DType.F32, OutFeatures, r)));
    }

    public int Rank { get; }
    public float Alpha { get; }
    public bool UseRsLora { get; }

    /// <summary>s = alpha/r, or alpha/√r with rsLoRA.</summary>
    public float Scale { get; }

    /// <summary>lora_A [r, C, kh, kw].</summary>
    public Parameter A { get; }

    /// <summary>lora_B [O, r] (PEFT's [O, r, 1, 1]).</summary>
    public Parameter B { get; }

    /// <summary>The frozen base weight [O, C, kh, kw] (holding W0 + ΔW while merged).</summary>
    public Tensor W0 => Base.Weight;


    /// <summary>y [N, O, HO, WO] for x [N, C, H, W], without recording gradients.</summary>
    public override Tensor Forward(Tensor x)
    {
        ThrowIfDisposed();
        ConvShape s = Conv2d.ShapeOf("LoraConv2d.Forward", x, W0, Base.Geometry);
        if (Merged) return Conv2d.Forward(x, W0, Bias, Base.Geometry);
        long patch = s.C * s.KH * s.KW, pixels = s.N * s.HO * s.WO;
        long formCost = 2L * s.O * Rank * patch, applyCost = 2L * pixels * Rank * (patch + s.O);
        if (ConvAdapterForm.Cheaper(formCost, applyCost, W0)) return ConvAdapterForm.Forward(Base, x, w => AddDelta(w, 1f));
        var (y, z) = Apply(s, x);
        z.Dispose();
        return y;
    }


    /// <summary>The trainable parameters: A, then B.</summary>
    public override IEnumerable<Parameter> Parameters()
    {
        yield return A;
        yield return B;
    }

    /// <summary>The adapter applied (never formed: the backward would need the whole [O, C, kh, kw] weight gradient), recorded with its backward.</summary>
    private protected override Variable Record(Tape tape, Variable x)
    {
        ThrowIfMerged();
        ConvShape s = Conv2d.ShapeOf("LoraConv2d.Forward", x.Value, W0, Base.Geometry);
        ConvShape sa = s with { O = Rank };
        Parameter a = A, b = B;
        float scale = Scale;
        var (y, z) = Apply(s, x.Value);
        return tape.Record(y, [x], [a, b], g =>
        {
            Tensor dy = g.OutputGradient;
            long pixels = s.HO * s.WO;
            Tensor? dx = null, dA = null, dB = null;
            using Tensor dz = Tensor.Empty(dy.Device, DType.F32, s.N, Rank, s.HO, s.WO);
            try
            {
                // dz_n = s·Bᵀ·dy_n; dB = s·Σ_n dy_n·z_nᵀ; dA and dx through A's convolution.
                Tucker.Product(BatchedProduct.SharedLeft(s.N, Rank, pixels, s.O, transA: true), b.Value, dy, scale, 0f, dz);
                if (g.NeedsParameter(1))
                {
                    dB = Tensor.Empty(dy.Device, DType.F32, s.O, Rank);
                    Tucker.Product(new BatchedProduct(s.N, s.O, Rank, pixels, false, s.O * pixels, true, Rank * pixels, 0, Reduce: true), dy, z, scale, 0f, dB);
                }
                if (g.NeedsParameter(0))
                {
                    dA = Tensor.Empty(dy.Device, DType.F32, Rank, s.C, s.KH, s.KW);
                    Conv2d.BackwardWeightInto(sa, x.Value, dz, 1f, 0f, dA);
                }
                if (g.NeedsInput(0))
                {
                    dx = Tensor.Empty(dy.Device, DType.F32, s.N, s.C, s.H, s.W);
                    Conv2d.BackwardDataInto(s, dy, W0, 1f, 0f, dx);
                    Conv2d.BackwardDataInto(sa, dz, a.Value, 1f, 1f, dx);
                }
                return new Gradients([dx], [dA, dB]);
            }
            catch
            {
                Checks.DisposeAll(dx, dA, dB);
                throw;
            }
        }, z);
    }

    /// <summary>y = conv(x, W0) + bias + s·B·z with z = conv(x, A) [N, r, HO, WO], which the backward keeps.</summary>
    private (Tensor Y, Tensor Z) Apply(in ConvShape s, Tensor x)
    {
        Tensor y = Tensor.Empty(x.Device, DType.F32, s.N, s.O, s.HO, s.WO);
        Tensor? z = null;
        try
        {
            z = Tensor.Empty(x.Device, DType.F32, s.N, Rank, s.HO, s.WO);
            Conv2d.ForwardInto(s, x, W0, Bias, 1f, 0f, y);
            Conv2d.ForwardInto(s with { O = Rank }, x, A.Value, null, 1f, 0f, z);
            Tucker.Product(BatchedProduct.SharedLeft(s.N, s.O, s.HO * s.WO, Rank, transA: false), B.Value, z, Scale, 1f, y);
            return (y, z);
        }
        catch
        {
            Checks.DisposeAll(y, z);
            throw;
        }
    }

    private protected override Tensor MergeTarget => W0;

    /// <summary>w [O, C·kh·kw] += sign·s·B [O, r]·A [r, C·kh·kw] (merge, unmerge, and the formed inference weight).</summary>
    private protected override void AddDelta(Tensor w, float sign)
    {
        long patch = (long)InFeatures * Base.KernelH * Base.KernelW;
        Tucker.Product(BatchedProduct.Single(OutFeatures, patch, Rank), B.Value, A.Value, sign * Scale, 1f, w);
    }
}
