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
            Name = "sora", DisplayName = "SoRA", Family = VariantFamily.MathematicalFoundation,
            Paper = new("Sparse Low-rank Adaptation of Pre-trained Language Models", 2023, "2311.11696"),
            Summary = "LoRA with a gate g [r] between A and B, made sparse by a proximal (soft-threshold) step.",
            ParameterFormula = "r·(in + out) + r", CountParameters = (i, o, opt) => VariantInfo.RankOr(opt, 8) * (i + o + 1),
            Defaults = "r = 8, alpha = 16, sparse_lambda = 1e-3, sparse_lambda_2 = 1e-3, g ~ N(0, 1)",
            Planned = "the gated-rank kernel family (a sparse gate trained by a proximal step)",
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
}
