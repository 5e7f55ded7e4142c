// The SSM family's catalogue entry: LoRA on a Mamba block's input-dependent projections (MambaPEFT). The
// catalogue's unit is one adapted linear layer over a given base weight, which for this variant is one Mamba
// projection (in_proj, x_proj, dt_proj or out_proj) with LoRA: Create returns that LoraLinear, and the count is
// per adapted projection. MambaBlock assembles the whole block (conv, selective scan, gate) with LoRA on the
// projections chosen by name.
using LoraKernels.Layers;

namespace LoraKernels.Variants;

internal static class SsmVariants
{
    /// <summary>The catalogue entries of this family (Catalogue collects them).</summary>
    public static readonly VariantInfo[] All =
    [
        new()
        {
            Name = "lora-ssm", DisplayName = "LoRA for SSM (Mamba)", Family = VariantFamily.ArchitectureExtension,
            Paper = new("MambaPEFT: Exploring Parameter-Efficient Fine-Tuning for Mamba", 2024, "2411.03855"),
            Summary = "LoRA on Mamba's input-dependent projections (in_proj, x_proj, dt_proj, out_proj; any subset) around the selective scan. " +
                      "Create gives one adapted projection; MambaBlock builds the block.",
            ParameterFormula = "r·(in + out) per adapted projection", CountParameters = (i, o, opt) => VariantInfo.RankOr(opt, 8) * (i + o),
            Backends = VariantInfo.AllDevices, DTypes = [DType.F32],
            Defaults = "as LoRA per projection; Mamba d_state = 16, d_conv = 4, expand = 2, dt_rank = ⌈d_model/16⌉",
            Create = (device, w0, bias, r, options) =>
                new LoraLinear(device, w0, bias, r, options.AlphaOrDefault, options.Dropout, seed: options.Seed, dtype: options.DType),
        },
    ];
}
