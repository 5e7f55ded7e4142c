// A linear layer with a Tucker adapter (FLoRA, Si et al. 2024, for N = 2; LoTR when its factors are shared):
//   y = x W0ᵀ + bias + s·((x Aᵀ) Sᵀ) Bᵀ,   ΔW = s·B·S·A = s·(S ×₁ U_out ×₂ U_in),   s = alpha/r_in,
// A = U_inᵀ [r_in, in], core S [r_out, r_in], B = U_out [out, r_out], per-mode ranks r_in ≤ in and r_out ≤ out. S
// starts at zero, so a new layer computes the base layer; A ~ U(±1/√in) and B ~ U(±1/√r_out) (PEFT's kaiming
// uniform) from SplitMix64(seed), then S's first gradient is Bᵀ·(s·dyᵀ·x Aᵀ), non-zero. s = alpha/r_in follows
// LoRA's alpha/r with r the rank the input is projected to. A dense frozen base (DenseLinear) × the Tucker delta:
// never formed in the forward or backward (Ops.Tucker: LoRA's fused kernels on B' = B·S), only by Merge. With a
// shared TuckerFactors (LoTR) the layer owns only its core; A and B are the group's.
using LoraKernels.Autograd;
using LoraKernels.Runtime;

namespace LoraKernels.Layers;

public sealed class TuckerLinear : TuckerLayer<DenseLinear>
{
    /// <summary>
    /// FLoRA: its own factors with ranks <paramref name="rIn"/> (A) and <paramref name="rOut"/> (B), over <paramref name="w0"/>
    /// [out, in] (and <paramref name="bias"/> [out]) copied to <paramref name="device"/> in <paramref name="dtype"/>.
    /// </summary>
    public TuckerLinear(Device device, Tensor w0, Tensor? bias, int rIn, int rOut, float alpha, ulong seed = 0, DType dtype = DType.F32)
        : base(DenseLinear.Create("TuckerLinear", device, w0, bias, dtype, (outFeatures, inFeatures) =>
        {
            CheckAlpha("TuckerLinear", alpha);
            Ops.Tucker.CheckRank("TuckerLinear", nameof(rIn), "r_in", rIn, inFeatures, "in");
            Ops.Tucker.CheckRank("TuckerLinear", nameof(rOut), "r_out", rOut, outFeatures, "out");
        }), alpha)
    {
        var generator = new SplitMix64(seed);
        Factors = Create(() => TuckerFactors.Draw(device, dtype, InFeatures, OutFeatures, rIn, rOut, generator));
        Core = Create(() => new Parameter("tucker_core", Tensor.Zeros(device, dtype, rOut, rIn)));
    }

    /// <summary>
    /// LoTR: the group's shared <paramref name="factors"/> (not owned; same device, dtype and [out, in] as the layer) and
    /// the layer's own core S [r_out, r_in] = 0.
    /// </summary>
    public TuckerLinear(Device device, Tensor w0, Tensor? bias, TuckerFactors factors, float alpha, DType dtype = DType.F32)
        : base(DenseLinear.Create("TuckerLinear", device, w0, bias, dtype, (outFeatures, inFeatures) =>
        {
            CheckAlpha("TuckerLinear", alpha);
            ArgumentNullException.ThrowIfNull(factors);
            if (!ReferenceEquals(factors.Device, device) || factors.DType != dtype || factors.InFeatures != inFeatures || factors.OutFeatures != outFeatures)
                throw new ArgumentException(
                    $"TuckerLinear: the shared factors are {factors.DType} [in = {factors.InFeatures}, out = {factors.OutFeatures}] on {factors.Device}; the layer needs {dtype} [in = {inFeatures}, out = {outFeatures}] on {device}.",
                    nameof(factors));
        }), alpha)
    {
        Factors = factors;
        Shared = true;
        Core = Create(() => new Parameter("tucker_core", Tensor.Zeros(device, dtype, factors.RankOut, factors.RankIn)));
    }

    /// <summary>The frozen base weight [out, in] (holding W0 + ΔW while merged).</summary>
    public Tensor W0 => Base.Weight;


    public override Tensor Forward(Tensor x)
    {
        ThrowIfDisposed();
        // Merged: W0 already holds ΔW, and a zero scale leaves x W0ᵀ + bias.
        var (y, u) = Ops.Tucker.Forward(x, W0, Bias, A.Value, Core.Value, B.Value, Merged ? 0f : Scale);
        u.Dispose();
        return y;
    }


    /// <summary>Ops.Tucker's forward, recorded with its backward (u = x Aᵀ kept).</summary>
    private protected override Variable Record(Tape tape, Variable x)
    {
        ThrowIfMerged();
        float scale = Scale;
        Parameter a = A, core = Core, b = B;
        Tensor w0 = W0;
        var (y, u) = Ops.Tucker.Forward(x.Value, w0, Bias, a.Value, core.Value, b.Value, scale);
        return tape.Record(y, [x], [a, core, b], g =>
        {
            var (dx, dA, dCore, dB) = Ops.Tucker.Backward(x.Value, w0, a.Value, core.Value, b.Value, u, g.OutputGradient, scale,
                                                          g.NeedsInput(0), g.NeedsParameter(0), g.NeedsParameter(1), g.NeedsParameter(2));
            return new Gradients([dx], [dA, dCore, dB]);
        }, u);
    }

    private protected override Tensor MergeTarget => W0;
}
