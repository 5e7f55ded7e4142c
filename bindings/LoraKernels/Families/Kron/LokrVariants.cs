// The Kronecker family's catalogue entry (LoKr / KronA), with its layer factory: a LokrLinear over a [out, in]
// weight, a LokrConv2d over a [O, C, kh, kw] one (AdapterOptions.Convolution gives its window).
using LoraKernels.Families.Kron;
using LoraKernels.Layers;

namespace LoraKernels.Variants;

internal static class LokrVariants
{
    /// <summary>The catalogue entries of this family (Catalogue collects them).</summary>
    public static readonly VariantInfo[] All =
    [
        new()
        {
            Name = "lokr", DisplayName = "LoKr / KronA", Aliases = ["krona", "klora"], Family = VariantFamily.Structural,
            Paper = new("KronA: Parameter Efficient Tuning with Kronecker Adapter", 2022, "2212.10650",
                        "LoKr: LyCORIS, arXiv:2309.14859"),
            Summary = "ΔW = s·kron(w1, w2), w1 [out_l, in_m], w2 [out_k, in_n] (low-rank when r < max(out_k, in_n)/2); never formed [out, in].",
            ParameterFormula = "|w1| + |w2|; w1, w2 Kronecker factors of [out, in]",
            CountParameters = Parameters,
            Backends = VariantInfo.AllDevices, DTypes = VariantInfo.DenseDTypes,
            Defaults = "r = 8, alpha = 8 (s = alpha/r), decompose_factor = -1, decompose_both = false, w1 = 0, w2 kaiming",
            Create = CreateLokr,
        },
    ];

    /// <summary>LoKr's trainable parameters on a linear layer (REFERENCE.md §5.3): w1 full or low-rank, w2 full or low-rank.</summary>
    private static long Parameters(long inFeatures, long outFeatures, AdapterOptions options)
    {
        long r = VariantInfo.RankOr(options, 8);
        var (inM, inN) = Ops.Kron.Factorization(inFeatures, options.LoKrFactor);
        var (outL, outK) = Ops.Kron.Factorization(outFeatures, options.LoKrFactor);
        long w1 = LokrDelta.UsesFullW1(outL, inM, r, options.LoKrDecomposeBoth) ? outL * inM : r * (outL + inM);
        long w2 = LokrDelta.UsesFullW2(outK, inN, r) ? outK * inN : r * (outK + inN);
        return w1 + w2;
    }

    private static IAdapterLayer CreateLokr(Device device, Tensor w0, Tensor? bias, int r, AdapterOptions o) =>
        w0.Rank == 4
            ? new LokrConv2d(device, w0, bias, r, o.AlphaOrDefault, o.Convolution, o.LoKrFactor, o.LoKrDecomposeBoth, seed: o.Seed)
            : new LokrLinear(device, w0, bias, r, o.AlphaOrDefault, o.LoKrFactor, o.LoKrDecomposeBoth, seed: o.Seed, dtype: o.DType);
}
