// The gated-rank family's catalogue entries (SoRA, AdaLoRA, the guide's MoRA: a mixture of rank-1
// experts, and the guide's MiRA: an automatic r/α search), each with its layer factory. The guide's
// "MoRA" and "MiRA" are implemented as the guide defines them; their paper fields cite the nearest
// published methods and say how those differ.
using LoraKernels.Layers;

namespace LoraKernels.Variants;

internal static class GatedVariants
{
    /// <summary>SoRA's default alpha (its run scripts use r = 8, alpha = 16).</summary>
    private const float SoraAlpha = 16f;

    /// <summary>The mixture's defaults: E = r experts per pool, 2 of them per token (Mixtral's top-2).</summary>
    private const int DefaultTopK = 2;

    /// <summary>The catalogue entries of this family (Catalogue collects them).</summary>
    public static readonly VariantInfo[] All =
    [
        new()
        {
            Name = "adalora", DisplayName = "AdaLoRA", Family = VariantFamily.Structural,
            Paper = new("Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning", 2023, "2303.10512"),
            Summary = "ΔW = P·Λ·Q (SVD form); prunes singular values by importance to share a rank budget (AdaLoraAllocator).",
            ParameterFormula = "init_r·(in + out) + init_r", CountParameters = (i, o, opt) => VariantInfo.RankOr(opt, 12) * (i + o + 1),
            DefaultRank = 12,
            Backends = VariantInfo.AllDevices, DTypes = VariantInfo.DenseDTypes,
            Defaults = "init_r = 12, target_r = 8, alpha = 8, s = alpha/(init_r + 1e-5), orth_reg_weight = 0.5, β1 = β2 = 0.85, Λ = 0, A, B ~ N(0, 0.02)",
            Create = (device, w0, bias, r, o) => new AdaLoraLinear(device, w0, bias, r, o.AlphaOrDefault, o.Dropout, o.Seed, o.DType),
        },
        new()
        {
            Name = "sora", DisplayName = "SoRA", Family = VariantFamily.MathematicalFoundation,
            Paper = new("Sparse Low-rank Adaptation of Pre-trained Language Models", 2023, "2311.11696"),
            Summary = "LoRA with a gate g [r] between A and B, made sparse by a proximal (soft-threshold) step (SoraGates); zero-gated ranks are pruned.",
            ParameterFormula = "r·(in + out) + r", CountParameters = (i, o, opt) => VariantInfo.RankOr(opt, 8) * (i + o + 1),
            Backends = VariantInfo.AllDevices, DTypes = VariantInfo.DenseDTypes,
            Defaults = "r = 8, alpha = 16, sparse_lambda = 1e-3, sparse_lambda_2 = 1e-3, g ~ N(0, 1), gates without weight decay",
            Create = (device, w0, bias, r, o) => new GatedRankLinear(device, w0, bias, r, o.Alpha ?? SoraAlpha, o.Dropout, o.Seed, o.DType),
        },
        new()
        {
            Name = "mixture-rank1", DisplayName = "MoRA (mixture of rank-1 experts)", Aliases = ["mora-mixture", "smora"],
            Family = VariantFamily.ArchitectureExtension,
            Paper = new("Each Rank Could be an Expert: Single-Ranked Mixture of Experts LoRA for Multi-Task Learning", 2025, "2501.15103",
                        "the guide's \"MoRA (Mixture of Rank-1 Adapters)\": a pool of rank-1 experts shared by the modules and a router per module; " +
                        "no paper of that name defines it (arXiv 2405.12130, \"MoRA: High-Rank Updating\", is an unrelated method). " +
                        "SMoRA, the nearest published method, routes the ranks of each module's own LoRA; this follows the guide"),
            Summary = "ΔW_i x = Σ_j G(x)_{i,j}·u_j·v_jᵀx: a pool of E rank-1 experts shared by the modules of one width, a top-k softmax router per module, a load-balancing loss.",
            ParameterFormula = "E·(in + out) + E·in (router); the pool counted once per width, E = experts (default r)",
            CountParameters = (i, o, opt) => (opt.Experts ?? VariantInfo.RankOr(opt, 8)) * (i + o) + (opt.Experts ?? VariantInfo.RankOr(opt, 8)) * i,
            Backends = VariantInfo.AllDevices, DTypes = VariantInfo.DenseDTypes,
            Defaults = "E = r = 8 experts, top-2 renormalised (dense softmax optional), s = alpha/k, load-balancing coefficient 0.01, v ~ U(±1/√in), u = 0",
            Create = CreateMixture,
        },
        new()
        {
            Name = "auto-rank", DisplayName = "MiRA (automatic r/alpha search)", Aliases = ["mira", "autolora"], Family = VariantFamily.Automation,
            Paper = new("AutoLoRA: Automatically Tuning Matrix Ranks in Low-Rank Adaptation Based on Meta Learning", 2024, "2403.09113",
                        "the guide's \"MiRA\" (mirror descent for LoRA automation: a bilevel search over r and α) was not found as a paper; " +
                        "AutoLoRA (a bilevel search over per-rank selection variables) is the nearest published method; this follows the guide " +
                        "(MiraSearch; docs/DECISIONS.md says where the two differ)"),
            Summary = "Bilevel search: the inner loop trains the adapter, the outer loop moves each layer's rank distribution (mirror descent on the simplex) and log α on validation data.",
            ParameterFormula = "r_max·(in + out) + r_max (the gate) while searching; r·(in + out) after",
            CountParameters = (i, o, opt) => VariantInfo.RankOr(opt, 16) * (i + o + 1),
            DefaultRank = 16,
            Backends = VariantInfo.AllDevices, DTypes = VariantInfo.DenseDTypes,
            Defaults = "candidate ranks 2, 4, 8, 16 (r_max = 16), α₀ = 16, 50 warm-up + 8 outer × 50 inner steps, ε = 0.5, η_π = 2, η_log α = 0.1 (relative to the mean candidate loss)",
            Create = (device, w0, bias, r, o) => new GatedRankLinear(device, w0, bias, r, o.AlphaOrDefault, o.Dropout, o.Seed, o.DType,
                                                                     initialGate: Enumerable.Repeat(1f, Math.Max(r, 0)).ToArray()),
        },
    ];

    /// <summary>A mixture layer over the options' shared pool, or over a pool of its own with options.Experts (default r) experts.</summary>
    private static IAdapterLayer CreateMixture(Device device, Tensor w0, Tensor? bias, int r, AdapterOptions options) =>
        new RankOneMixtureLinear(device, w0, bias, options.ExpertPool, options.Experts ?? r, options.TopK ?? DefaultTopK, options.AlphaOrDefault,
                                 options.DenseRouting, options.BalanceCoefficient ?? RankOneMixtureLinear.DefaultBalanceCoefficient,
                                 options.Dropout, options.Seed, options.DType);
}
