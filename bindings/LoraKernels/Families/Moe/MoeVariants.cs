// The MoE family's catalogue entry: LoRA on each expert of a mixture-of-experts layer. Over a single
// base weight (what Catalogue.Create is given) it builds an upcycled MoE layer: E frozen linear experts
// that are copies of W0 (sparse upcycling), a frozen random router, top-2 routing and LoRA on every
// expert, so a new layer computes exactly the base (B = 0, routing weights summing to 1) and training
// lets the experts diverge through their adapters. A MoE model's own experts and router go through
// MoeExperts and MoeLoraLayer directly.
using LoraKernels.Layers;
using LoraKernels.Runtime;

namespace LoraKernels.Variants;

internal static class MoeVariants
{
    private const int DefaultExperts = 8, TopK = 2;
    // Separates the router's draws from the adapters' (both come from the options' seed).
    private const ulong RouterStream = 0x5851F42D4C957F2Dul;

    /// <summary>The catalogue entries of this family (Catalogue collects them).</summary>
    public static readonly VariantInfo[] All =
    [
        new()
        {
            Name = "lora-moe", DisplayName = "LoRA for MoE experts", Family = VariantFamily.ArchitectureExtension,
            Paper = new("none: PEFT's target_parameters (ParamWrapper) for stacked expert weights", 2025, null,
                        "no single paper; REFERENCE.md 7.5"),
            Summary = "One LoRA per expert of a token-routed MoE layer (top-k router, linear or SwiGLU experts); only the chosen experts run.",
            ParameterFormula = "E·r·(in + out) for E experts (shown for E = 8)",
            CountParameters = (i, o, opt) => (opt.Experts ?? DefaultExperts) * VariantInfo.RankOr(opt, 8) * (i + o),
            Backends = VariantInfo.AllDevices, DTypes = [DType.F32],
            Defaults = "E = 8 experts upcycled from W0, frozen random router, top-2 (softmax over the chosen), LoRA as PEFT on every expert",
            Create = CreateUpcycled,
        },
    ];

    /// <summary>E copies of W0 as frozen linear experts, a frozen router U(±1/√in), top-2 routing, LoRA of rank r on every expert.</summary>
    private static IAdapterLayer CreateUpcycled(Device device, Tensor w0, Tensor? bias, int r, AdapterOptions options)
    {
        if (options.DType != DType.F32)
            throw new NotSupportedException($"Catalogue: the MoE layer is F32 only, the options ask for {options.DType}.");
        Ops.Checks.Alive(w0, "Catalogue lora-moe", nameof(w0));
        (long outFeatures, long inFeatures) = Ops.Checks.Matrix("Catalogue lora-moe", nameof(w0), w0, "out, in");
        int experts = options.Experts ?? DefaultExperts;
        if (experts < 1) throw new ArgumentOutOfRangeException(nameof(options), experts, "Catalogue: AdapterOptions.Experts must be >= 1.");
        float[] weight = w0.ToArray();
        var table = new float[experts * weight.LongLength];
        for (int e = 0; e < experts; e++) weight.CopyTo(table, e * weight.LongLength);
        var generator = new SplitMix64(options.Seed ^ RouterStream);
        float bound = 1f / MathF.Sqrt(inFeatures);
        var router = new float[experts * inFeatures];
        for (int i = 0; i < router.Length; i++) router[i] = generator.NextUniform(bound);
        using Tensor tableTensor = Tensor.FromArray(device, table, experts, outFeatures, inFeatures);
        using Tensor routerTensor = Tensor.FromArray(device, router, experts, inFeatures);
        MoeExperts frozen = MoeExperts.Linear(device, tableTensor, bias);
        try
        {
            return new MoeLoraLayer(frozen, routerTensor, Math.Min(TopK, experts), r, options.AlphaOrDefault, seed: options.Seed);
        }
        catch
        {
            frozen.Dispose();
            throw;
        }
    }
}
