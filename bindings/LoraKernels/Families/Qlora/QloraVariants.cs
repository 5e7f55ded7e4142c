// The QLoRA family's catalogue entries (QLoRA, LoftQ), each with its layer factory.
using LoraKernels.Layers;

namespace LoraKernels.Variants;

internal static class QloraVariants
{
    /// <summary>The catalogue entries of this family (Catalogue collects them).</summary>
    public static readonly VariantInfo[] All =
    [
        new()
        {
            Name = "qlora", DisplayName = "QLoRA", Family = VariantFamily.MemoryEfficiency,
            Paper = new("QLoRA: Efficient Finetuning of Quantized LLMs", 2023, "2305.14314"),
            Summary = "LoRA over a frozen 4-bit NormalFloat base with double-quantized absmax.",
            ParameterFormula = "r·(in + out)", CountParameters = (i, o, opt) => VariantInfo.RankOr(opt, 8) * (i + o),
            Backends = VariantInfo.AllDevices, DTypes = VariantInfo.DenseDTypes,
            Defaults = "NF4, block 64, double quantization, compute dtype of the layer; LoRA defaults",
            Create = (device, w0, bias, r, o) => new QloraLinear(device, w0, bias, r, o.AlphaOrDefault, o.Dropout, o.UseRsLora, o.Seed, o.DType, init: o.Init),
        },
        new()
        {
            Name = "loftq", DisplayName = "LoftQ", Family = VariantFamily.MemoryEfficiency,
            Paper = new("LoftQ: LoRA-Fine-Tuning-Aware Quantization for Large Language Models", 2023, "2310.08659"),
            Summary = "QLoRA whose NF4 base and A, B are initialised jointly: W0 ≈ deq(Q) + B·A by alternating quantization and SVD.",
            ParameterFormula = "r·(in + out)", CountParameters = (i, o, opt) => VariantInfo.RankOr(opt, 8) * (i + o),
            Backends = VariantInfo.AllDevices, DTypes = [DType.F32],
            Defaults = "4 bits (NF4), loftq_iter = 1, no alpha/r compensation (as PEFT)",
            Create = CreateLoftQ,
        },
    ];

    /// <summary>A QLoRA layer initialised by LoftQ: its NF4 base and A, B from LoftQ.Initialize.</summary>
    private static IAdapterLayer CreateLoftQ(Device device, Tensor w0, Tensor? bias, int r, AdapterOptions options)
    {
        if (options.DType != DType.F32)
            throw new NotSupportedException($"Catalogue: LoftQ builds F32 layers in this build (its quantized base dequantizes to F32); got {options.DType}.");
        float alpha = options.AlphaOrDefault, scale = Layers.LowRankDelta.ScaleOf(alpha, r, options.UseRsLora);
        Tensor onDevice = w0.To(device);
        Tensor weight = onDevice;
        try
        {
            if (weight.DType != DType.F32) weight = Ops.Elementwise.Cast(onDevice, DType.F32);
            var (q, a, b) = LoftQ.Initialize(weight, r, options.LoftQIterations, scale: scale);
            using (a)
            using (b)
            {
                var layer = new QloraLinear(new Nf4Linear(q, bias), r, alpha, options.Dropout, options.UseRsLora, options.Seed, options.Init);
                try
                {
                    layer.A.Value.CopyFrom(a.ToArray());
                    layer.B.Value.CopyFrom(b.ToArray());
                    return layer;
                }
                catch
                {
                    layer.Dispose();
                    throw;
                }
            }
        }
        finally
        {
            if (!ReferenceEquals(weight, onDevice)) weight.Dispose();
            onDevice.Dispose();
        }
    }
}
