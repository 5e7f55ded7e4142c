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
            Name = "adalora", DisplayName = "AdaLoRA", Family = VariantFamily.Structural,
            Paper = new("Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning", 2023, "2303.10512"),
            Summary = "ΔW = P·Λ·Q (SVD form); prunes singular values by importance to share a rank budget.",
            ParameterFormula = "init_r·(in + out) + init_r", CountParameters = (i, o, opt) => VariantInfo.RankOr(opt, 12) * (i + o + 1),
            DefaultRank = 12,
            Defaults = "init_r = 12, target_r = 8, alpha = 8, s = alpha/init_r, orth_reg_weight = 0.5, β1 = β2 = 0.85",
            Planned = "the gated-rank kernel family (an SVD-form delta with an importance-driven rank budget)",
        },
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
            Name = "sora", DisplayName = "SoRA", Family = VariantFamily.MathematicalFoundation,
            Paper = new("Sparse Low-rank Adaptation of Pre-trained Language Models", 2023, "2311.11696"),
            Summary = "LoRA with a gate g [r] between A and B, made sparse by a proximal (soft-threshold) step.",
            ParameterFormula = "r·(in + out) + r", CountParameters = (i, o, opt) => VariantInfo.RankOr(opt, 8) * (i + o + 1),
            Defaults = "r = 8, alpha = 16, sparse_lambda = 1e-3, sparse_lambda_2 = 1e-3, g ~ N(0, 1)",
            Planned = "the gated-rank kernel family (a sparse gate trained by a proximal step)",
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
            Name = "mixture-rank1", DisplayName = "Mixture of rank-1 experts", Aliases = ["mora-mixture", "smora"],
            Family = VariantFamily.ArchitectureExtension,
            Paper = new("Each Rank Could be an Expert: Single-Ranked Mixture of Experts LoRA for Multi-Task Learning", 2025, "2501.15103",
                        "the guide's \"MoRA (Mixture of Rank-1 Adapters)\"; SMoRA is the published form"),
            Summary = "ΔW x = Σ_j G(x)_j·u_j v_jᵀ x: rank-1 experts chosen per token by a router.",
            ParameterFormula = "E·(in + out) + E·in (router), E = experts (default r)",
            CountParameters = (i, o, opt) => (opt.Experts ?? VariantInfo.RankOr(opt, 8)) * (i + o) + (opt.Experts ?? VariantInfo.RankOr(opt, 8)) * i,
            Defaults = "E = r = 8 experts, top-k routing",
            Planned = "the gated-rank kernel family with a top-k router",
        },
        new()
        {
            Name = "auto-rank", DisplayName = "Automated r/alpha search", Aliases = ["mira", "autolora"], Family = VariantFamily.Automation,
            Paper = new("AutoLoRA: Automatically Tuning Matrix Ranks in Low-Rank Adaptation Based on Meta Learning", 2024, "2403.09113",
                        "the guide's \"MiRA\" (bilevel search over r, alpha) was not found as a paper; AutoLoRA is the closest published method"),
            Summary = "Bilevel optimization: the inner loop trains the adapter, the outer loop tunes r (and alpha) on validation data.",
            ParameterFormula = "r_max·(in + out) + r_max (selection variables) during search",
            CountParameters = (i, o, opt) => VariantInfo.RankOr(opt, 8) * (i + o + 1),
            Defaults = "r_max = 8 while searching",
            Planned = "the gated-rank kernel family and a search driver over r and alpha",
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
