// A PEFT adapter in memory: adapter_config.json and the tensors of adapter_model.safetensors,
// grouped by module path with PEFT's key naming (PeftFormats, PeftKeys). Load checks every key and
// every shape against the tuner's table and the config (r, rank_pattern, use_dora, save_projection)
// and names the file and key of the first fault; Save writes both files atomically, as PEFT's
// save_pretrained does (metadata {"format": "pt"}). Adapter tensors are small, so they are held as
// float arrays with their stored dtype, which Save writes back unchanged.
using System.Text.Json.Nodes;
using LoraKernels.Layers;

namespace LoraKernels.IO.Peft;

/// <summary>One tensor of an adapter: its saved key, stored dtype, shape and values.</summary>
public sealed record PeftTensor(string Key, SafeTensorDType DType, IReadOnlyList<long> Shape, float[] Values)
{
    public long ElementCount => Values.LongLength;
    public string Describe() => $"{DType}[{string.Join(", ", Shape)}]";
}

/// <summary>The tensors of one targeted module, with the rank and scale the config gives it.</summary>
public sealed class PeftModule
{
    internal PeftModule(string path, IReadOnlyDictionary<string, PeftTensor> tensors, int rank, float alpha, float scale, int inFeatures, int outFeatures)
    {
        Path = path;
        Tensors = tensors;
        Rank = rank;
        Alpha = alpha;
        Scale = scale;
        InFeatures = inFeatures;
        OutFeatures = outFeatures;
    }

    /// <summary>The module's dotted path in the base model (e.g. model.layers.0.self_attn.q_proj).</summary>
    public string Path { get; }

    /// <summary>Its tensors by saved component ("lora_A.weight", "lora_magnitude_vector", "vera_lambda_d", ...).</summary>
    public IReadOnlyDictionary<string, PeftTensor> Tensors { get; }

    public int Rank { get; }
    public float Alpha { get; }

    /// <summary>The adapter branch's factor: alpha/r, alpha/√r with rsLoRA, 1 for VeRA.</summary>
    public float Scale { get; }

    /// <summary>in and out of the adapted layer, as the tensors fix them (0 where they do not: VeRA's in, LoKr).</summary>
    public int InFeatures { get; }
    public int OutFeatures { get; }

    public PeftTensor? this[string component] => Tensors.TryGetValue(component, out PeftTensor? tensor) ? tensor : null;

    /// <summary>Trainable values saved for this module.</summary>
    public long ParameterCount => Tensors.Values.Sum(t => t.ElementCount);
}

/// <summary>What <see cref="PeftAdapter.FromLayers"/> writes into the config beyond what the layers say.</summary>
public sealed record PeftExportOptions
{
    /// <summary>target_modules (default: the distinct last components of the module paths, e.g. ["q_proj", "v_proj"]).</summary>
    public IReadOnlyList<string>? TargetModules { get; init; }
    public string? BaseModelNameOrPath { get; init; }
    public string? TaskType { get; init; }
    /// <summary>init_lora_weights to record (e.g. "pissa", "loftq"); default true.</summary>
    public string? InitLoraWeights { get; init; }
    /// <summary>The dtype the tensors are saved in (F32, F16 or BF16; default F32, PEFT's default for adapters).</summary>
    public SafeTensorDType DType { get; init; } = SafeTensorDType.F32;
}

public sealed partial class PeftAdapter
{
    /// <summary>The weights file PEFT writes.</summary>
    public const string WeightsFileName = "adapter_model.safetensors";

    private readonly Dictionary<string, PeftModule> _modules;

    private PeftAdapter(PeftConfig config, string source, List<PeftModule> modules, Dictionary<string, PeftTensor> shared,
                        Dictionary<string, PeftTensor> saved, IReadOnlyDictionary<string, string> metadata)
    {
        Config = config;
        Source = source;
        modules.Sort((x, y) => string.CompareOrdinal(x.Path, y.Path));
        Modules = modules.AsReadOnly();
        _modules = modules.ToDictionary(m => m.Path, StringComparer.Ordinal);
        SharedTensors = shared;
        SavedTensors = saved;
        Metadata = metadata;
    }

    public PeftConfig Config { get; }

    /// <summary>The weights file (or folder) it was loaded from, or "&lt;layers&gt;".</summary>
    public string Source { get; }

    /// <summary>The catalogue variant: lora, rslora, dora, pissa, loftq, vera, lokr, adalora.</summary>
    public string Variant => Config.Variant;

    /// <summary>The checkpoint format of its tuner (PeftFormats).</summary>
    public PeftFormat Format => Config.Format;

    /// <summary>The targeted modules, by path.</summary>
    public IReadOnlyList<PeftModule> Modules { get; }

    /// <summary>Tensors shared by all modules (VeRA's base_model.vera_A / vera_B), by saved key.</summary>
    public IReadOnlyDictionary<string, PeftTensor> SharedTensors { get; }

    /// <summary>Full tensors saved beside the adapter (modules_to_save, trained biases), by their base-model name.</summary>
    public IReadOnlyDictionary<string, PeftTensor> SavedTensors { get; }

    /// <summary>The weights file's safetensors metadata.</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    public PeftModule? Module(string path) => _modules.TryGetValue(path, out PeftModule? module) ? module : null;

    /// <summary>Values saved per module and in saved full tensors (shared frozen projections are not counted).</summary>
    public long TrainableParameters => Modules.Sum(m => m.ParameterCount) + SavedTensors.Values.Sum(t => t.ElementCount);

    /// <summary>
    /// Reads an adapter: a folder holding adapter_config.json and adapter_model.safetensors (for an
    /// adapter name other than "default", also the sub-folder PEFT saves it in), or the .safetensors
    /// file itself with adapter_config.json beside it.
    /// </summary>
    /// <exception cref="PeftFormatException">A config field, a key or a shape is not PEFT's; the message names the file and key.</exception>
    /// <exception cref="SafeTensorsFormatException">The weights file is not valid safetensors.</exception>
    public static PeftAdapter Load(string path, string adapterName = "default")
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        ArgumentException.ThrowIfNullOrEmpty(adapterName);
        var (configPath, weightsPath) = Locate(path, adapterName);
        PeftConfig config = PeftConfig.Load(configPath);
        using SafeTensorsFile weights = SafeTensorsFile.Open(weightsPath);
        return FromFile(config, weights, adapterName);
    }

    /// <summary>The adapter in <paramref name="config"/> and the open <paramref name="weights"/>.</summary>
    public static PeftAdapter FromFile(PeftConfig config, SafeTensorsFile weights, string adapterName = "default")
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(weights);
        string source = weights.Path;
        var byModule = new Dictionary<string, Dictionary<string, PeftTensor>>(StringComparer.Ordinal);
        var shared = new Dictionary<string, PeftTensor>(StringComparer.Ordinal);
        var saved = new Dictionary<string, PeftTensor>(StringComparer.Ordinal);
        foreach (SafeTensorInfo info in weights.Tensors)
        {
            PeftKey key = PeftKeys.Parse(info.Name, config.Format, adapterName, source);
            if (!info.DType.ConvertsToFloat() || info.DType is not (SafeTensorDType.F32 or SafeTensorDType.F16 or SafeTensorDType.BF16 or SafeTensorDType.F64))
                throw new PeftFormatException(source, info.Name, $"is {info.DType}; adapter tensors are floating point (F32, F16, BF16 or F64)");
            if (info.ElementCount > Array.MaxLength)
                throw new PeftFormatException(source, info.Name, $"has {info.ElementCount} elements, more than an adapter tensor can hold here");
            if (key.Kind == PeftKeyKind.Saved) CheckSaved(config, source, info.Name, key);
            string savedKey = key.Kind == PeftKeyKind.ModuleTensor ? PeftKeys.Format(key.Module, key.Component) : info.Name;
            var tensor = new PeftTensor(savedKey, info.DType, info.Shape, weights.ReadSingles(info.Name));
            Dictionary<string, PeftTensor> target = key.Kind switch
            {
                PeftKeyKind.ModuleTensor => byModule.TryGetValue(key.Module, out var tensors) ? tensors : byModule[key.Module] = new(StringComparer.Ordinal),
                PeftKeyKind.Shared => shared,
                _ => saved,
            };
            if (!target.TryAdd(key.Component, tensor))
                throw new PeftFormatException(source, info.Name, $"holds the same tensor as another key (\"{savedKey}\"), e.g. with and without the adapter name");
        }
        var modules = byModule.Select(pair => Validate(config, source, pair.Key, pair.Value, shared)).ToList();
        ValidateShared(config, source, shared, modules);
        return new PeftAdapter(config, source, modules, shared, saved, weights.Metadata);
    }

    /// <summary>Writes adapter_config.json and adapter_model.safetensors into <paramref name="folder"/> (created), each atomically.</summary>
    public void Save(string folder)
    {
        ArgumentException.ThrowIfNullOrEmpty(folder);
        Directory.CreateDirectory(folder);
        var writer = new SafeTensorsWriter(new Dictionary<string, string>(Metadata) { ["format"] = "pt" });
        foreach (PeftModule module in Modules)
            foreach (PeftTensor tensor in module.Tensors.Values) AddTensor(writer, tensor);
        foreach (PeftTensor tensor in SharedTensors.Values) AddTensor(writer, tensor);
        foreach (PeftTensor tensor in SavedTensors.Values) AddTensor(writer, tensor);
        writer.Save(System.IO.Path.Combine(folder, WeightsFileName));
        Config.Save(System.IO.Path.Combine(folder, PeftConfig.FileName));
    }

    private static void AddTensor(SafeTensorsWriter writer, PeftTensor tensor)
    {
        SafeTensorDType dtype = tensor.DType is SafeTensorDType.F16 or SafeTensorDType.BF16 ? tensor.DType : SafeTensorDType.F32;
        writer.AddSingles(tensor.Key, tensor.Values, tensor.Shape.ToArray(), dtype);
    }

    /// <summary>Finds the config and weights of an adapter from a folder or a weights file.</summary>
    private static (string Config, string Weights) Locate(string path, string adapterName)
    {
        if (File.Exists(path))
        {
            string folder = System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(path))!;
            string config = System.IO.Path.Combine(folder, PeftConfig.FileName);
            if (!File.Exists(config))
                throw new PeftFormatException(path, null, $"has no {PeftConfig.FileName} beside it (PEFT saves both in one folder)");
            return (config, path);
        }
        if (!Directory.Exists(path)) throw new FileNotFoundException($"No adapter folder or file at {path}.", path);
        string candidate = path;
        if (!File.Exists(System.IO.Path.Combine(candidate, PeftConfig.FileName)) && adapterName != "default"
            && Directory.Exists(System.IO.Path.Combine(path, adapterName)))
            candidate = System.IO.Path.Combine(path, adapterName);
        string configPath = System.IO.Path.Combine(candidate, PeftConfig.FileName);
        string weightsPath = System.IO.Path.Combine(candidate, WeightsFileName);
        if (!File.Exists(configPath))
            throw new PeftFormatException(candidate, null, $"has no {PeftConfig.FileName}");
        if (!File.Exists(weightsPath))
            throw new PeftFormatException(candidate, null, File.Exists(System.IO.Path.Combine(candidate, "adapter_model.bin"))
                ? "holds only adapter_model.bin (a pickle); save the adapter with safe_serialization=True (PEFT's default) to get adapter_model.safetensors"
                : $"has no {WeightsFileName}");
        return (configPath, weightsPath);
    }

    /// <summary>Checks one module's tensors against its tuner's table and the config, and derives r, scale, in and out.</summary>
    private static PeftModule Validate(PeftConfig config, string source, string path, Dictionary<string, PeftTensor> tensors,
                                       Dictionary<string, PeftTensor> shared)
    {
        PeftFormat format = config.Format;
        foreach (PeftModuleTensor required in format.ModuleTensors.Where(t => t.Required))
            if (!tensors.ContainsKey(required.Component))
                throw new PeftFormatException(source, PeftKeys.Format(path, required.Component), $"is missing: every {format.PeftType} module has {required.Component} {required.ShapeFormula}");
        float alpha = config.AlphaFor(path);
        switch (format.PeftType)
        {
            case "LORA":
            {
                PeftTensor a = tensors["lora_A.weight"], b = tensors["lora_B.weight"];
                long r = Dimension(source, a, 2, 0), inFeatures = Dimension(source, a, 2, 1), outFeatures = Dimension(source, b, 2, 0);
                if (Dimension(source, b, 2, 1) != r)
                    throw new PeftFormatException(source, b.Key, $"is {b.Describe()} but lora_A.weight is {a.Describe()}: B must be [out, r] with A's r = {r}");
                int rank = config.RankFor(path);
                if (r != rank)
                    throw new PeftFormatException(source, a.Key, $"has r = {r} rows, but the config gives this module r = {rank} (r / rank_pattern)");
                ExpectVector(source, tensors, "lora_magnitude_vector", outFeatures, config.UseDora, "use_dora");
                ExpectVector(source, tensors, "lora_B.bias", outFeatures, config.LoraBias, "lora_bias");
                float scale = config.UseRsLora ? alpha / MathF.Sqrt(rank) : alpha / rank;
                return new PeftModule(path, tensors, rank, alpha, scale, Int(inFeatures), Int(outFeatures));
            }
            case "VERA":
            {
                PeftTensor lambdaD = tensors["vera_lambda_d"], lambdaB = tensors["vera_lambda_b"];
                long r = Dimension(source, lambdaD, 1, 0), outFeatures = Dimension(source, lambdaB, 1, 0);
                if (r != config.Rank)
                    throw new PeftFormatException(source, lambdaD.Key, $"has {r} values, but the config's r is {config.Rank}");
                return new PeftModule(path, tensors, config.Rank, 1f, 1f, 0, Int(outFeatures));
            }
            case "ADALORA":
            {
                PeftTensor a = tensors["lora_A"], e = tensors["lora_E"], b = tensors["lora_B"];
                long r = Dimension(source, a, 2, 0);
                if (Dimension(source, e, 2, 0) != r || Dimension(source, e, 2, 1) != 1 || Dimension(source, b, 2, 1) != r)
                    throw new PeftFormatException(source, e.Key, $"lora_A {a.Describe()}, lora_E {e.Describe()} and lora_B {b.Describe()} must be [r, in], [r, 1], [out, r]");
                // The saved triplets: all init_r, or those the module's rank_pattern entry keeps (PEFT slices on save).
                int initR = config.Rank;
                long kept = config.KeptRanks.TryGetValue(path + ".lora_E", out bool[]? pattern) ? pattern.Count(k => k) : initR;
                if (pattern is not null && pattern.Length != initR)
                    throw new PeftFormatException(source, "rank_pattern", $"entry \"{path}.lora_E\" has {pattern.Length} flags; init_r is {initR}");
                if (r != kept)
                    throw new PeftFormatException(source, a.Key,
                        $"has {r} triplets, but {(pattern is null ? $"init_r is {initR} and rank_pattern has no entry \"{path}.lora_E\"" : $"rank_pattern keeps {kept} of them")}");
                return new PeftModule(path, tensors, (int)r, alpha, AdaLoraLinear.ScaleOf(alpha, initR), Int(Dimension(source, a, 2, 1)),
                                      Int(Dimension(source, b, 2, 0)));
            }
            default:
                return ValidateLokr(source, path, tensors, config.RankFor(path), alpha);
        }
    }

    /// <summary>
    /// A LoKr module: w1 (lokr_w1 [out_l, in_m], or lokr_w1_a [out_l, r]·lokr_w1_b [r, in_m]) and w2 (lokr_w2 [out_k, in_n]
    /// or [out_k, in_n, kh, kw], or lokr_w2_a [out_k, r]·lokr_w2_b [r, in_n]); out = out_l·out_k, in = in_m·in_n (channels for
    /// a convolution). With lokr_t2 (use_effective_conv2d) w2's shape is not recoverable here: in and out are left 0.
    /// </summary>
    private static PeftModule ValidateLokr(string source, string path, Dictionary<string, PeftTensor> tensors, int rank, float alpha)
    {
        (long Rows, long Columns) Factor(string full, string a, string b)
        {
            if (tensors.TryGetValue(full, out PeftTensor? dense))
            {
                if (tensors.ContainsKey(a) || tensors.ContainsKey(b))
                    throw new PeftFormatException(source, dense.Key, $"is saved together with {a} / {b}; a LoKr factor is either full or low-rank");
                int dimensions = full == "lokr_w2" && dense.Shape.Count == 4 ? 4 : 2;  // a convolution's w2 carries its window
                return (Dimension(source, dense, dimensions, 0), Dimension(source, dense, dimensions, 1));
            }
            if (!tensors.TryGetValue(a, out PeftTensor? left) || !tensors.TryGetValue(b, out PeftTensor? right))
                throw new PeftFormatException(source, PeftKeys.Format(path, full), $"is missing: a LoKr module has {full} or {a} and {b}");
            if (tensors.ContainsKey("lokr_t2") && full == "lokr_w2") return (0, 0);  // CP form: w2_a is [r, out_k]
            long r = Dimension(source, left, 2, 1);
            if (Dimension(source, right, 2, 0) != r)
                throw new PeftFormatException(source, right.Key, $"is {right.Describe()} but {a} is {left.Describe()}: the pieces must be [rows, r] and [r, columns]");
            if (r != rank)
                throw new PeftFormatException(source, left.Key, $"has r = {r}, but the config gives this module r = {rank} (r / rank_pattern)");
            return (Dimension(source, left, 2, 0), Dimension(source, right, 2, 1));
        }
        var (outL, inM) = Factor("lokr_w1", "lokr_w1_a", "lokr_w1_b");
        var (outK, inN) = Factor("lokr_w2", "lokr_w2_a", "lokr_w2_b");
        long outFeatures = outL * outK, inFeatures = inM * inN;
        if (outFeatures > int.MaxValue || inFeatures > int.MaxValue)
            throw new PeftFormatException(source, PeftKeys.Format(path, "lokr_w1"), $"gives a layer of [{outFeatures}, {inFeatures}], over 2^31 - 1 per dimension");
        return new PeftModule(path, tensors, rank, alpha, alpha / rank, Int(inFeatures), Int(outFeatures));
    }

    private static void ValidateShared(PeftConfig config, string source, Dictionary<string, PeftTensor> shared, List<PeftModule> modules)
    {
        if (config.PeftType != "VERA") return;
        bool hasA = shared.TryGetValue("base_model.vera_A", out PeftTensor? veraA), hasB = shared.TryGetValue("base_model.vera_B", out PeftTensor? veraB);
        if (hasA != hasB)
            throw new PeftFormatException(source, hasA ? "base_model.vera_B" : "base_model.vera_A", "is missing: VeRA saves both projections or neither");
        if (!hasA) return;
        if (Dimension(source, veraA!, 2, 0) != config.Rank || Dimension(source, veraB!, 2, 1) != config.Rank)
            throw new PeftFormatException(source, veraA!.Key, $"vera_A {veraA.Describe()} and vera_B {veraB!.Describe()} must be [r, max_in] and [max_out, r] with r = {config.Rank}");
        long maxOut = veraB!.Shape[0];
        foreach (PeftModule module in modules)
            if (module.OutFeatures > maxOut)
                throw new PeftFormatException(source, module.Tensors["vera_lambda_b"].Key, $"has out = {module.OutFeatures}, more than vera_B's {maxOut} rows");
    }

    /// <summary>A full tensor is allowed only for a module in modules_to_save, or a bias when the config trains biases.</summary>
    private static void CheckSaved(PeftConfig config, string source, string name, PeftKey key)
    {
        bool inModulesToSave = config.ModulesToSave.Any(m => key.Module == m || key.Module.EndsWith("." + m, StringComparison.Ordinal));
        bool trainedBias = key.Component.EndsWith(".bias", StringComparison.Ordinal) && config.Bias != "none";
        if (!inModulesToSave && !trainedBias)
            throw new PeftFormatException(source, name,
                $"names no {config.PeftType} parameter ({string.Join(", ", config.Format.Parameters)}) and is not a saved module's weight or bias (modules_to_save: [{string.Join(", ", config.ModulesToSave)}], bias: {config.Bias})");
    }

    private static void ExpectVector(string source, Dictionary<string, PeftTensor> tensors, string component, long length, bool expected, string flag)
    {
        bool present = tensors.TryGetValue(component, out PeftTensor? tensor);
        if (present && !expected)
            throw new PeftFormatException(source, tensor!.Key, $"is present but the config's {flag} is false");
        if (!present && expected)
            throw new PeftFormatException(source, component, $"is missing for a module although the config's {flag} is true");
        if (present && (tensor!.Shape.Count != 1 || tensor.Shape[0] != length))
            throw new PeftFormatException(source, tensor.Key, $"is {tensor.Describe()}; it must be [out] = [{length}]");
    }

    private static long Dimension(string source, PeftTensor tensor, int rank, int axis)
    {
        if (tensor.Shape.Count != rank)
            throw new PeftFormatException(source, tensor.Key, $"is {tensor.Describe()}; it must have {rank} dimension(s)");
        long dimension = tensor.Shape[axis];
        return dimension is >= 1 and <= int.MaxValue ? dimension
            : throw new PeftFormatException(source, tensor.Key, $"is {tensor.Describe()}; dimension {axis} must be in [1, 2^31)");
    }

    private static int Int(long value) => (int)value;

    /// <summary>A new adapter from its parts (used by FromLayers and the tests' fixtures).</summary>
    internal static PeftAdapter Create(PeftConfig config, IEnumerable<PeftTensor> tensors, string source = "<layers>")
    {
        var writerCheck = new Dictionary<string, PeftTensor>(StringComparer.Ordinal);
        foreach (PeftTensor tensor in tensors)
            if (!writerCheck.TryAdd(tensor.Key, tensor)) throw new ArgumentException($"Tensor \"{tensor.Key}\" appears twice.", nameof(tensors));
        var byModule = new Dictionary<string, Dictionary<string, PeftTensor>>(StringComparer.Ordinal);
        var shared = new Dictionary<string, PeftTensor>(StringComparer.Ordinal);
        var saved = new Dictionary<string, PeftTensor>(StringComparer.Ordinal);
        foreach (PeftTensor tensor in writerCheck.Values)
        {
            PeftKey key = PeftKeys.Parse(tensor.Key, config.Format, "default", source);
            switch (key.Kind)
            {
                case PeftKeyKind.ModuleTensor:
                    (byModule.TryGetValue(key.Module, out var existing) ? existing : byModule[key.Module] = new(StringComparer.Ordinal))[key.Component] = tensor;
                    break;
                case PeftKeyKind.Shared:
                    shared[key.Component] = tensor;
                    break;
                default:
                    CheckSaved(config, source, tensor.Key, key);
                    saved[key.Component] = tensor;
                    break;
            }
        }
        var modules = byModule.Select(pair => Validate(config, source, pair.Key, pair.Value, shared)).ToList();
        ValidateShared(config, source, shared, modules);
        return new PeftAdapter(config, source, modules, shared, saved, new Dictionary<string, string> { ["format"] = "pt" });
    }

    /// <summary>A JSON list of strings.</summary>
    internal static JsonArray StringArray(IEnumerable<string> values) => new(values.Select(v => (JsonNode?)JsonValue.Create(v)).ToArray());

    /// <summary>Throws unless the tuner has a layer in this build.</summary>
    internal void ThrowIfUnavailable(string action)
    {
        if (!Format.Available)
            throw new NotSupportedException($"{Source}: cannot {action} a {Format.PeftType} adapter: {Format.Pending}.");
        if (Config.FanInFanOut && action == "attach")
            throw new NotSupportedException($"{Source}: fan_in_fan_out adapters (GPT-2 Conv1D weights [in, out]) can be merged, not attached to this library's [out, in] layers.");
        foreach (PeftModule module in Modules)
            if (module.Tensors.ContainsKey("lora_B.bias"))
                throw new NotSupportedException($"{Source}: module \"{module.Path}\" has lora_B.bias (lora_bias=True), which this library's layers do not have.");
    }

    /// <summary>Layers of this adapter's kind, for messages.</summary>
    internal string LayerKinds => Variant switch
    {
        "dora" => nameof(DoraLinear),
        "adalora" => nameof(AdaLoraLinear),
        "vera" => nameof(VeraLinear),
        "lokr" => nameof(LokrLinear),
        _ => $"{nameof(LoraLinear)}, {nameof(LoraFaLinear)} or {nameof(QloraLinear)}",
    };
}
