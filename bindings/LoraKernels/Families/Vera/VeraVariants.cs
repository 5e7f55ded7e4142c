// The VeRA family's catalogue entry, with its layer factory over the caller's shared projections.
using LoraKernels.Layers;

namespace LoraKernels.Variants;

internal static class VeraVariants
{
    /// <summary>The catalogue entries of this family (Catalogue collects them).</summary>
    public static readonly VariantInfo[] All =
    [
        new()
        {
            Name = "vera", DisplayName = "VeRA", Family = VariantFamily.MathematicalFoundation,
            Paper = new("VeRA: Vector-based Random Matrix Adaptation", 2023, "2310.11454"),
            Summary = "ΔW = diag(λ_b)·B·diag(λ_d)·A with A, B frozen random and shared by all layers; trains two vectors.",
            ParameterFormula = "r + out", CountParameters = (i, o, opt) => VariantInfo.RankOr(opt, 256) + o,
            DefaultRank = 256,
            Backends = VariantInfo.AllDevices, DTypes = VariantInfo.DenseDTypes,
            Defaults = "r = 256, projection_prng_key = 0, d_initial = 0.1, λ_b = 0, A, B ~ U(±√(6/fan_in))",
            Create = CreateVera,
        },
    ];

    /// <summary>A VeRA layer over the caller's shared projections (they must hold rank r and this layer's shape).</summary>
    private static IAdapterLayer CreateVera(Device device, Tensor w0, Tensor? bias, int r, AdapterOptions options)
    {
        VeraProjections projections = options.VeraProjections
            ?? throw new ArgumentException(
                "Catalogue: VeRA's frozen projections are shared by all the VeRA layers of a model; create them once with " +
                "VeraProjections.ForLayers and pass them as AdapterOptions.VeraProjections.", nameof(options));
        if (projections.Rank != r)
            throw new ArgumentException($"Catalogue: the VeRA projections have rank {projections.Rank}, the options ask for r = {r}.", nameof(options));
        return new VeraLinear(device, w0, bias, projections, options.Dropout, options.VeraDInitial, options.DType, options.Seed);
    }
}
