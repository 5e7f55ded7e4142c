// A linear module's base weight in a model's safetensors file, as Hugging Face saves it: dense
// "<module>.weight" [out, in] (F32, F16, BF16 or F64) and "<module>.bias", or bitsandbytes' 4-bit
// state under "<module>.weight" (REFERENCE.md §8.5: the packed U8 codes, ".absmax", ".quant_map",
// ".nested_absmax", ".nested_quant_map", ".quant_state.bitsandbytes__nf4|fp4"), imported through
// Ops.Nf4.ImportState with every failure reported against the file and key.
using System.Text.Json;
using LoraKernels.Ops;

namespace LoraKernels.IO;

/// <summary>One module's base weight (dense or 4-bit) and bias on a device; owns what it holds.</summary>
internal sealed class BaseWeight : IDisposable
{
    public required string Key { get; init; }
    public Tensor? Dense { get; init; }
    public QuantizedWeight? Quantized { get; private set; }
    public Tensor? Bias { get; init; }
    public required long OutFeatures { get; init; }
    public required long InFeatures { get; init; }

    public void SetQuantized(QuantizedWeight weight) => Quantized = weight;

    /// <summary>Hands the 4-bit weight to a layer that takes ownership of it.</summary>
    public QuantizedWeight TakeQuantized()
    {
        QuantizedWeight weight = Quantized ?? throw new InvalidOperationException($"{Key} is not quantized.");
        Quantized = null;
        return weight;
    }

    public void Dispose()
    {
        Dense?.Dispose();
        Quantized?.Dispose();
        Bias?.Dispose();
    }
}

internal static class BaseWeights
{
    private const string StateMarker = ".quant_state.bitsandbytes__";

    /// <summary>Module paths that have a 2-D "&lt;module&gt;.weight" (dense, or bitsandbytes' packed codes).</summary>
    public static IEnumerable<string> Modules(SafeTensorsFile file) =>
        file.Tensors.Where(t => t.Name.EndsWith(".weight", StringComparison.Ordinal) && t.Shape.Count == 2)
            .Select(t => t.Name[..^".weight".Length]);

    /// <summary>Whether "&lt;module&gt;.weight" is a bitsandbytes 4-bit state (its quant_state entry exists).</summary>
    public static bool IsQuantized(SafeTensorsFile file, string module) =>
        file.Contains($"{module}.weight{StateMarker}nf4") || file.Contains($"{module}.weight{StateMarker}fp4");

    /// <summary>The keys of a 4-bit state under <paramref name="prefix"/> ("&lt;module&gt;.weight" and "&lt;module&gt;.weight.*").</summary>
    public static IEnumerable<SafeTensorInfo> StateEntries(SafeTensorsFile file, string prefix) =>
        file.Tensors.Where(t => t.Name == prefix || t.Name.StartsWith(prefix + ".", StringComparison.Ordinal));

    /// <summary>Reads the module's base weight and bias onto <paramref name="device"/> (dense ones in <paramref name="dtype"/>).</summary>
    public static BaseWeight Read(SafeTensorsFile file, string module, Device device, DType dtype)
    {
        string key = $"{module}.weight";
        if (!file.Contains(key))
            throw new AdapterMismatchException(module, $"the base model {file.Path} has no \"{key}\"");
        Tensor? bias = null;
        try
        {
            if (file.Contains($"{module}.bias")) bias = file.ToTensor($"{module}.bias", device, dtype);
            if (IsQuantized(file, module))
            {
                QuantizedWeight quantized = ImportQuantized(file, key, device);
                var weight = new BaseWeight { Key = key, Bias = bias, OutFeatures = quantized.Shape[0], InFeatures = quantized.Shape[1] };
                weight.SetQuantized(quantized);
                return weight;
            }
            SafeTensorInfo info = file[key];
            if (info.Shape.Count != 2)
                throw new AdapterMismatchException(module, $"the base weight \"{key}\" is {info.Describe()}, not a matrix [out, in]");
            return new BaseWeight
            {
                Key = key, Dense = file.ToTensor(key, device, dtype), Bias = bias, OutFeatures = info.Shape[0], InFeatures = info.Shape[1],
            };
        }
        catch
        {
            bias?.Dispose();
            throw;
        }
    }

    /// <summary>The 4-bit weight stored under <paramref name="prefix"/>, on <paramref name="device"/>.</summary>
    public static QuantizedWeight ImportQuantized(SafeTensorsFile file, string prefix, Device device)
    {
        var state = new List<StateTensor>();
        foreach (SafeTensorInfo info in StateEntries(file, prefix))
        {
            Array data = info.DType switch
            {
                SafeTensorDType.U8 => file.ReadBytes(info.Name),
                SafeTensorDType.F32 => file.Read<float>(info.Name),
                _ => throw new InvalidFileException(file.Path, info.Name, $"is {info.DType}; a bitsandbytes 4-bit state holds only U8 and F32 tensors"),
            };
            state.Add(new StateTensor(info.Name, info.DType.ToString(), info.Shape.ToArray(), data));
        }
        try
        {
            QuantizedWeight weight = Nf4.ImportState(device, state, prefix);
            if (weight.Shape.Count != 2)
            {
                weight.Dispose();
                throw new InvalidFileException(file.Path, prefix, $"the 4-bit state's shape [{string.Join(", ", weight.Shape)}] is not a matrix [out, in]");
            }
            return weight;
        }
        catch (InvalidFileException e)
        {
            // Nf4.ImportState names the key and the problem; the file is this one.
            throw new InvalidFileException(file.Path, e.Key, e.Problem, e);
        }
        catch (Exception e) when (e is ArgumentException or KeyNotFoundException or InvalidOperationException or JsonException or FormatException or OverflowException)
        {
            throw new InvalidFileException(file.Path, prefix, $"is not a bitsandbytes 4-bit state this library reads: {e.Message}", e);
        }
    }
}
