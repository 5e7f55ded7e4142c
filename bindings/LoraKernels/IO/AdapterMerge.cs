// PEFT's merge_and_unload as a file-to-file operation: the base model's safetensors and a PEFT
// adapter in, a new safetensors with every adapted weight merged out, streaming tensor by tensor.
// Each module is merged by the library's own layer of its variant (LoraLinear, DoraLinear,
// VeraLinear: Merge), in fp32 on the chosen device, and rounded once to the base weight's dtype;
// every other tensor is copied byte for byte, and tensors the adapter saves in full
// (modules_to_save) replace the base's. Memory stays bounded by a few copies of the largest weight.
//
// A bitsandbytes 4-bit base (NF4/FP4, plain or double-quantized) is dequantized, merged and
// requantized with the same settings, as PEFT does, and the report gives the requantization error
// added on top of the merged weight. Because safetensors' layout sorts tensors by dtype, a module's
// 4-bit tensors are spread across the file; so the 4-bit modules are merged first, one at a time,
// into a spill file beside the output, and copied from it when the output is written (disk, not
// memory, holds them in between). The output is written atomically; the spill file is deleted.
using System.Buffers;
using System.Diagnostics;
using LoraKernels.IO.Peft;
using LoraKernels.Layers;
using LoraKernels.Ops;

namespace LoraKernels.IO;

/// <summary>How a merge runs.</summary>
public sealed record MergeOptions
{
    /// <summary>Where the merge arithmetic runs (default: the CPU).</summary>
    public Device? Device { get; init; }

    /// <summary>Receives one report per module merged and per tensor written.</summary>
    public IProgress<MergeProgress>? Progress { get; init; }
}

/// <summary>A merge's progress: the stage ("requantize" for 4-bit modules, then "write"), the tensor, and counts so far.</summary>
public sealed record MergeProgress(string Stage, string Tensor, int Done, int Total, long BytesDone, long BytesTotal);

/// <summary>The error a requantization adds to a merged weight W: deq(quantize(W)) − W, over all elements.</summary>
/// <param name="MaxAbs">The largest absolute error.</param>
/// <param name="Rms">The root mean square error.</param>
/// <param name="Relative">‖deq(Q) − W‖_F / ‖W‖_F.</param>
public sealed record QuantizationError(double MaxAbs, double Rms, double Relative);

/// <summary>One merged module.</summary>
/// <param name="Module">Its path.</param>
/// <param name="Variant">The adapter's variant.</param>
/// <param name="BaseFormat">The base weight's storage: "F32", "F16", "BF16", or "NF4"/"FP4" (with " (nested)").</param>
/// <param name="OutFeatures">out of the merged weight.</param>
/// <param name="InFeatures">in of the merged weight.</param>
/// <param name="MaxChange">max |W_merged − W0| over the weight (0 would mean the adapter did nothing).</param>
/// <param name="Requantization">For a 4-bit base: the error the requantization added; null otherwise.</param>
public sealed record MergedModule(string Module, string Variant, string BaseFormat, int OutFeatures, int InFeatures, double MaxChange,
                                  QuantizationError? Requantization);

/// <summary>What a merge did.</summary>
public sealed record MergeReport(string Output, IReadOnlyList<MergedModule> Modules, int TensorsCopied, int TensorsReplaced,
                                 long OutputBytes, TimeSpan Elapsed);

public static class AdapterMerge
{
    private const int ChunkBytes = 4 << 20;

    /// <summary>
    /// Writes <paramref name="outputPath"/>: the tensors of <paramref name="basePath"/> with <paramref name="adapter"/>
    /// merged into the weights of the modules it adapts.
    /// </summary>
    /// <exception cref="AdapterMismatchException">A module of the adapter that the base lacks, a targeted base module the adapter lacks, a shape that differs.</exception>
    /// <exception cref="NotSupportedException">A tuner without a layer in this build (LoKr, AdaLoRA), lora_bias, VeRA over a 4-bit base.</exception>
    public static MergeReport Merge(string basePath, PeftAdapter adapter, string outputPath, MergeOptions? options = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(basePath);
        ArgumentNullException.ThrowIfNull(adapter);
        ArgumentException.ThrowIfNullOrEmpty(outputPath);
        options ??= new MergeOptions();
        Device device = options.Device ?? Device.Cpu;
        adapter.ThrowIfUnavailable("merge");
        var clock = Stopwatch.StartNew();
        using SafeTensorsFile baseModel = SafeTensorsFile.Open(basePath);
        var plan = Plan(baseModel, adapter);

        VeraProjections? projections = null;
        using var spill = new SpillFile(outputPath);
        var modules = new List<MergedModule>();
        try
        {
            if (adapter.Config.PeftType == "VERA")
            {
                PeftTensor veraA = adapter.SharedProjection("base_model.vera_A"), veraB = adapter.SharedProjection("base_model.vera_B");
                projections = VeraProjections.Create(device, adapter.Config.Rank, (int)veraA.Shape[1], (int)veraB.Shape[0], (ulong)adapter.Config.ProjectionPrngKey);
                adapter.CopyProjections([projections]);
            }
            MergeQuantized(baseModel, adapter, plan, device, projections, spill, modules, options.Progress);

            var writer = new SafeTensorsWriter(baseModel.Metadata);
            int copied = 0, replaced = 0, done = 0;
            long bytesDone = 0, bytesTotal = baseModel.Tensors.Sum(t => spill.Contains(t.Name) ? spill.Length(t.Name) : t.ByteLength);
            foreach (SafeTensorInfo info in baseModel.Tensors)
            {
                long length = info.ByteLength;
                void Report(string name)
                {
                    done++;
                    bytesDone += length;
                    options.Progress?.Report(new MergeProgress("write", name, done, baseModel.Tensors.Count, bytesDone, bytesTotal));
                }
                if (spill.Contains(info.Name))
                {
                    length = spill.Length(info.Name);
                    spill.AddTo(writer, info.Name, () => Report(info.Name));
                }
                else if (plan.Dense.TryGetValue(info.Name, out PeftModule? module))
                {
                    writer.Add(info.Name, info.DType, info.Shape.ToArray(), stream =>
                    {
                        modules.Add(MergeDense(baseModel, info, adapter, module, device, projections, stream));
                        Report(info.Name);
                    });
                }
                else if (adapter.SavedTensors.TryGetValue(info.Name, out PeftTensor? saved))
                {
                    replaced++;
                    writer.Add(info.Name, info.DType, info.Shape.ToArray(), stream => { WriteSingles(stream, info, saved.Values); Report(info.Name); });
                }
                else
                {
                    copied++;
                    writer.Add(info.Name, info.DType, info.Shape.ToArray(), stream => { CopyTensor(baseModel, info, stream); Report(info.Name); });
                }
            }
            writer.Save(outputPath);
            modules.Sort((x, y) => string.CompareOrdinal(x.Module, y.Module));
            return new MergeReport(outputPath, modules, copied, replaced, new FileInfo(outputPath).Length, clock.Elapsed);
        }
        finally
        {
            projections?.Dispose();
        }
    }

    /// <summary>Which base tensors each module merges into, checked against the adapter before anything is written.</summary>
    private sealed record MergePlan(Dictionary<string, PeftModule> Dense, List<PeftModule> Quantized);

    private static MergePlan Plan(SafeTensorsFile baseModel, PeftAdapter adapter)
    {
        adapter.CheckCoverage(BaseWeights.Modules(baseModel), isBaseFile: true);
        var dense = new Dictionary<string, PeftModule>(StringComparer.Ordinal);
        var quantized = new List<PeftModule>();
        bool fanInFanOut = adapter.Config.FanInFanOut;
        foreach (PeftModule module in adapter.Modules)
        {
            string key = $"{module.Path}.weight";
            if (!baseModel.Contains(key))
                throw new AdapterMismatchException(module.Path, $"has weights in {adapter.Source} but the base model {baseModel.Path} has no \"{key}\"");
            if (BaseWeights.IsQuantized(baseModel, module.Path))
            {
                if (adapter.Variant == "vera") throw new NotSupportedException($"module \"{module.Path}\": merging VeRA into a 4-bit base is not supported in this build.");
                if (fanInFanOut) throw new NotSupportedException($"module \"{module.Path}\": fan_in_fan_out with a 4-bit base is not supported.");
                quantized.Add(module);
                continue;
            }
            SafeTensorInfo info = baseModel[key];
            if (info.Shape.Count != 2 || info.DType is not (SafeTensorDType.F32 or SafeTensorDType.F16 or SafeTensorDType.BF16))
                throw new AdapterMismatchException(module.Path, $"the base weight \"{key}\" is {info.Describe()}; a merge needs an F32, F16 or BF16 matrix or a bitsandbytes 4-bit state");
            long outFeatures = fanInFanOut ? info.Shape[1] : info.Shape[0], inFeatures = fanInFanOut ? info.Shape[0] : info.Shape[1];
            CheckDims(module, key, info.Describe(), outFeatures, inFeatures, fanInFanOut);
            dense.Add(key, module);
        }
        foreach (var (name, saved) in adapter.SavedTensors)
        {
            if (!baseModel.Contains(name))
                throw new AdapterMismatchException(name, $"{adapter.Source} saves it in full (modules_to_save or bias), but the base model has no such tensor");
            SafeTensorInfo info = baseModel[name];
            if (!info.Shape.SequenceEqual(saved.Shape) || info.DType is not (SafeTensorDType.F32 or SafeTensorDType.F16 or SafeTensorDType.BF16))
                throw new AdapterMismatchException(name, $"the adapter saves {saved.Describe()}, the base has {info.Describe()}");
        }
        return new MergePlan(dense, quantized);
    }

    private static void CheckDims(PeftModule module, string key, string described, long outFeatures, long inFeatures, bool fanInFanOut)
    {
        if (module.OutFeatures != outFeatures || (module.InFeatures != 0 && module.InFeatures != inFeatures))
            throw new AdapterMismatchException(module.Path,
                $"the base weight \"{key}\" is {described}{(fanInFanOut ? " (fan_in_fan_out: [in, out])" : "")} but the adapter's tensors are for [out, in] = [{module.OutFeatures}, {(module.InFeatures == 0 ? "?" : module.InFeatures)}]");
    }

    /// <summary>Dequantizes, merges and requantizes each 4-bit module, one at a time, into the spill file.</summary>
    private static void MergeQuantized(SafeTensorsFile baseModel, PeftAdapter adapter, MergePlan plan, Device device,
                                       VeraProjections? projections, SpillFile spill, List<MergedModule> report, IProgress<MergeProgress>? progress)
    {
        int done = 0;
        foreach (PeftModule module in plan.Quantized)
        {
            string prefix = $"{module.Path}.weight";
            using QuantizedWeight original = BaseWeights.ImportQuantized(baseModel, prefix, device);
            CheckDims(module, prefix, original.Describe(), original.Shape[0], original.Shape[1], fanInFanOut: false);
            using Tensor dequantized = Nf4.Dequantize(original);
            using Tensor w0 = dequantized.DType == DType.F32 ? dequantized.Clone() : Elementwise.Cast(dequantized, DType.F32);
            using IAdapterLayer layer = adapter.CreateMergeLayer(module, device, w0, projections);
            Tensor merged = PeftAdapter.MergeLayer(layer);
            // Requantize in the state's own dtype (a bfloat16 state quantizes the bf16-rounded weight, as bitsandbytes would).
            using Tensor source = original.DType == DType.F32 ? merged.Clone() : Elementwise.Cast(merged, original.DType);
            using QuantizedWeight requantized = Nf4.Quantize(source, original.QuantType, original.BlockSize, original.IsNested);
            using Tensor back = Nf4.Dequantize(requantized);
            float[] mergedValues = merged.ToArray(), backValues = back.ToArray(), before = w0.ToArray();
            report.Add(new MergedModule(module.Path, adapter.Variant,
                $"{original.QuantType.ToString().ToUpperInvariant()}{(original.IsNested ? " (nested)" : "")}",
                (int)original.Shape[0], (int)original.Shape[1], MaxAbsDifference(mergedValues, before), ErrorOf(backValues, mergedValues)));

            var exported = Nf4.ExportState(requantized, prefix);
            var expectedKeys = BaseWeights.StateEntries(baseModel, prefix).Select(t => t.Name).Order(StringComparer.Ordinal);
            if (!exported.Select(t => t.Key).Order(StringComparer.Ordinal).SequenceEqual(expectedKeys))
                throw new AdapterMismatchException(module.Path,
                    $"the base's 4-bit state holds {string.Join(", ", expectedKeys)}; the requantized state would hold {string.Join(", ", exported.Select(t => t.Key))}");
            spill.Add(exported);
            progress?.Report(new MergeProgress("requantize", prefix, ++done, plan.Quantized.Count, 0, 0));
        }
    }

    /// <summary>Merges one dense module and writes the merged weight in the base's dtype and layout.</summary>
    private static MergedModule MergeDense(SafeTensorsFile baseModel, SafeTensorInfo info, PeftAdapter adapter, PeftModule module, Device device,
                                           VeraProjections? projections, Stream output)
    {
        bool transposed = adapter.Config.FanInFanOut;
        int rows = (int)info.Shape[0], columns = (int)info.Shape[1];
        float[] stored = baseModel.ReadSingles(info.Name);
        int outFeatures = transposed ? columns : rows, inFeatures = transposed ? rows : columns;
        float[] w0 = transposed ? Transpose(stored, rows, columns) : stored;
        float[] merged;
        using (Tensor weight = Tensor.FromArray(device, w0, outFeatures, inFeatures))
        using (IAdapterLayer layer = adapter.CreateMergeLayer(module, device, weight, projections))
            merged = PeftAdapter.MergeLayer(layer).ToArray();
        double change = MaxAbsDifference(merged, w0);
        WriteSingles(output, info, transposed ? Transpose(merged, outFeatures, inFeatures) : merged);
        return new MergedModule(module.Path, adapter.Variant, info.DType.ToString(), outFeatures, inFeatures, change, null);
    }

    private static float[] Transpose(float[] values, int rows, int columns)
    {
        var result = new float[values.Length];
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < columns; c++) result[(long)c * rows + r] = values[(long)r * columns + c];
        return result;
    }

    private static double MaxAbsDifference(float[] x, float[] y)
    {
        double max = 0;
        for (int i = 0; i < x.Length; i++) max = Math.Max(max, Math.Abs((double)x[i] - y[i]));
        return max;
    }

    internal static QuantizationError ErrorOf(float[] approximation, float[] exact)
    {
        double sumSquares = 0, reference = 0, max = 0;
        for (int i = 0; i < exact.Length; i++)
        {
            double error = (double)approximation[i] - exact[i];
            sumSquares += error * error;
            reference += (double)exact[i] * exact[i];
            max = Math.Max(max, Math.Abs(error));
        }
        return new QuantizationError(max, Math.Sqrt(sumSquares / Math.Max(exact.Length, 1)), reference > 0 ? Math.Sqrt(sumSquares / reference) : 0);
    }

    /// <summary>Writes floats in the dtype of <paramref name="info"/> (F32, F16 or BF16), in chunks.</summary>
    private static void WriteSingles(Stream stream, SafeTensorInfo info, float[] values)
    {
        int size = info.DType.BitSize() / 8;
        int chunk = ChunkBytes / 4;
        byte[] staging = ArrayPool<byte>.Shared.Rent(Math.Min(ChunkBytes, Math.Max(values.Length * size, 1)));
        try
        {
            for (int done = 0; done < values.Length; done += chunk)
            {
                int count = Math.Min(chunk, values.Length - done);
                Span<byte> bytes = staging.AsSpan(0, count * size);
                ElementConversion.FromSingle(info.DType, values.AsSpan(done, count), bytes);
                stream.Write(bytes);
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(staging);
        }
    }

    internal static void CopyTensor(SafeTensorsFile file, SafeTensorInfo info, Stream output)
    {
        byte[] staging = ArrayPool<byte>.Shared.Rent((int)Math.Min(ChunkBytes, Math.Max(info.ByteLength, 1)));
        try
        {
            for (long done = 0; done < info.ByteLength; done += ChunkBytes)
            {
                Span<byte> bytes = staging.AsSpan(0, (int)Math.Min(ChunkBytes, info.ByteLength - done));
                file.ReadBytes(info.Name, done, bytes);
                output.Write(bytes);
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(staging);
        }
    }
}
