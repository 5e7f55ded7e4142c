// A convolution with a Tucker adapter (FLoRA for N = 4, the guide's LoTR for 4-D kernels):
//   ΔW = s·(S ×₁ U_out ×₂ U_in),   ΔW[o, c, a, b] = s·Σ_{p,q} B[o, p]·S[p, q, a, b]·A[q, c],   s = alpha/r_in,
// with per-mode ranks on the channel modes (r_in ≤ C, r_out ≤ O) and the spatial modes kept whole (a kh×kw window is
// already small, and a spatial factor would blur the locality the core keeps). Applied in the classic three-stage
// order (Tucker-2 for convolutions, Kim et al. 2016) without forming ΔW: a 1×1 product from C to r_in channels
// (A, a batched product per image), the kh×kw convolution with the base's window between the small channel counts
// (the core, kernels/conv.cu), and a 1×1 product from r_out to O channels (B) added to the base convolution. For
// inference ΔW is formed into a copy of W0 when that costs fewer FLOPs (ConvAdapterForm: the three stages cost
// about N·(H·W·C·r_in + HO·WO·r_out·(r_in·kh·kw + O)), forming C·kh·kw·r_out·(r_in + O)); training never forms it.
// S starts at zero (ΔW = 0); A ~ U(±1/√C), B ~ U(±1/√r_out) from SplitMix64(seed). F32.
using LoraKernels.Autograd;
using LoraKernels.Families.Conv;
using LoraKernels.Families.Tucker;
using LoraKernels.Ops;
using LoraKernels.Runtime;

namespace LoraKernels.Layers;

public sealed class TuckerConv2d : TuckerLayer<FrozenConv2d>
{
    /// <summary>
    /// Wraps <paramref name="w0"/> [O, C, kh, kw] (and <paramref name="bias"/> [O]), copied to <paramref name="device"/> as
    /// F32, convolved with <paramref name="geometry"/>; ranks <paramref name="rIn"/> ≤ C and <paramref name="rOut"/> ≤ O.
    /// </summary>
    public TuckerConv2d(Device device, Tensor w0, Tensor? bias, int rIn, int rOut, float alpha, Conv2dGeometry? geometry = null,
                        ulong seed = 0)
        : base(FrozenConv2d.Create("TuckerConv2d", device, w0, bias, geometry ?? Conv2dGeometry.Pointwise, shape =>
        {
            CheckAlpha("TuckerConv2d", alpha);
            Tucker.CheckRank("TuckerConv2d", nameof(rIn), "r_in", rIn, shape[1], "C");
            Tucker.CheckRank("TuckerConv2d", nameof(rOut), "r_out", rOut, shape[0], "O");
        }), alpha)
    {
        var generator = new SplitMix64(seed);
        Factors = Create(() => TuckerFactors.Draw(device, DType.F32, InFeatures, OutFeatures, rIn, rOut, generator));
        Core = Create(() => new Parameter("tucker_core", Tensor.Zeros(device, DType.F32, rOut, rIn, Base.KernelH, Base.KernelW)));
    }

    /// <summary>The frozen base weight [O, C, kh, kw] (holding W0 + ΔW while merged).</summary>
    public Tensor W0 => Base.Weight;


    /// <summary>
    /// y [N, O, HO, WO] for x [N, C, H, W] without recording gradients: the three stages, or one convolution with a
    /// formed W0 + ΔW when that costs fewer FLOPs.
    /// </summary>
    public override Tensor Forward(Tensor x)
    {
        ThrowIfDisposed();
        ConvShape s = Conv2d.ShapeOf("TuckerConv2d.Forward", x, W0, Base.Geometry);
        if (Merged) return Conv2d.Forward(x, W0, Bias, Base.Geometry);
        return FormIsCheaper(s) ? ForwardFormed(x) : ForwardApplied(s, x);
    }

    /// <summary>conv(x, W0 + ΔW) + bias with ΔW formed into a copy of W0 (the benchmarks time both paths).</summary>
    internal Tensor ForwardFormed(Tensor x) => ConvAdapterForm.Forward(Base, x, w => AddDelta(w, 1f));

    /// <summary>The three stages beside the base convolution, ΔW never formed.</summary>
    internal Tensor ForwardApplied(in ConvShape s, Tensor x)
    {
        var (y, z1, z2) = Apply(s, x);
        Checks.DisposeAll(z1, z2);
        return y;
    }

    /// <summary>
    /// Whether forming ΔW (C·kh·kw·r_out·(r_in + O) multiply-adds, then one copy and add of W0) costs fewer FLOPs than
    /// the three stages at this batch (N·H·W·C·r_in + N·HO·WO·r_out·(r_in·kh·kw + O)).
    /// </summary>
    internal bool FormIsCheaper(in ConvShape s)
    {
        long taps = s.KH * s.KW, rIn = RankIn, rOut = RankOut;
        long form = 2 * s.C * taps * rOut * (rIn + s.O);
        long apply = 2 * s.N * (s.H * s.W * s.C * rIn + s.HO * s.WO * rOut * (rIn * taps + s.O));
        return ConvAdapterForm.Cheaper(form, apply, W0);
    }


    /// <summary>The three stages, recorded with their backward (z1 and z2 kept).</summary>
    private protected override Variable Record(Tape tape, Variable x)
    {
        ThrowIfMerged();
        ConvShape s = Conv2d.ShapeOf("TuckerConv2d.Forward", x.Value, W0, Base.Geometry);
        ConvShape sCore = CoreShape(s);
        long plane = s.H * s.W, pixels = s.HO * s.WO, rIn = RankIn, rOut = RankOut;
        Parameter a = A, core = Core, b = B;
        Tensor w0 = W0;
        float scale = Scale;
        var (y, z1, z2) = Apply(s, x.Value);
        return tape.Record(y, [x], [a, core, b], g =>
        {
            Tensor dy = g.OutputGradient;
            Tensor? dx = null, dA = null, dCore = null, dB = null;
            using Tensor dz2 = Tensor.Empty(dy.Device, DType.F32, s.N, rOut, s.HO, s.WO);
            using Tensor dz1 = Tensor.Empty(dy.Device, DType.F32, s.N, rIn, s.H, s.W);
            try
            {
                // Back through the stages: dz2 = s·Bᵀ·dy_n, dB = s·Σ dy_n·z2_nᵀ; the core's convolution gives dz1 and dS;
                // dA = Σ dz1_n·x_nᵀ and dx = convᵀ(dy, W0) + Aᵀ·dz1_n.
                Tucker.Product(BatchedProduct.SharedLeft(s.N, rOut, pixels, s.O, transA: true), b.Value, dy, scale, 0f, dz2);
                if (g.NeedsParameter(2))
                {
                    dB = Tensor.Empty(dy.Device, DType.F32, s.O, rOut);
                    Tucker.Product(new BatchedProduct(s.N, s.O, rOut, pixels, false, s.O * pixels, true, rOut * pixels, 0, Reduce: true),
                                   dy, z2, scale, 0f, dB);
                }
                if (g.NeedsParameter(1))
                {
                    dCore = Tensor.Empty(dy.Device, DType.F32, rOut, rIn, s.KH, s.KW);
                    Conv2d.BackwardWeightInto(sCore, z1, dz2, 1f, 0f, dCore);
                }
                Conv2d.BackwardDataInto(sCore, dz2, core.Value, 1f, 0f, dz1);
                if (g.NeedsParameter(0))
                {
                    dA = Tensor.Empty(dy.Device, DType.F32, rIn, s.C);
                    Tucker.Product(new BatchedProduct(s.N, rIn, s.C, plane, false, rIn * plane, true, s.C * plane, 0, Reduce: true),
                                   dz1, x.Value, 1f, 0f, dA);
                }
                if (g.NeedsInput(0))
                {
                    dx = Tensor.Empty(dy.Device, DType.F32, s.N, s.C, s.H, s.W);
                    Conv2d.BackwardDataInto(s, dy, w0, 1f, 0f, dx);
                    Tucker.Product(BatchedProduct.SharedLeft(s.N, s.C, plane, rIn, transA: true), a.Value, dz1, 1f, 1f, dx);
                }
                return new Gradients([dx], [dA, dCore, dB]);
            }
            catch
            {
                Checks.DisposeAll(dx, dA, dCore, dB);
                throw;
            }
        }, z1, z2);
    }

    private protected override Tensor MergeTarget => W0;

    /// <summary>The core's convolution: r_in channels in, r_out out, the base's window.</summary>
    private ConvShape CoreShape(in ConvShape s) => s with { C = RankIn, O = RankOut };

    /// <summary>y = conv(x, W0) + bias + s·B·conv(A·x, S), with z1 = A·x and z2 = conv(z1, S) kept for the backward.</summary>
    private (Tensor Y, Tensor Z1, Tensor Z2) Apply(in ConvShape s, Tensor x)
    {
        Tensor y = Tensor.Empty(x.Device, DType.F32, s.N, s.O, s.HO, s.WO);
        Tensor? z1 = null, z2 = null;
        try
        {
            z1 = Tensor.Empty(x.Device, DType.F32, s.N, RankIn, s.H, s.W);
            z2 = Tensor.Empty(x.Device, DType.F32, s.N, RankOut, s.HO, s.WO);
            Conv2d.ForwardInto(s, x, W0, Bias, 1f, 0f, y);
            Tucker.Product(BatchedProduct.SharedLeft(s.N, RankIn, s.H * s.W, s.C, transA: false), A.Value, x, 1f, 0f, z1);
            Conv2d.ForwardInto(CoreShape(s), z1, Core.Value, null, 1f, 0f, z2);
            Tucker.Product(BatchedProduct.SharedLeft(s.N, s.O, s.HO * s.WO, RankOut, transA: false), B.Value, z2, Scale, 1f, y);
            return (y, z1, z2);
        }
        catch
        {
            Checks.DisposeAll(y, z1, z2);
            throw;
        }
    }
}
