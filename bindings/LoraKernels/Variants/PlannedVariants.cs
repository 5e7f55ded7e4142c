// The variants of the guide that this build does not have yet: each entry says what it needs (Planned),
// its paper and its parameter count, so the catalogue and the `lora variants` command list them honestly.
// When a family lands, its entries move into its folder with a layer factory.

namespace LoraKernels.Variants;

internal static class PlannedVariants
{
    /// <summary>The catalogue entries of this family (Catalogue collects them).</summary>
    public static readonly VariantInfo[] All =
    [
        new()
        {
            Name = "lokr", DisplayName = "LoKr / KronA", Aliases = ["krona", "klora"], Family = VariantFamily.Structural,
            Paper = new("KronA: Parameter Efficient Tuning with Kronecker Adapter", 2022, "2212.10650",
                        "LoKr: LyCORIS, arXiv:2309.14859"),
            Summary = "ΔW = s·kron(w1, w2), w1 [out_l, in_m], w2 [out_k, in_n] (low-rank when r < max(out_k, in_n)/2).",
            ParameterFormula = "|w1| + |w2|; w1, w2 Kronecker factors of [out, in]",
            CountParameters = LoKrParameters,
            Defaults = "r = 8, alpha = 8, decompose_factor = -1, decompose_both = false, w1 = 0",
            Planned = "the Kronecker kernel family (kron.cu)",
        },
        new()
        {
            Name = "flora", DisplayName = "FLoRA (Tucker)", Family = VariantFamily.Structural,
            Paper = new("FLoRA: Low-Rank Core Space for N-dimension", 2024, "2405.14739"),
            Summary = "ΔW = G ×₁ U₁ ×₂ U₂ (Tucker, a trainable core); for a linear layer U₁ G U₂ᵀ, G [r, r].",
            ParameterFormula = "r·(in + out) + r²", CountParameters = (i, o, opt) => VariantInfo.RankOr(opt, 8) * (i + o) + VariantInfo.RankOr(opt, 8) * VariantInfo.RankOr(opt, 8),
            Defaults = "r = 8 per mode",
            Planned = "the Tucker kernel family (tucker.cu)",
        },
        new()
        {
            Name = "lotr", DisplayName = "LoTR", Family = VariantFamily.ArchitectureExtension,
            Paper = new("LoTR: Low Tensor Rank Weight Adaptation", 2024, "2402.01376"),
            Summary = "Tucker-form adapters U·G_l·Vᵀ with U, V shared across layers and a small core per layer (4-D kernels too).",
            ParameterFormula = "r² per layer (+ r·(in + out) shared by the layers)", CountParameters = (i, o, opt) => VariantInfo.RankOr(opt, 8) * VariantInfo.RankOr(opt, 8) + VariantInfo.RankOr(opt, 8) * (i + o),
            Defaults = "r = 8; parameter count shown for one layer holding the shared factors",
            Planned = "the Tucker kernel family (tucker.cu)",
        },
        new()
        {
            Name = "lora-moe", DisplayName = "LoRA for MoE experts", Family = VariantFamily.ArchitectureExtension,
            Paper = new("none: PEFT's target_parameters (ParamWrapper) for stacked expert weights", 2025, null,
                        "no single paper; REFERENCE.md 7.5"),
            Summary = "One LoRA per expert of a 3-D [E, in, out] expert weight: A [E·r, in], B [out, E·r].",
            ParameterFormula = "E·r·(in + out) for E experts (shown for E = 8)",
            CountParameters = (i, o, opt) => (opt.Experts ?? 8) * VariantInfo.RankOr(opt, 8) * (i + o),
            Defaults = "as LoRA, per expert",
            Planned = "the segmented multi-adapter kernels (one LoRA per expert)",
        },
        new()
        {
            Name = "lora-ssm", DisplayName = "LoRA for SSM (Mamba)", Family = VariantFamily.ArchitectureExtension,
            Paper = new("MambaPEFT: Exploring Parameter-Efficient Fine-Tuning for Mamba", 2024, "2411.03855"),
            Summary = "LoRA on Mamba's input-dependent projections (partial LoRA on x_proj, dt_proj, in/out_proj).",
            ParameterFormula = "r·(in + out) per adapted projection", CountParameters = (i, o, opt) => VariantInfo.RankOr(opt, 8) * (i + o),
            Defaults = "as LoRA",
            Planned = "the selective-scan (Mamba) kernels",
        },
    ];

    /// <summary>PEFT's factorization(d, f) (REFERENCE.md 5.2): a divisor pair (m ≤ n) of d, nearest √d when f = -1.</summary>
    internal static (long M, long N) Factorization(long dimension, int factor)
    {
        if (factor > 0 && dimension % factor == 0)
        {
            long other = dimension / factor;
            return (Math.Min(factor, other), Math.Max(factor, other));
        }
        long limit = factor == -1 || factor <= 0 ? dimension : factor;
        long m = 1, n = dimension;
        while (m < n)
        {
            long next = m + 1;
            while (dimension % next != 0) next++;
            long nextN = dimension / next;
            if (next + nextN > m + n || next > limit) break;
            m = next;
            n = nextN;
        }
        return (Math.Min(m, n), Math.Max(m, n));
    }

    /// <summary>LoKr's trainable parameters (REFERENCE.md 5.3): w1 full or low-rank, w2 full or low-rank.</summary>
    private static long LoKrParameters(long inFeatures, long outFeatures, AdapterOptions options)
    {
        long r = VariantInfo.RankOr(options, 8);
        (long inM, long inN) = Factorization(inFeatures, options.LoKrFactor);
        (long outL, long outK) = Factorization(outFeatures, options.LoKrFactor);
        long w1 = options.LoKrDecomposeBoth && r < Math.Max(outL, inM) / 2.0 ? r * (outL + inM) : outL * inM;
        long w2 = r >= Math.Max(outK, inN) / 2.0 ? outK * inN : r * (outK + inN);
        return w1 + w2;
    }

}
