// The Tucker family's catalogue entries (FLoRA, LoTR), with their layer factories: a TuckerLinear over a [out, in]
// weight, a TuckerConv2d over a [O, C, kh, kw] one (AdapterOptions.Convolution gives its window); r is both ranks.
using LoraKernels.Layers;

namespace LoraKernels.Variants;

internal static class TuckerVariants
{
    /// <summary>The catalogue entries of this family (Catalogue collects them).</summary>
    public static readonly VariantInfo[] All =
    [
        new()
        {
            Name = "flora", DisplayName = "FLoRA (Tucker)", Family = VariantFamily.Structural,
            Paper = new("FLoRA: Low-Rank Core Space for N-dimension", 2024, "2405.14739"),
            Summary = "ΔW = s·(S ×₁ U_out ×₂ U_in ...), a trainable core S per layer; linear: B·S·A, conv: three-stage 1×1, kh×kw, 1×1.",
            ParameterFormula = "r·(in + out) + r²", CountParameters = (i, o, opt) => VariantInfo.RankOr(opt, 8) * (i + o) + VariantInfo.RankOr(opt, 8) * VariantInfo.RankOr(opt, 8),
            Backends = VariantInfo.AllDevices, DTypes = VariantInfo.DenseDTypes,
            Defaults = "r = 8 per channel mode, alpha = 8 (s = alpha/r), S = 0, U ~ kaiming-uniform",
            Create = (device, w0, bias, r, o) => w0.Rank == 4
                ? new TuckerConv2d(device, w0, bias, r, r, o.AlphaOrDefault, o.Convolution, o.Seed)
                : new TuckerLinear(device, w0, bias, r, r, o.AlphaOrDefault, o.Seed, o.DType),
        },
        new()
        {
            Name = "lotr", DisplayName = "LoTR", Family = VariantFamily.ArchitectureExtension,
            Paper = new("LoTR: Low Tensor Rank Weight Adaptation", 2024, "2402.01376"),
            Summary = "Tucker-form adapters B·S_l·A with A, B shared across layers and a small core per layer.",
            ParameterFormula = "r² per layer (+ r·(in + out) shared by the layers)", CountParameters = (i, o, opt) => VariantInfo.RankOr(opt, 8) * VariantInfo.RankOr(opt, 8) + VariantInfo.RankOr(opt, 8) * (i + o),
            Backends = VariantInfo.AllDevices, DTypes = VariantInfo.DenseDTypes,
            Defaults = "r = 8; the group's factors from AdapterOptions.TuckerFactors (a layer without them owns its own, as FLoRA)",
            Create = CreateLotr,
        },
    ];

    /// <summary>A LoTR layer over the caller's shared factors, or over its own when none are given (a group of one).</summary>
    private static IAdapterLayer CreateLotr(Device device, Tensor w0, Tensor? bias, int r, AdapterOptions o)
    {
        if (o.TuckerFactors is not { } factors) return new TuckerLinear(device, w0, bias, r, r, o.AlphaOrDefault, o.Seed, o.DType);
        if (factors.RankIn != r || factors.RankOut != r)
            throw new ArgumentException($"Catalogue: the shared Tucker factors have ranks ({factors.RankIn}, {factors.RankOut}), the options ask for r = {r}.", nameof(o));
        return new TuckerLinear(device, w0, bias, factors, o.AlphaOrDefault, o.DType);
    }
}
