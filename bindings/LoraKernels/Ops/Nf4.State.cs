// A QuantizedWeight as bitsandbytes serialises it (REFERENCE.md §8.5, Linear4bit._save_to_state_dict
// with QuantState.as_dict(packed=True)): the tensors a safetensors file would hold under a module
// prefix, in bnb's key order, with their safetensors dtypes and shapes, and the JSON of the
// non-tensor fields exactly as Python's json.dumps writes it. No file I/O here: the entries are
// plain arrays for a checkpoint writer (or reader) to move.
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using LoraKernels.Interop;

namespace LoraKernels.Ops;

/// <summary>One serialised tensor: its key, safetensors dtype ("U8" or "F32"), shape and values (byte[] or float[]).</summary>
public sealed record StateTensor(string Key, string DType, long[] Shape, Array Data);

public static partial class Nf4
{
    /// <summary>
    /// The bitsandbytes state of <paramref name="w"/> under <paramref name="prefix"/> (bnb's key for a
    /// Linear4bit weight is "weight"): prefix, .absmax, .quant_map, then when nested .nested_absmax and
    /// .nested_quant_map, and .quant_state.bitsandbytes__nf4 (or __fp4), the UTF-8 JSON of quant_type,
    /// blocksize, dtype, shape and, when nested, nested_blocksize, nested_dtype and nested_offset.
    /// </summary>
    public static IReadOnlyList<StateTensor> ExportState(QuantizedWeight w, string prefix = "weight")
    {
        const string op = "Nf4.ExportState";
        Alive(w, op, nameof(w));
        ArgumentException.ThrowIfNullOrEmpty(prefix);
        var state = new List<StateTensor>
        {
            new(prefix, "U8", [w.CodeBytes, 1], w.CodesToArray()),
            w.IsNested
                ? new StateTensor($"{prefix}.absmax", "U8", [w.BlockCount], w.QuantizedAbsmaxToArray())
                : new StateTensor($"{prefix}.absmax", "F32", [w.BlockCount], w.AbsmaxToArray()),
            new($"{prefix}.quant_map", "F32", [16], QuantTable(w.QuantType)),
        };
        if (w.IsNested)
        {
            state.Add(new StateTensor($"{prefix}.nested_absmax", "F32", [w.NestedBlockCount], w.NestedAbsmaxToArray()));
            state.Add(new StateTensor($"{prefix}.nested_quant_map", "F32", [256], DynamicMapSigned()));
        }
        byte[] json = Encoding.UTF8.GetBytes(QuantStateJson(w));
        state.Add(new StateTensor($"{prefix}.quant_state.bitsandbytes__{QuantTypeName(w.QuantType)}", "U8", [json.Length], json));
        return state;
    }

    /// <summary>
    /// The QuantizedWeight on <paramref name="device"/> that <paramref name="state"/> (as <see cref="ExportState"/>
    /// writes it, or read from a bitsandbytes checkpoint) describes. The stored quant_map must be the
    /// table this library quantizes with (NF4 or FP4), and a nested_quant_map the signed dynamic map.
    /// </summary>
    public static QuantizedWeight ImportState(Device device, IEnumerable<StateTensor> state, string prefix = "weight")
    {
        const string op = "Nf4.ImportState";
        ArgumentNullException.ThrowIfNull(device);
        ArgumentNullException.ThrowIfNull(state);
        ArgumentException.ThrowIfNullOrEmpty(prefix);
        Dictionary<string, StateTensor> byKey = state.ToDictionary(t => t.Key);
        StateTensor json = byKey.Values.FirstOrDefault(t => t.Key.StartsWith($"{prefix}.quant_state.bitsandbytes__", StringComparison.Ordinal))
            ?? throw new ArgumentException($"{op}: no {prefix}.quant_state.bitsandbytes__nf4 (or __fp4) entry.", nameof(state));
        using JsonDocument document = JsonDocument.Parse(Bytes(json, op));
        JsonElement root = document.RootElement;
        QuantType type = root.GetProperty("quant_type").GetString() switch
        {
            "nf4" => QuantType.Nf4,
            "fp4" => QuantType.Fp4,
            var other => throw new ArgumentException($"{op}: quant_type \"{other}\" is neither nf4 nor fp4.", nameof(state)),
        };
        int blockSize = root.GetProperty("blocksize").GetInt32();
        CheckBlockSize(op, blockSize);
        DType dtype = root.GetProperty("dtype").GetString() switch
        {
            "float32" => DType.F32,
            "bfloat16" => DType.BF16,
            var other => throw new ArgumentException($"{op}: dtype \"{other}\" is not float32 or bfloat16.", nameof(state)),
        };
        long[] shape = root.GetProperty("shape").EnumerateArray().Select(d => d.GetInt64()).ToArray();
        bool nested = root.TryGetProperty("nested_offset", out JsonElement offset);
        if (nested && root.GetProperty("nested_blocksize").GetInt32() != QuantizedWeight.NestedBlockSize)
            throw new ArgumentException($"{op}: nested_blocksize must be {QuantizedWeight.NestedBlockSize}.", nameof(state));

        if (!Floats(Entry(byKey, $"{prefix}.quant_map", op), op).AsSpan().SequenceEqual(QuantTable(type)))
            throw new ArgumentException($"{op}: {prefix}.quant_map is not this library's {QuantTypeName(type)} table.", nameof(state));
        if (nested && !Floats(Entry(byKey, $"{prefix}.nested_quant_map", op), op).AsSpan().SequenceEqual(DynamicMapSigned()))
            throw new ArgumentException($"{op}: {prefix}.nested_quant_map is not the signed dynamic map.", nameof(state));

        var weight = new QuantizedWeight(device, type, blockSize, shape, dtype);
        try
        {
            weight.Upload("codes", Bytes(Entry(byKey, prefix, op), op));
            byte[] absmax = Bytes(Entry(byKey, $"{prefix}.absmax", op), op);
            if (nested)
            {
                weight.AllocateNested();
                weight.ReleasePlainAbsmax();
                weight.Upload("qabsmax", absmax);
                weight.Upload("absmax2", Bytes(Entry(byKey, $"{prefix}.nested_absmax", op), op));
                weight.Offset = (float)offset.GetDouble();
            }
            else
            {
                weight.Upload("absmax", absmax);
            }
            return weight;
        }
        catch (ArgumentException e) when (e.ParamName != nameof(state))
        {
            // A buffer of the wrong size: report it against the state, as every other malformed entry.
            weight.Dispose();
            throw new ArgumentException($"{op}: {e.Message}", nameof(state), e);
        }
        catch
        {
            weight.Dispose();
            throw;
        }
    }

    /// <summary>json.dumps(dict) with Python's default separators (", " and ": ") and float repr.</summary>
    private static string QuantStateJson(QuantizedWeight w)
    {
        var text = new StringBuilder();
        text.Append(CultureInfo.InvariantCulture, $"{{\"quant_type\": \"{QuantTypeName(w.QuantType)}\", \"blocksize\": {w.BlockSize}, ");
        text.Append(CultureInfo.InvariantCulture, $"\"dtype\": \"{(w.DType == DType.BF16 ? "bfloat16" : "float32")}\", \"shape\": [");
        text.AppendJoin(", ", w.Shape.Select(d => d.ToString(CultureInfo.InvariantCulture)));
        text.Append(']');
        if (w.IsNested)
            text.Append(CultureInfo.InvariantCulture,
                $", \"nested_blocksize\": {QuantizedWeight.NestedBlockSize}, \"nested_dtype\": \"float32\", \"nested_offset\": {PythonFloat(w.Offset)}");
        text.Append('}');
        return text.ToString();
    }

    /// <summary>Python's repr of the double holding <paramref name="value"/> (torch's .item() of an fp32 scalar): shortest round trip, "1.0", "1e-05".</summary>
    internal static string PythonFloat(float value)
    {
        double d = value;
        double magnitude = Math.Abs(d);
        if (d == 0) return BitConverter.DoubleToInt64Bits(d) < 0 ? "-0.0" : "0.0";
        if (magnitude >= 1e16 || magnitude < 1e-4)
        {
            string scientific = d.ToString("R", CultureInfo.InvariantCulture).ToLowerInvariant();
            if (!scientific.Contains('e')) scientific = d.ToString("E16", CultureInfo.InvariantCulture).ToLowerInvariant();
            int e = scientific.IndexOf('e');
            string mantissa = scientific[..e];
            int exponent = int.Parse(scientific[(e + 1)..], CultureInfo.InvariantCulture);
            return $"{mantissa}e{(exponent < 0 ? "-" : "+")}{Math.Abs(exponent):00}";
        }
        string plain = d.ToString("R", CultureInfo.InvariantCulture);
        if (plain.Contains('E')) plain = decimal.Parse(plain, NumberStyles.Float, CultureInfo.InvariantCulture).ToString(CultureInfo.InvariantCulture);
        return plain.Contains('.') ? plain : plain + ".0";
    }

    private static string QuantTypeName(QuantType type) => type == QuantType.Nf4 ? "nf4" : "fp4";

    private static unsafe float[] QuantTable(QuantType type)
    {
        var table = new float[16];
        fixed (float* pointer = table) Check.Cpu(NativeCpu.lk_cpu_quant_table((int)type, pointer));
        return table;
    }

    private static unsafe float[] DynamicMapSigned()
    {
        var table = new float[256];
        fixed (float* pointer = table) Check.Cpu(NativeCpu.lk_cpu_dynamic_map_signed(pointer));
        return table;
    }

    private static StateTensor Entry(Dictionary<string, StateTensor> byKey, string key, string op) =>
        byKey.TryGetValue(key, out StateTensor? tensor) ? tensor : throw new ArgumentException($"{op}: no {key} entry.", "state");

    private static byte[] Bytes(StateTensor tensor, string op) => tensor.Data switch
    {
        byte[] bytes => bytes,
        float[] floats => MemoryMarshal.AsBytes(floats.AsSpan()).ToArray(),
        _ => throw new ArgumentException($"{op}: {tensor.Key} must hold byte[] or float[], got {tensor.Data?.GetType().Name ?? "null"}.", "state"),
    };

    private static float[] Floats(StateTensor tensor, string op) => tensor.Data as float[]
        ?? throw new ArgumentException($"{op}: {tensor.Key} must hold float[] (F32), got {tensor.Data?.GetType().Name ?? "null"}.", "state");
}
