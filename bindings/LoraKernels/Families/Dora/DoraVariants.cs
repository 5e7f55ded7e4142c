// The DoRA family's catalogue entries (DoRA, QDoRA), each with its layer factory.
using LoraKernels.Layers;

namespace LoraKernels.Variants;

internal static class DoraVariants
{
    /// <summary>The catalogue entries of this family (Catalogue collects them).</summary>
    public static readonly VariantInfo[] All =
    [
        new()
        {
            Name = "dora", DisplayName = "DoRA", Family = VariantFamily.Structural,
            Paper = new("DoRA: Weight-Decomposed Low-Rank Adaptation", 2024, "2402.09353"),
            Summary = "W' = m ⊙ (W0 + s·B·A)/‖W0 + s·B·A‖_row: a trained magnitude per output and a LoRA direction.",
            ParameterFormula = "r·(in + out) + out", CountParameters = (i, o, opt) => VariantInfo.RankOr(opt, 8) * (i + o) + o,
            Backends = VariantInfo.AllDevices, DTypes = VariantInfo.DenseDTypes,
            Defaults = "as LoRA; m = ‖W0‖_row; the norm is detached from the graph",
            Create = (device, w0, bias, r, o) => new DoraLinear(device, w0, bias, r, o.AlphaOrDefault, o.Dropout, o.UseRsLora, o.Seed, o.DType, init: o.Init),
        },
        new()
        {
            Name = "qdora", DisplayName = "QDoRA", Family = VariantFamily.MemoryEfficiency,
            Paper = new("DoRA: Weight-Decomposed Low-Rank Adaptation", 2024, "2402.09353",
                        "QDoRA (Answer.AI, 2024) is DoRA over a QLoRA base and has no paper of its own"),
            Summary = "DoRA over a frozen NF4 base (the base is dequantized for the row norm).",
            ParameterFormula = "r·(in + out) + out", CountParameters = (i, o, opt) => VariantInfo.RankOr(opt, 8) * (i + o) + o,
            Backends = VariantInfo.AllDevices, DTypes = [DType.F32],
            Defaults = "as DoRA and QLoRA (NF4, block 64, double quantization); F32 compute dtype; no merge",
            Create = CreateQDora,
        },
    ];

    /// <summary>A DoRA layer over w0 quantized as QLoRA's base (NF4, block 64, double quantization), F32 only.</summary>
    private static IAdapterLayer CreateQDora(Device device, Tensor w0, Tensor? bias, int r, AdapterOptions options)
    {
        if (options.DType != DType.F32)
            throw new NotSupportedException($"Catalogue: QDoRA builds F32 layers in this build (its norm reads A·deq(W)ᵀ in fp32); got {options.DType}.");
        QuantizedWeight quantized;
        using (Tensor onDevice = w0.To(device))
        {
            if (onDevice.DType == DType.F32)
            {
                quantized = Ops.Nf4.Quantize(onDevice, QuantType.Nf4, blockSize: 64, doubleQuant: true);
            }
            else
            {
                using Tensor weight = Ops.Elementwise.Cast(onDevice, DType.F32);
                quantized = Ops.Nf4.Quantize(weight, QuantType.Nf4, blockSize: 64, doubleQuant: true);
            }
        }
        // The layer owns the quantized weight from here (it disposes it if construction fails).
        return new DoraLinear(device, quantized, bias, r, options.AlphaOrDefault, options.Dropout, options.UseRsLora, options.Seed, options.Init);
    }
}
