// Quantizes a model's safetensors to bitsandbytes' 4-bit format, as loading it with
// BitsAndBytesConfig(load_in_4bit=True) and saving it would: every selected linear weight
// "<module>.weight" becomes its Linear4bit state (REFERENCE.md §8.5: packed codes, absmax or the
// double-quantized absmax, quant maps and the quant_state JSON under the same prefix); every other
// tensor is copied byte for byte. By default the selection is the 2-D floating-point ".weight"
// tensors except embeddings and lm_head (bitsandbytes' integration keeps lm_head dense). Each
// weight is quantized once, into a spill file (SpillFile), so memory stays bounded by one weight.
// An F16 weight is quantized from fp32 and its state records dtype float32 (this library's tensors
// are F32 or BF16); F32 and BF16 weights keep their dtype.
using System.Diagnostics;
using LoraKernels.Ops;

namespace LoraKernels.IO;

/// <summary>How <see cref="ModelQuantizer.Quantize"/> runs.</summary>
public sealed record QuantizeOptions
{
    public QuantType QuantType { get; init; } = QuantType.Nf4;
    public int BlockSize { get; init; } = 64;
    /// <summary>bitsandbytes' compress_statistics (QLoRA's double quantization).</summary>
    public bool DoubleQuant { get; init; }
    /// <summary>Which tensors to quantize (default: <see cref="ModelQuantizer.IsLinearWeight"/>).</summary>
    public Func<SafeTensorInfo, bool>? Select { get; init; }
    /// <summary>Where the quantization runs (default: the CPU).</summary>
    public Device? Device { get; init; }
    public IProgress<MergeProgress>? Progress { get; init; }
}

/// <summary>One quantized weight: its shape, bytes before and after, and the error deq(Q) − W.</summary>
public sealed record QuantizedTensor(string Name, IReadOnlyList<long> Shape, SafeTensorDType SourceDType, long SourceBytes, long QuantizedBytes,
                                     QuantizationError Error);

public sealed record QuantizeReport(string Output, IReadOnlyList<QuantizedTensor> Tensors, int TensorsCopied, long InputBytes, long OutputBytes,
                                    TimeSpan Elapsed);

public static class ModelQuantizer
{
    /// <summary>A 2-D F32/F16/BF16 "*.weight" that is not an embedding or lm_head: what bitsandbytes replaces with Linear4bit.</summary>
    public static bool IsLinearWeight(SafeTensorInfo info) =>
        info.Shape.Count == 2 && info.Name.EndsWith(".weight", StringComparison.Ordinal)
        && info.DType is SafeTensorDType.F32 or SafeTensorDType.F16 or SafeTensorDType.BF16
        && !info.Name.Contains("embed", StringComparison.OrdinalIgnoreCase)
        && !info.Name.StartsWith("lm_head", StringComparison.Ordinal) && !info.Name.Contains(".lm_head", StringComparison.Ordinal);

    /// <summary>Writes <paramref name="outputPath"/>: <paramref name="inputPath"/> with the selected weights in 4 bits.</summary>
    public static QuantizeReport Quantize(string inputPath, string outputPath, QuantizeOptions? options = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(inputPath);
        ArgumentException.ThrowIfNullOrEmpty(outputPath);
        options ??= new QuantizeOptions();
        Nf4.CheckBlockSize("ModelQuantizer.Quantize", options.BlockSize);
        Device device = options.Device ?? Device.Cpu;
        Func<SafeTensorInfo, bool> select = options.Select ?? IsLinearWeight;
        var clock = Stopwatch.StartNew();
        using SafeTensorsFile input = SafeTensorsFile.Open(inputPath);
        var selected = input.Tensors.Where(t => select(t)).ToList();
        foreach (SafeTensorInfo info in selected)
        {
            if (info.DType is not (SafeTensorDType.F32 or SafeTensorDType.F16 or SafeTensorDType.BF16))
                throw new ArgumentException($"{inputPath}: \"{info.Name}\" is {info.DType}; only F32, F16 and BF16 tensors can be quantized.", nameof(options));
            if (input.Tensors.Any(t => t.Name.StartsWith(info.Name + ".", StringComparison.Ordinal)))
                throw new ArgumentException($"{inputPath}: \"{info.Name}\" already has tensors under it (is it already quantized?).", nameof(options));
        }

        using var spill = new SpillFile(outputPath);
        var reports = new List<QuantizedTensor>();
        int done = 0;
        foreach (SafeTensorInfo info in selected)
        {
            using Tensor weight = input.ToTensor(info.Name, device, info.DType == SafeTensorDType.BF16 ? DType.BF16 : DType.F32);
            using QuantizedWeight quantized = Nf4.Quantize(weight, options.QuantType, options.BlockSize, options.DoubleQuant);
            using Tensor back = Nf4.Dequantize(quantized);
            QuantizationError error = AdapterMerge.ErrorOf(back.ToArray(), weight.ToArray());
            var state = Nf4.ExportState(quantized, info.Name);
            spill.Add(state);
            reports.Add(new QuantizedTensor(info.Name, info.Shape, info.DType, info.ByteLength, state.Sum(s => spill.Length(s.Key)), error));
            options.Progress?.Report(new MergeProgress("quantize", info.Name, ++done, selected.Count, 0, 0));
        }

        var writer = new SafeTensorsWriter(input.Metadata);
        var quantizedNames = selected.Select(t => t.Name).ToHashSet(StringComparer.Ordinal);
        int copied = 0, written = 0;
        foreach (SafeTensorInfo info in input.Tensors)
        {
            if (quantizedNames.Contains(info.Name)) continue;
            copied++;
            writer.Add(info.Name, info.DType, info.Shape.ToArray(), stream =>
            {
                AdapterMerge.CopyTensor(input, info, stream);
                options.Progress?.Report(new MergeProgress("write", info.Name, ++written, input.Tensors.Count, 0, 0));
            });
        }
        foreach (SafeTensorInfo info in selected)
            foreach (string key in SpilledKeys(spill, info.Name))
                spill.AddTo(writer, key);
        writer.Save(outputPath);
        return new QuantizeReport(outputPath, reports, copied, input.FileLength, new FileInfo(outputPath).Length, clock.Elapsed);
    }

    /// <summary>The keys Nf4.ExportState writes under <paramref name="prefix"/>.</summary>
    private static IEnumerable<string> SpilledKeys(SpillFile spill, string prefix) =>
        new[] { "", ".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map", ".quant_state.bitsandbytes__nf4", ".quant_state.bitsandbytes__fp4" }
            .Select(suffix => prefix + suffix).Where(spill.Contains);
}
