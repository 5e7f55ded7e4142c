// A convolution with a Kronecker adapter, as PEFT's lokr.Conv2d (REFERENCE.md §5.3, without use_effective_conv2d):
// ΔW = s·kron(w1, w2) with w1 [out_l, in_m] on the channels and w2 [out_k, in_n, kh, kw] (or w2_a [out_k, r]·
// w2_b [r, in_n·kh·kw]), so ΔW[(i, p), (j, q), a, b] = s·w1[i, j]·w2[p, q, a, b] (PEFT's make_kron). Applied without
// forming ΔW: the input's channels, grouped as (j, q), are mixed over j by w1 (a batched product per image:
// z_n [out_l, in_n·H·W] = w1·x_n [in_m, in_n·H·W]), and z, read as a batch of N·out_l images with in_n channels, is
// convolved with w2 into exactly y's [N, out_l·out_k, HO, WO] layout. So the adapter costs a conv with in_m times
// fewer input channels than the base, plus the mix. Inference forms ΔW into a copy of W0 when that is cheaper
// (one multiply-add per weight element: nearly always, ConvAdapterForm); training applies it. F32.
using LoraKernels.Autograd;
using LoraKernels.Families.Conv;
using LoraKernels.Families.Kron;
using LoraKernels.Families.Tucker;
using LoraKernels.Ops;

namespace LoraKernels.Layers;

public sealed class LokrConv2d : LokrLayer<FrozenConv2d>
{

    /// <summary>
    /// Wraps the base weight <paramref name="w0"/> [O, C, kh, kw] (and <paramref name="bias"/> [O]), copied to
    /// <paramref name="device"/> as F32, convolved with <paramref name="geometry"/>; the factor shapes follow
    /// Kron.Factorization of C and O, w2 carries the window.
    /// </summary>
    public LokrConv2d(Device device, Tensor w0, Tensor? bias, int r, float alpha, Conv2dGeometry? geometry = null,
                      int decomposeFactor = -1, bool decomposeBoth = false, LokrInit init = LokrInit.Default, ulong seed = 0)
        : base(FrozenConv2d.Create("LokrConv2d", device, w0, bias, geometry ?? Conv2dGeometry.Pointwise,
                                   _ => LokrDelta.CheckArguments("LokrConv2d", r, alpha, decomposeFactor)))
    {
        Delta = Create(() => new LokrDelta(device, DType.F32, OutFeatures, InFeatures, (Base.KernelH, Base.KernelW), r, alpha,
                                            decomposeFactor, decomposeBoth, init, seed));
    }

    /// <summary>The frozen base weight [O, C, kh, kw] (holding W0 + ΔW while merged).</summary>
    public Tensor W0 => Base.Weight;


    /// <summary>y [N, O, HO, WO] for x [N, C, H, W], without recording gradients.</summary>
    public override Tensor Forward(Tensor x)
    {
        ThrowIfDisposed();
        ConvShape s = Conv2d.ShapeOf("LokrConv2d.Forward", x, W0, Base.Geometry);
        if (Merged) return Conv2d.Forward(x, W0, Bias, Base.Geometry);
        KronShape k = Delta.Shape;
        long formCost = 2 * W0.ElementCount;
        long applyCost = 2 * s.N * s.H * s.W * k.OutL * k.In + 2 * s.N * k.OutL * s.HO * s.WO * k.OutK * k.InN * s.KH * s.KW;
        if (ConvAdapterForm.Cheaper(formCost, applyCost, W0)) return ConvAdapterForm.Forward(Base, x, w => AddDelta(w, 1f));
        using FormedFactors factors = Delta.Form();
        var (y, z) = Apply(s, x, factors, Scale);
        z.Dispose();
        return y;
    }


    /// <summary>The adapter applied (never formed in training), recorded with its backward; the mixed input z is kept.</summary>
    private protected override Variable Record(Tape tape, Variable x)
    {
        ThrowIfMerged();
        ConvShape s = Conv2d.ShapeOf("LokrConv2d.Forward", x.Value, W0, Base.Geometry);
        ConvShape sk = Regrouped(s);
        KronShape k = Delta.Shape;
        float scale = Scale;
        LokrDelta delta = Delta;
        Tensor w0 = W0;
        using FormedFactors factors = delta.Form();
        Tensor w1 = factors.W1, w2 = factors.W2;
        var (y, z) = Apply(s, x.Value, factors, scale);
        return tape.Record(y, [x], [.. delta.Parameters()], g =>
        {
            Tensor dy = g.OutputGradient;
            long plane = k.InN * s.H * s.W;
            Tensor? dx = null, dw1 = null, dw2 = null;
            using Tensor dz = Tensor.Empty(dy.Device, DType.F32, s.N * k.OutL, k.InN, s.H, s.W);
            try
            {
                // dz = s·convᵀ(dy, w2) over the regrouped batch; dw2 = s·Σ dy ⊗ patches(z); dw1 = Σ_n dz_n·x_nᵀ;
                // dx = convᵀ(dy, W0) + w1ᵀ·dz_n per image.
                Conv2d.BackwardDataInto(sk, dy, w2, scale, 0f, dz);
                if (delta.NeedsW2(g))
                {
                    dw2 = Tensor.Empty(dy.Device, DType.F32, w2.Shape.ToArray());
                    Conv2d.BackwardWeightInto(sk, z, dy, scale, 0f, dw2);
                }
                if (delta.NeedsW1(g))
                {
                    dw1 = Tensor.Empty(dy.Device, DType.F32, k.OutL, k.InM);
                    Tucker.Product(new BatchedProduct(s.N, k.OutL, k.InM, plane, false, k.OutL * plane, true, k.InM * plane, 0, Reduce: true),
                                   dz, x.Value, 1f, 0f, dw1);
                }
                if (g.NeedsInput(0))
                {
                    dx = Tensor.Empty(dy.Device, DType.F32, s.N, s.C, s.H, s.W);
                    Conv2d.BackwardDataInto(s, dy, w0, 1f, 0f, dx);
                    Tucker.Product(BatchedProduct.SharedLeft(s.N, k.InM, plane, k.OutL, transA: true), w1, dz, 1f, 1f, dx);
                }
                return new Gradients([dx], delta.ParameterGradients(dw1, dw2, g));
            }
            catch
            {
                Checks.DisposeAll(dx, dw1, dw2);
                throw;
            }
        }, [z, .. factors.TakeFormed()]);
    }

    /// <summary>The w2 convolution's shape: z as N·out_l images of in_n channels, out_k output channels.</summary>
    private ConvShape Regrouped(in ConvShape s) =>
        s with { N = s.N * Delta.Shape.OutL, C = Delta.Shape.InN, O = Delta.Shape.OutK };

    /// <summary>y = conv(x, W0) + bias + scale·conv(z, w2) with z = w1 mixing x's channel groups (kept for the backward).</summary>
    private (Tensor Y, Tensor Z) Apply(in ConvShape s, Tensor x, FormedFactors factors, float scale)
    {
        KronShape k = Delta.Shape;
        long plane = k.InN * s.H * s.W;
        Tensor y = Tensor.Empty(x.Device, DType.F32, s.N, s.O, s.HO, s.WO);
        Tensor? z = null;
        try
        {
            z = Tensor.Empty(x.Device, DType.F32, s.N * k.OutL, k.InN, s.H, s.W);
            Conv2d.ForwardInto(s, x, W0, Bias, 1f, 0f, y);
            Tucker.Product(BatchedProduct.SharedLeft(s.N, k.OutL, plane, k.InM, transA: false), factors.W1, x, 1f, 0f, z);
            Conv2d.ForwardInto(Regrouped(s), z, factors.W2, null, scale, 1f, y);
            return (y, z);
        }
        catch
        {
            Checks.DisposeAll(y, z);
            throw;
        }
    }

    private protected override Tensor MergeTarget => W0;
}
