// The LoRA family's catalogue entries (LoRA, rsLoRA, PiSSA in PEFT's and the guide's forms, LoRA+, LoRA-FA), each with its layer factory.
using LoraKernels.Layers;

namespace LoraKernels.Variants;

internal static class LoraVariants
{
    /// <summary>The catalogue entries of this family (Catalogue collects them).</summary>
    public static readonly VariantInfo[] All =
    [
        new()
        {
            Name = "lora", DisplayName = "LoRA", Family = VariantFamily.Basic,
            Paper = new("LoRA: Low-Rank Adaptation of Large Language Models", 2021, "2106.09685"),
            Summary = "ΔW = s·B·A with A [r, in] random and B [out, r] = 0; mergeable, no inference cost.",
            ParameterFormula = "r·(in + out)", CountParameters = (i, o, opt) => VariantInfo.RankOr(opt, 8) * (i + o),
            Backends = VariantInfo.AllDevices, DTypes = VariantInfo.DenseDTypes,
            Defaults = "r = 8, alpha = 8 (s = alpha/r), dropout 0, A ~ U(±1/√in), B = 0",
            Create = (device, w0, bias, r, o) => new LoraLinear(device, w0, bias, r, o.AlphaOrDefault, o.Dropout, o.UseRsLora, o.Seed, o.DType, o.Init),
        },
        new()
        {
            Name = "rslora", DisplayName = "rsLoRA", Family = VariantFamily.Basic,
            Paper = new("A Rank Stabilization Scaling Factor for Fine-Tuning with LoRA", 2023, "2312.03732"),
            Summary = "LoRA with s = alpha/√r, so the update's scale stays stable as r grows.",
            ParameterFormula = "r·(in + out)", CountParameters = (i, o, opt) => VariantInfo.RankOr(opt, 8) * (i + o),
            Backends = VariantInfo.AllDevices, DTypes = VariantInfo.DenseDTypes,
            Defaults = "as LoRA, s = alpha/√r",
            Create = (device, w0, bias, r, o) => new LoraLinear(device, w0, bias, r, o.AlphaOrDefault, o.Dropout, useRsLora: true, o.Seed, o.DType, o.Init),
        },
        new()
        {
            Name = "pissa", DisplayName = "PiSSA", Family = VariantFamily.MathematicalFoundation,
            Paper = new("PiSSA: Principal Singular Values and Singular Vectors Adaptation of Large Language Models", 2024, "2404.02948"),
            Summary = "LoRA initialised with W0's top-r singular triplets; the base keeps the residual W0 − s·B·A; both factors train (PEFT's form).",
            ParameterFormula = "r·(in + out)", CountParameters = (i, o, opt) => VariantInfo.RankOr(opt, 8) * (i + o),
            Backends = VariantInfo.AllDevices, DTypes = VariantInfo.DenseDTypes,
            Defaults = "as LoRA; exact SVD, or randomized with K subspace iterations (pissa_niter_K); S_r/s",
            Create = (device, w0, bias, r, o) => Pissa.CreateLayer(device, w0, bias, r, o.AlphaOrDefault, o.Dropout, o.UseRsLora, o.PissaIterations, o.Seed, o.DType),
        },
        new()
        {
            Name = "pissa-fa", DisplayName = "PiSSA, V frozen", Aliases = ["pissa-frozen-v"], Family = VariantFamily.MathematicalFoundation,
            Paper = new("PiSSA: Principal Singular Values and Singular Vectors Adaptation of Large Language Models", 2024, "2404.02948"),
            Summary = "PiSSA as the guide describes it: after the SVD init only U_r and S_r train (B), V_r stays frozen (A, as LoRA-FA).",
            ParameterFormula = "r·out", CountParameters = (i, o, opt) => VariantInfo.RankOr(opt, 8) * o,
            Backends = VariantInfo.AllDevices, DTypes = VariantInfo.DenseDTypes,
            Defaults = "as PiSSA; A = √S_r'·V_rᵀ frozen",
            Create = (device, w0, bias, r, o) => Pissa.CreateLayerWithFrozenV(device, w0, bias, r, o.AlphaOrDefault, o.Dropout, o.UseRsLora, o.PissaIterations, o.Seed, o.DType),
        },
        new()
        {
            Name = "lora+", DisplayName = "LoRA+", Aliases = ["loraplus", "lora-plus"], Family = VariantFamily.MathematicalFoundation,
            Paper = new("LoRA+: Efficient Low Rank Adaptation of Large Models", 2024, "2402.12354"),
            Summary = "LoRA trained with B's learning rate ratio× A's (Optim.LoraPlus groups the parameters).",
            ParameterFormula = "r·(in + out)", CountParameters = (i, o, opt) => VariantInfo.RankOr(opt, 8) * (i + o),
            Backends = VariantInfo.AllDevices, DTypes = VariantInfo.DenseDTypes,
            Defaults = "ratio η_B/η_A = 16, weight decay 0 (PEFT's groups: groupA, groupB, groupB_no_decay)",
            Create = (device, w0, bias, r, o) => new LoraLinear(device, w0, bias, r, o.AlphaOrDefault, o.Dropout, o.UseRsLora, o.Seed, o.DType, o.Init),
        },
        new()
        {
            Name = "lora-fa", DisplayName = "LoRA-FA", Aliases = ["lorafa"], Family = VariantFamily.MemoryEfficiency,
            Paper = new("LoRA-FA: Memory-efficient Low-rank Adaptation for Large Language Models Fine-tuning", 2023, "2308.03303"),
            Summary = "LoRA with A frozen at its random init: only B trains, and backward keeps x·Aᵀ instead of x.",
            ParameterFormula = "r·out", CountParameters = (i, o, opt) => VariantInfo.RankOr(opt, 8) * o,
            Backends = VariantInfo.AllDevices, DTypes = VariantInfo.DenseDTypes,
            Defaults = "as LoRA; A frozen",
            Create = (device, w0, bias, r, o) => new LoraFaLinear(device, w0, bias, r, o.AlphaOrDefault, o.Dropout, o.UseRsLora, o.Seed, o.DType, o.Init),
        },
    ];
}
