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
}
