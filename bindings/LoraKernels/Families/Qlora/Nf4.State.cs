// A QuantizedWeight as bitsandbytes serialises it (REFERENCE.md §8.5, Linear4bit._save_to_state_dict
// with QuantState.as_dict(packed=True)): the tensors a safetensors file would hold under a module
// prefix, in bnb's key order, with their safetensors dtypes and shapes, and the JSON of the
// non-tensor fields exactly as Python's json.dumps writes it. No file I/O here: the entries are
// plain arrays for a checkpoint writer (or reader) to move.
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.Json;
using System.Text;
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
    /// Everything is validated before anything is allocated: the JSON, every key, every size against the
    /// data present, and the statistics (finite, absmax ≥ 0).
    /// </summary>
    /// <exception cref="InvalidFileException">The state is malformed; the message names the key and the problem.</exception>
    public static QuantizedWeight ImportState(Device device, IEnumerable<StateTensor> state, string prefix = "weight")
    {
        ArgumentNullException.ThrowIfNull(device);
        ArgumentNullException.ThrowIfNull(state);
        ArgumentException.ThrowIfNullOrEmpty(prefix);
        var reader = new StateReader(state, prefix);
        ImportedState imported = reader.Read();

        var weight = new QuantizedWeight(device, imported.Type, imported.BlockSize, imported.Shape, imported.DType);
        try
        {
            weight.Upload("codes", imported.Codes);
            if (imported.Nested)
            {
                weight.AllocateNested();
                weight.ReleasePlainAbsmax();
                weight.Upload("qabsmax", imported.Absmax);
                weight.Upload("absmax2", imported.NestedAbsmax!);
                weight.Offset = imported.Offset;
            }
            else
            {
                weight.Upload("absmax", imported.Absmax);
            }
            return weight;
        }
        catch
        {
            weight.Dispose();
            throw;
        }
    }

    /// <summary>A state checked in full: what <see cref="ImportState"/> uploads.</summary>
    private sealed record ImportedState(QuantType Type, int BlockSize, DType DType, long[] Shape, bool Nested, float Offset,
                                        byte[] Codes, byte[] Absmax, byte[]? NestedAbsmax);

    /// <summary>Reads and checks a bitsandbytes 4-bit state; every failure is an InvalidFileException naming the key.</summary>
    private sealed class StateReader
    {
        private const string Source = "Nf4.ImportState (bitsandbytes 4-bit state)";
        private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);
        private readonly Dictionary<string, StateTensor> _byKey = new(StringComparer.Ordinal);
        private readonly string _prefix;

        public StateReader(IEnumerable<StateTensor> state, string prefix)
        {
            _prefix = prefix;
            int position = 0;
            foreach (StateTensor? entry in state)
            {
                if (entry is null) throw Bad($"entry {position}", "is null.");
                if (entry.Key is null) throw Bad($"entry {position}", "has a null key.");
                if (!_byKey.TryAdd(entry.Key, entry)) throw Bad(entry.Key, "appears more than once.");
                position++;
            }
        }

        public ImportedState Read()
        {
            string jsonPrefix = $"{_prefix}.quant_state.bitsandbytes__";
            StateTensor[] jsonEntries = _byKey.Values.Where(t => t.Key.StartsWith(jsonPrefix, StringComparison.Ordinal)).ToArray();
            if (jsonEntries.Length == 0) throw Bad($"{jsonPrefix}nf4", "is missing (or its __fp4 form).");
            if (jsonEntries.Length > 1) throw Bad(jsonEntries[1].Key, $"is a second quant_state beside {jsonEntries[0].Key}.");
            StateTensor jsonEntry = jsonEntries[0];
            JsonElement root;
            JsonDocument document;
            string text;
            try
            {
                // Strict UTF-8 first: JsonDocument accepts invalid bytes inside strings and fails only when they are read.
                text = StrictUtf8.GetString(Bytes(jsonEntry));
            }
            catch (DecoderFallbackException e)
            {
                throw Bad(jsonEntry.Key, $"is not valid UTF-8 ({e.Message}).", e);
            }
            try
            {
                document = JsonDocument.Parse(text);
            }
            catch (JsonException e)
            {
                throw Bad(jsonEntry.Key, $"is not valid JSON ({e.Message}).", e);
            }
            using (document)
            {
                root = document.RootElement;
                if (root.ValueKind != JsonValueKind.Object) throw Bad(jsonEntry.Key, $"must hold a JSON object, got {root.ValueKind}.");
                return Read(jsonEntry.Key, root);
            }
        }

        private ImportedState Read(string jsonKey, JsonElement root)
        {
            QuantType type = String(jsonKey, root, "quant_type") switch
            {
                "nf4" => QuantType.Nf4,
                "fp4" => QuantType.Fp4,
                var other => throw Bad($"{jsonKey}: quant_type", $"is \"{other}\", neither nf4 nor fp4."),
            };
            if (!jsonKey.EndsWith("__" + QuantTypeName(type), StringComparison.Ordinal))
                throw Bad(jsonKey, $"names a different quant_type than its \"{QuantTypeName(type)}\".");
            int blockSize = Int32(jsonKey, root, "blocksize");
            if (blockSize < 32 || blockSize > 4096 || (blockSize & (blockSize - 1)) != 0)
                throw Bad($"{jsonKey}: blocksize", $"is {blockSize}; bitsandbytes block sizes are powers of two in [32, 4096].");
            DType dtype = String(jsonKey, root, "dtype") switch
            {
                "float32" => DType.F32,
                "bfloat16" => DType.BF16,
                var other => throw Bad($"{jsonKey}: dtype", $"is \"{other}\", not float32 or bfloat16."),
            };
            long[] shape = Shape(jsonKey, root);
            long elements = 1;
            foreach (long dimension in shape) elements *= dimension;  // each ≤ 2^31 - 1 and their product checked below
            bool nested = root.TryGetProperty("nested_offset", out _);
            float offset = 0f;
            if (nested)
            {
                int nestedBlockSize = Int32(jsonKey, root, "nested_blocksize");
                if (nestedBlockSize != QuantizedWeight.NestedBlockSize)
                    throw Bad($"{jsonKey}: nested_blocksize", $"is {nestedBlockSize}; bitsandbytes nests {QuantizedWeight.NestedBlockSize} blocks.");
                if (root.TryGetProperty("nested_dtype", out JsonElement nestedDType) &&
                    !(nestedDType.ValueKind == JsonValueKind.String && nestedDType.GetString() == "float32"))
                    throw Bad($"{jsonKey}: nested_dtype", $"must be \"float32\", got {nestedDType}.");
                double offsetValue = Number(jsonKey, root, "nested_offset");
                offset = (float)offsetValue;
                if (!float.IsFinite(offset)) throw Bad($"{jsonKey}: nested_offset", $"is {offsetValue}; it must be a finite float32.");
            }

            long blocks = (elements + blockSize - 1) / blockSize;
            long codeBytes = (elements + 1) / 2;
            StateTensor quantMap = Entry($"{_prefix}.quant_map");
            if (!Floats(quantMap, 16).AsSpan().SequenceEqual(QuantTable(type)))
                throw Bad(quantMap.Key, $"is not this library's {QuantTypeName(type)} table.");
            byte[] codes = Bytes(Entry(_prefix), codeBytes, "packed codes (2 per byte)");
            StateTensor absmaxEntry = Entry($"{_prefix}.absmax");
            if (!nested)
            {
                float[] absmax = Floats(absmaxEntry, blocks);
                CheckStatistics(absmaxEntry.Key, absmax);
                return new ImportedState(type, blockSize, dtype, shape, false, 0f, codes, MemoryMarshal.AsBytes(absmax.AsSpan()).ToArray(), null);
            }
            StateTensor nestedMap = Entry($"{_prefix}.nested_quant_map");
            if (!Floats(nestedMap, 256).AsSpan().SequenceEqual(DynamicMapSigned()))
                throw Bad(nestedMap.Key, "is not the signed dynamic map.");
            byte[] qabsmax = Bytes(absmaxEntry, blocks, "quantized absmax (1 byte per block)");
            StateTensor absmax2Entry = Entry($"{_prefix}.nested_absmax");
            float[] absmax2 = Floats(absmax2Entry, (blocks + QuantizedWeight.NestedBlockSize - 1) / QuantizedWeight.NestedBlockSize);
            CheckStatistics(absmax2Entry.Key, absmax2);
            return new ImportedState(type, blockSize, dtype, shape, true, offset, codes, qabsmax, MemoryMarshal.AsBytes(absmax2.AsSpan()).ToArray());
        }

        private long[] Shape(string jsonKey, JsonElement root)
        {
            JsonElement shape = Property(jsonKey, root, "shape");
            if (shape.ValueKind != JsonValueKind.Array) throw Bad($"{jsonKey}: shape", $"must be a list of integers, got {shape.ValueKind}.");
            var dims = new List<long>();
            long elements = 1;
            foreach (JsonElement d in shape.EnumerateArray())
            {
                if (d.ValueKind != JsonValueKind.Number || !d.TryGetInt64(out long dimension) || dimension < 1 || dimension > int.MaxValue)
                    throw Bad($"{jsonKey}: shape", $"holds {d}; every dimension must be an integer in [1, 2^31 - 1].");
                elements *= dimension;
                if (elements > Checks.MaxElements)
                    throw Bad($"{jsonKey}: shape", $"describes more than 2^31 - 1 elements; the kernels index with 32-bit integers.");
                dims.Add(dimension);
            }
            if (dims.Count == 0) throw Bad($"{jsonKey}: shape", "is empty.");
            return [.. dims];
        }

        private static void CheckStatistics(string key, float[] values)
        {
            for (int i = 0; i < values.Length; i++)
                if (!float.IsFinite(values[i]) || values[i] < 0f)
                    throw Bad(key, $"[{i}] is {values[i]}; block absmax values must be finite and >= 0.");
        }

        private StateTensor Entry(string key) => _byKey.TryGetValue(key, out StateTensor? tensor) ? tensor : throw Bad(key, "is missing.");

        private static JsonElement Property(string jsonKey, JsonElement root, string name)
        {
            if (!root.TryGetProperty(name, out JsonElement value)) throw Bad($"{jsonKey}: {name}", "is missing.");
            if (value.ValueKind == JsonValueKind.Null) throw Bad($"{jsonKey}: {name}", "is null.");
            return value;
        }

        private static string String(string jsonKey, JsonElement root, string name)
        {
            JsonElement value = Property(jsonKey, root, name);
            return value.ValueKind == JsonValueKind.String ? value.GetString()! : throw Bad($"{jsonKey}: {name}", $"must be a string, got {value.ValueKind}.");
        }

        private static int Int32(string jsonKey, JsonElement root, string name)
        {
            JsonElement value = Property(jsonKey, root, name);
            return value.ValueKind == JsonValueKind.Number && value.TryGetInt32(out int result)
                ? result
                : throw Bad($"{jsonKey}: {name}", $"must be a 32-bit integer, got {value}.");
        }

        private static double Number(string jsonKey, JsonElement root, string name)
        {
            JsonElement value = Property(jsonKey, root, name);
            return value.ValueKind == JsonValueKind.Number && value.TryGetDouble(out double result)
                ? result
                : throw Bad($"{jsonKey}: {name}", $"must be a number, got {value}.");
        }

        /// <summary>The raw bytes of an entry (U8 data as is, F32 data as its little-endian bytes).</summary>
        private static byte[] Bytes(StateTensor tensor) => tensor.Data switch
        {
            byte[] bytes => bytes,
            float[] floats => MemoryMarshal.AsBytes(floats.AsSpan()).ToArray(),
            null => throw Bad(tensor.Key, "has no data (null)."),
            _ => throw Bad(tensor.Key, $"must hold byte[] or float[], got {tensor.Data.GetType().Name}."),
        };

        private static byte[] Bytes(StateTensor tensor, long count, string what)
        {
            if (tensor.Data is not byte[] bytes) throw Bad(tensor.Key, $"must hold byte[] (U8 {what}), got {tensor.Data?.GetType().Name ?? "null"}.");
            if (bytes.LongLength != count) throw Bad(tensor.Key, $"holds {bytes.LongLength} bytes; the shape needs {count} ({what}).");
            return bytes;
        }

        private static float[] Floats(StateTensor tensor, long count)
        {
            if (tensor.Data is not float[] floats) throw Bad(tensor.Key, $"must hold float[] (F32), got {tensor.Data?.GetType().Name ?? "null"}.");
            if (floats.LongLength != count) throw Bad(tensor.Key, $"holds {floats.LongLength} floats; {count} are needed.");
            return floats;
        }

        private static InvalidFileException Bad(string key, string problem, Exception? inner = null) => new(Source, key, problem, inner);
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
}
