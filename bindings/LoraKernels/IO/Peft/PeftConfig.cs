// adapter_config.json (REFERENCE.md §9.1): the whole JSON object is kept, so fields this library
// does not use survive a read-and-write unchanged, and the fields it uses are read through typed
// accessors that check their JSON type and range and raise PeftFormatException naming the file and
// the field. Written as PEFT writes it: keys sorted at every level, two-space indent.
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace LoraKernels.IO.Peft;

public sealed class PeftConfig
{
    /// <summary>The file name PEFT uses.</summary>
    public const string FileName = "adapter_config.json";

    private readonly JsonObject _json;

    private PeftConfig(JsonObject json, string source)
    {
        _json = json;
        Source = source;
        PeftType = String("peft_type") ?? throw Error("peft_type", "is missing (PEFT's minimal config is {\"peft_type\": \"LORA\", \"target_modules\": [...]})");
        Format = PeftFormats.ForPeftType(PeftType)
            ?? throw Error("peft_type", $"\"{PeftType}\" is not a tuner this library knows ({string.Join(", ", PeftFormats.All.Select(f => f.PeftType))})");
        // Read every typed field once, so a malformed config fails here, not halfway through a merge.
        _ = Rank;
        _ = Alpha;
        _ = Dropout;
        _ = TargetModules;
        _ = ExcludeModules;
        _ = RankPattern;
        _ = AlphaPattern;
        _ = ModulesToSave;
        _ = LayersToTransform;
        _ = LayersPattern;
        _ = InitLoraWeights;
        _ = Bias;
        _ = (UseRsLora, UseDora, FanInFanOut, LoraBias, InferenceMode, SaveProjection, ProjectionPrngKey, DInitial, BaseModelNameOrPath);
        _ = (DecomposeFactor, DecomposeBoth);
    }

    /// <summary>Where the config came from (a path, or "&lt;new&gt;").</summary>
    public string Source { get; }

    /// <summary>peft_type: "LORA", "VERA", "LOKR", "ADALORA".</summary>
    public string PeftType { get; }

    /// <summary>The checkpoint format of the tuner.</summary>
    public PeftFormat Format { get; }

    /// <summary>r (LoRA, VeRA, LoKr) or init_r (AdaLoRA), with PEFT's default.</summary>
    public int Rank => Int(Format.RankField, Format.DefaultRank, minimum: 1);

    /// <summary>lora_alpha (LoKr: alpha), default 8.</summary>
    public float Alpha => Float(PeftType == "LOKR" ? "alpha" : "lora_alpha", 8f);

    /// <summary>lora_dropout (VeRA: vera_dropout), default 0.</summary>
    public float Dropout
    {
        get
        {
            string name = PeftType == "VERA" ? "vera_dropout" : PeftType == "LOKR" ? "rank_dropout" : "lora_dropout";
            float p = Float(name, 0f);
            return p is >= 0f and < 1f ? p : throw Error(name, $"= {p} is not a probability in [0, 1)");
        }
    }

    public bool UseRsLora => Bool("use_rslora", false);
    public bool UseDora => Bool("use_dora", false);
    public bool FanInFanOut => Bool("fan_in_fan_out", false);
    public bool LoraBias => Bool("lora_bias", false);
    public bool InferenceMode => Bool("inference_mode", true);

    /// <summary>bias: "none", "all" or "lora_only" (PEFT's default "none").</summary>
    public string Bias => String("bias") is { } bias
        ? bias is "none" or "all" or "lora_only" or "vera_only" or "lokr_only" ? bias : throw Error("bias", $"\"{bias}\" is not none, all or <method>_only")
        : "none";

    /// <summary>init_lora_weights as text: "true", "false", "gaussian", "pissa", "pissa_niter_4", "loftq", ...</summary>
    public string InitLoraWeights => _json["init_lora_weights"] switch
    {
        null => "true",
        JsonValue value when value.TryGetValue(out bool flag) => flag ? "true" : "false",
        JsonValue value when value.TryGetValue(out string? text) => text!,
        var other => throw Error("init_lora_weights", $"must be a boolean or a string, got {Kind(other)}"),
    };

    /// <summary>
    /// This config as the options the LoRA-family layers take, for <paramref name="module"/> when given (its
    /// rank_pattern / alpha_pattern entry) else the defaults: r, lora_alpha, lora_dropout, use_rslora and
    /// init_lora_weights (true → Default, "gaussian" → Gaussian, "pissa" / "pissa_niter_K" → Pissa with K
    /// iterations, "loftq" → LoftQ's own path, which the options leave at Default). Other init_lora_weights
    /// values (false, "olora", "eva", ...) are not implemented here: NotSupportedException names them.
    /// </summary>
    public Variants.AdapterOptions ToAdapterOptions(string? module = null)
    {
        string init = InitLoraWeights;
        (Layers.LoraInit kind, int? iterations) = init switch
        {
            "true" or "loftq" => (Layers.LoraInit.Default, (int?)null),
            "gaussian" => (Layers.LoraInit.Gaussian, null),
            "pissa" => (Layers.LoraInit.Pissa, null),
            _ when init.StartsWith("pissa_niter_", StringComparison.Ordinal)
                   && int.TryParse(init.AsSpan("pissa_niter_".Length), System.Globalization.NumberStyles.None,
                                   System.Globalization.CultureInfo.InvariantCulture, out int k) && k >= 1 => (Layers.LoraInit.Pissa, k),
            _ => throw new NotSupportedException(
                $"{Source}: init_lora_weights = \"{init}\" is not implemented by LoraKernels (true, \"gaussian\", \"pissa\", \"pissa_niter_K\" and \"loftq\" are)."),
        };
        return new Variants.AdapterOptions
        {
            Rank = module is null ? Rank : RankFor(module),
            Alpha = module is null ? Alpha : AlphaFor(module),
            Dropout = Dropout,
            UseRsLora = UseRsLora,
            Init = kind,
            PissaIterations = iterations,
        };
    }

    /// <summary>VeRA's projection_prng_key (default 0).</summary>
    public long ProjectionPrngKey => Int64("projection_prng_key", 0);

    /// <summary>VeRA's save_projection (default true).</summary>
    public bool SaveProjection => Bool("save_projection", true);

    /// <summary>LoKr's decompose_factor (default -1: the divisor pair nearest √d).</summary>
    public int DecomposeFactor => Int("decompose_factor", -1, minimum: -1);

    /// <summary>LoKr's decompose_both (default false: w1 full).</summary>
    public bool DecomposeBoth => Bool("decompose_both", false);

    /// <summary>VeRA's d_initial (default 0.1).</summary>
    public float DInitial => Float("d_initial", 0.1f);

    public string? BaseModelNameOrPath => String("base_model_name_or_path");

    /// <summary>target_modules: null, one regular expression (a JSON string, matched whole), or a list of names (exact or dotted suffix).</summary>
    public PeftModuleSelector? TargetModules => Selector("target_modules");

    /// <summary>exclude_modules, with target_modules' matching rules.</summary>
    public PeftModuleSelector? ExcludeModules => Selector("exclude_modules");

    /// <summary>rank_pattern: pattern → r for the modules it matches (LoRA's form; AdaLoRA's is <see cref="KeptRanks"/>).</summary>
    public IReadOnlyDictionary<string, int> RankPattern => PeftType == "ADALORA"
        ? new Dictionary<string, int>()
        : Pattern<int>("rank_pattern", v => v.TryGetValue(out int r) && r >= 1 ? r : null);

    /// <summary>
    /// AdaLoRA's rank_pattern: the parameter name of each module's Λ ("&lt;module path&gt;.lora_E") → which of its init_r
    /// triplets were kept (saved tensors hold only those). Empty when the adapter was saved unpruned, and for every
    /// other peft_type (whose rank_pattern is <see cref="RankPattern"/>).
    /// </summary>
    public IReadOnlyDictionary<string, bool[]> KeptRanks => PeftType != "ADALORA"
        ? new Dictionary<string, bool[]>()
        : _json["rank_pattern"] switch
        {
            null => new Dictionary<string, bool[]>(),
            JsonObject obj => obj.ToDictionary(p => p.Key, p => p.Value is JsonArray array
                ? array.Select((item, i) => item is JsonValue v && v.TryGetValue(out bool keep) ? keep
                    : throw Error("rank_pattern", $"entry \"{p.Key}\"[{i}] must be true or false, got {Kind(item)}")).ToArray()
                : throw Error("rank_pattern", $"entry \"{p.Key}\" must be a list of booleans (AdaLoRA's kept triplets), got {Kind(p.Value)}"),
                StringComparer.Ordinal),
            var other => throw Error("rank_pattern", $"must be an object (Λ's name → kept triplets), got {Kind(other)}"),
        };

    /// <summary>alpha_pattern: pattern → alpha for the modules it matches.</summary>
    public IReadOnlyDictionary<string, float> AlphaPattern =>
        Pattern<float>("alpha_pattern", v => v.TryGetValue(out double a) && double.IsFinite(a) ? (float)a : null);

    /// <summary>modules_to_save: modules trained in full, saved under their own path.</summary>
    public IReadOnlyList<string> ModulesToSave => StringList("modules_to_save") ?? [];

    /// <summary>layers_to_transform: the layer indices to adapt (null: all).</summary>
    public IReadOnlyList<int>? LayersToTransform => _json["layers_to_transform"] switch
    {
        null => null,
        JsonValue value when value.TryGetValue(out int index) => [index],
        JsonArray array => array.Select((item, i) => item is JsonValue v && v.TryGetValue(out int index) ? index
            : throw Error("layers_to_transform", $"[{i}] must be an integer, got {Kind(item)}")).ToArray(),
        var other => throw Error("layers_to_transform", $"must be an integer or a list of integers, got {Kind(other)}"),
    };

    /// <summary>layers_pattern: the name(s) of the layer list (e.g. "layers", "h") that layers_to_transform indexes.</summary>
    public IReadOnlyList<string>? LayersPattern => _json["layers_pattern"] switch
    {
        null => null,
        JsonValue value when value.TryGetValue(out string? text) => [text!],
        JsonArray => StringList("layers_pattern"),
        var other => throw Error("layers_pattern", $"must be a string or a list of strings, got {Kind(other)}"),
    };

    /// <summary>The raw JSON object (a copy): every field, known or not.</summary>
    public JsonObject ToJsonObject() => (JsonObject)_json.DeepClone();

    /// <summary>r for <paramref name="module"/>: rank_pattern's if a pattern matches it (PEFT's get_pattern_key), else <see cref="Rank"/>.</summary>
    public int RankFor(string module) => PeftTargeting.PatternValue(this, "rank_pattern", RankPattern, module) ?? Rank;

    /// <summary>alpha for <paramref name="module"/>: alpha_pattern's if a pattern matches it, else <see cref="Alpha"/>.</summary>
    public float AlphaFor(string module) => PeftTargeting.PatternValue(this, "alpha_pattern", AlphaPattern, module) ?? Alpha;

    /// <summary>The catalogue variant the config describes: "lora", "rslora", "dora", "pissa", "loftq", "vera", "lokr", "adalora".</summary>
    public string Variant => PeftType switch
    {
        "LORA" when UseDora => "dora",
        "LORA" when InitLoraWeights.StartsWith("pissa", StringComparison.Ordinal) => "pissa",
        "LORA" when InitLoraWeights == "loftq" => "loftq",
        "LORA" when UseRsLora => "rslora",
        "LORA" => "lora",
        _ => Format.Variants[0],
    };

    /// <summary>Reads <paramref name="path"/> (an adapter_config.json).</summary>
    /// <exception cref="PeftFormatException">Not JSON, not an object, or a field of the wrong type; names the field.</exception>
    public static PeftConfig Load(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        byte[] bytes = File.ReadAllBytes(path);
        return Parse(bytes, path);
    }

    /// <summary>Parses the JSON of an adapter_config.json; <paramref name="source"/> names it in errors.</summary>
    public static PeftConfig Parse(ReadOnlySpan<byte> json, string source = "<config>")
    {
        // System.Text.Json accepts some invalid UTF-8 in names and fails later, on first access, with a raw error.
        if (!System.Text.Unicode.Utf8.IsValid(json))
            throw new PeftFormatException(source, null, "is not valid UTF-8 text");
        JsonNode? node;
        try
        {
            node = JsonNode.Parse(json, documentOptions: new JsonDocumentOptions { MaxDepth = 32, AllowDuplicateProperties = false });
        }
        catch (JsonException e)
        {
            throw new PeftFormatException(source, null, $"is not well-formed JSON (line {e.LineNumber + 1}): {e.Message.Split(" Path:")[0]}", e);
        }
        if (node is not JsonObject root)
            throw new PeftFormatException(source, null, $"must be a JSON object, got {Kind(node)}");
        return new PeftConfig(root, source);
    }

    /// <summary>A config for adapters this library made; <paramref name="fields"/> are set over PEFT's defaults for the tuner.</summary>
    public static PeftConfig Create(string peftType, JsonObject fields)
    {
        ArgumentNullException.ThrowIfNull(fields);
        var config = new JsonObject { ["peft_type"] = peftType, ["task_type"] = null, ["inference_mode"] = true };
        foreach (var (key, value) in fields) config[key] = value?.DeepClone();
        // Through text, so every value reads back as a parsed JSON value does (an int node is not a long node).
        return new PeftConfig((JsonObject)JsonNode.Parse(config.ToJsonString())!, "<new>");
    }

    /// <summary>The config with <paramref name="field"/> set to <paramref name="value"/> (a copy).</summary>
    public PeftConfig With(string field, JsonNode? value)
    {
        JsonObject copy = ToJsonObject();
        copy[field] = value?.DeepClone();
        return new PeftConfig((JsonObject)JsonNode.Parse(copy.ToJsonString())!, Source);
    }

    /// <summary>The JSON as PEFT writes it: keys sorted at every level, indent 2, UTF-8, trailing newline-free.</summary>
    public byte[] ToJsonBytes()
    {
        using var stream = new MemoryStream();
        using (var writer = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
            Sorted(_json)!.WriteTo(writer);
        return stream.ToArray();
    }

    /// <summary>Writes the config to <paramref name="path"/> atomically.</summary>
    public void Save(string path) => AtomicFile.WriteAllBytes(path, ToJsonBytes());

    private static JsonNode? Sorted(JsonNode? node) => node switch
    {
        JsonObject obj => new JsonObject(obj.OrderBy(p => p.Key, StringComparer.Ordinal)
            .Select(p => KeyValuePair.Create(p.Key, Sorted(p.Value)))),
        JsonArray array => new JsonArray(array.Select(Sorted).ToArray()),
        _ => node?.DeepClone(),
    };


    private PeftModuleSelector? Selector(string field) => _json[field] switch
    {
        null => null,
        JsonValue value when value.TryGetValue(out string? regex) => PeftModuleSelector.FromRegex(regex!, this, field),
        JsonArray => PeftModuleSelector.FromNames(StringList(field)!),
        var other => throw Error(field, $"must be a string (a regular expression) or a list of module names, got {Kind(other)}"),
    };

    private IReadOnlyList<string>? StringList(string field) => _json[field] switch
    {
        null => null,
        JsonArray array => array.Select((item, i) => item is JsonValue v && v.TryGetValue(out string? text) ? text!
            : throw Error(field, $"[{i}] must be a string, got {Kind(item)}")).ToArray(),
        var other => throw Error(field, $"must be a list of strings, got {Kind(other)}"),
    };

    private IReadOnlyDictionary<string, T> Pattern<T>(string field, Func<JsonValue, T?> read) where T : struct => _json[field] switch
    {
        null => new Dictionary<string, T>(),
        JsonObject obj => obj.ToDictionary(p => p.Key, p => p.Value is JsonValue v && read(v) is T value ? value
            : throw Error(field, $"entry \"{p.Key}\" has an invalid value {p.Value?.ToJsonString() ?? "null"}"), StringComparer.Ordinal),
        var other => throw Error(field, $"must be an object (pattern → value), got {Kind(other)}"),
    };

    private string? String(string field) => _json[field] switch
    {
        null => null,
        JsonValue value when value.TryGetValue(out string? text) => text,
        var other => throw Error(field, $"must be a string, got {Kind(other)}"),
    };

    private bool Bool(string field, bool fallback) => _json[field] switch
    {
        null => fallback,
        JsonValue value when value.TryGetValue(out bool flag) => flag,
        var other => throw Error(field, $"must be true or false, got {Kind(other)}"),
    };

    private int Int(string field, int fallback, int minimum)
    {
        long value = Int64(field, fallback);
        return value >= minimum && value <= int.MaxValue ? (int)value : throw Error(field, $"= {value} must be an integer in [{minimum}, 2^31)");
    }

    private long Int64(string field, long fallback) => _json[field] switch
    {
        null => fallback,
        JsonValue value when value.GetValueKind() == JsonValueKind.Number && value.TryGetValue(out long number) => number,
        JsonValue value when value.GetValueKind() == JsonValueKind.Number && value.TryGetValue(out double real) && real == Math.Floor(real)
            && Math.Abs(real) < 9e15 => (long)real,
        var other => throw Error(field, $"must be an integer, got {Kind(other)}"),
    };

    private float Float(string field, float fallback) => _json[field] switch
    {
        null => fallback,
        JsonValue value when value.GetValueKind() == JsonValueKind.Number && value.TryGetValue(out double number) && double.IsFinite(number)
            && Math.Abs(number) <= float.MaxValue => (float)number,
        var other => throw Error(field, $"must be a finite number, got {Kind(other)}"),
    };

    internal PeftFormatException Error(string field, string problem) => new(Source, field, problem);

    private static string Kind(JsonNode? node) => node switch
    {
        null => "null",
        JsonValue value => $"{value.GetValueKind().ToString().ToLowerInvariant()} {value.ToJsonString()}",
        JsonArray => "a list",
        JsonObject => "an object",
        _ => node.GetType().Name,
    };

    /// <summary>A float as JSON: an integer when whole (PEFT writes lora_alpha = 16, not 16.0).</summary>
    internal static JsonNode Number(float value) =>
        value == MathF.Floor(value) && Math.Abs(value) < 1e9f ? JsonValue.Create((long)value) : JsonValue.Create(double.Parse(value.ToString("R", CultureInfo.InvariantCulture), CultureInfo.InvariantCulture));
}
