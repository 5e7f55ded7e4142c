// Moving adapters between PEFT files and this library's layers, through the layers' public API
// (constructors, A/B/Magnitude/λ parameters). ApplyTo fills existing layers keyed by module path;
// CreateLayers builds them over a base model's safetensors (dense or bitsandbytes 4-bit); FromLayers
// turns trained layers back into a PEFT adapter. Every module of the adapter must find its layer,
// every layer target_modules selects must find its module, and shapes, rank, scale and variant must
// agree: a mismatch is an AdapterMismatchException naming the module, never a silent fall-back.
using System.Text.Json.Nodes;
using LoraKernels.Autograd;
using LoraKernels.Layers;

namespace LoraKernels.IO.Peft;

/// <summary>Layers built from an adapter and a base model, by module path; owns the layers and VeRA's shared projections.</summary>
public sealed class PeftModel : IDisposable
{
    internal PeftModel(PeftConfig config, Dictionary<string, IAdapterLayer> layers, VeraProjections? projections)
    {
        Config = config;
        Layers = layers;
        Projections = projections;
    }

    public PeftConfig Config { get; }

    /// <summary>The adapted layers by module path (in eval mode: Training is false).</summary>
    public IReadOnlyDictionary<string, IAdapterLayer> Layers { get; }

    /// <summary>VeRA's shared projections (owned), or null.</summary>
    public VeraProjections? Projections { get; }

    public IAdapterLayer this[string module] => Layers.TryGetValue(module, out IAdapterLayer? layer)
        ? layer
        : throw new ArgumentException($"No adapted layer at \"{module}\"; the model has {string.Join(", ", Layers.Keys)}.", nameof(module));

    public void Dispose()
    {
        foreach (IAdapterLayer layer in Layers.Values) layer.Dispose();
        Projections?.Dispose();
    }
}

public sealed partial class PeftAdapter
{
    /// <summary>
    /// Copies this adapter into <paramref name="layers"/> (module path → layer): every module of the adapter
    /// needs a layer of its variant with equal r, scale and dims, and every layer that target_modules selects
    /// needs a module. VeRA layers must share one VeraProjections, which receives the saved projections.
    /// </summary>
    /// <exception cref="AdapterMismatchException">A module without a layer, a targeted layer without a module, a shape, rank, scale or variant that differs.</exception>
    /// <exception cref="NotSupportedException">A tuner without a layer in this build (its PeftFormats row is not available), lora_bias, or fan_in_fan_out.</exception>
    public void ApplyTo(IReadOnlyDictionary<string, IAdapterLayer> layers)
    {
        ArgumentNullException.ThrowIfNull(layers);
        ThrowIfUnavailable("attach");
        CheckCoverage(layers.Keys, isBaseFile: false);
        foreach (PeftModule module in Modules)
            if (!layers.ContainsKey(module.Path))
                throw new AdapterMismatchException(module.Path, $"is in {Source} but no layer has that path (layers: {Preview(layers.Keys)})");
        if (Config.PeftType == "VERA") CopyProjections(layers.Values.OfType<VeraLinear>().Select(l => l.Projections).Distinct().ToList());
        foreach (PeftModule module in Modules) CopyInto(module, layers[module.Path]);
    }

    /// <summary>
    /// Builds the adapted layers over the base weights in <paramref name="baseModel"/> (module path + ".weight",
    /// and ".bias" when present; dense F32/F16/BF16, or bitsandbytes NF4/FP4 for LoRA and DoRA, giving QLoRA
    /// and QDoRA layers) on <paramref name="device"/> in <paramref name="dtype"/>, with this adapter's weights, in eval mode.
    /// </summary>
    public PeftModel CreateLayers(Device device, SafeTensorsFile baseModel, DType dtype = DType.F32)
    {
        ArgumentNullException.ThrowIfNull(device);
        ArgumentNullException.ThrowIfNull(baseModel);
        ThrowIfUnavailable("attach");
        CheckCoverage(BaseWeights.Modules(baseModel), isBaseFile: true);
        var layers = new Dictionary<string, IAdapterLayer>(StringComparer.Ordinal);
        VeraProjections? projections = null;
        try
        {
            if (Config.PeftType == "VERA")
            {
                PeftTensor veraA = SharedProjection("base_model.vera_A"), veraB = SharedProjection("base_model.vera_B");
                projections = VeraProjections.Create(device, Config.Rank, (int)veraA.Shape[1], (int)veraB.Shape[0], (ulong)Config.ProjectionPrngKey, dtype);
                CopyProjections([projections]);
            }
            foreach (PeftModule module in Modules)
            {
                IAdapterLayer layer = CreateLayer(module, device, baseModel, dtype, projections);
                layers.Add(module.Path, layer);
                CopyInto(module, layer);
                layer.Training = false;
            }
            return new PeftModel(Config, layers, projections);
        }
        catch
        {
            foreach (IAdapterLayer layer in layers.Values) layer.Dispose();
            projections?.Dispose();
            throw;
        }
    }

    /// <summary>
    /// A PEFT adapter holding the weights of <paramref name="layers"/> (module path → layer): LoRA, rsLoRA,
    /// LoRA-FA, LoRA+ and QLoRA layers as LORA, DoRA and QDoRA as LORA with use_dora, VeRA layers (sharing
    /// one VeraProjections) as VERA with the projections saved, LoKr layers as LOKR, AdaLoRA layers as ADALORA (each sliced to
    /// the triplets its RankPattern keeps, PEFT's rank_pattern). Ranks or alphas that differ between LoRA layers go into
    /// rank_pattern / alpha_pattern keyed by module path.
    /// </summary>
    public static PeftAdapter FromLayers(IEnumerable<KeyValuePair<string, IAdapterLayer>> layers, PeftExportOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(layers);
        options ??= new PeftExportOptions();
        var list = layers.OrderBy(p => p.Key, StringComparer.Ordinal).ToList();
        if (list.Count == 0) throw new ArgumentException("FromLayers needs at least one layer.", nameof(layers));
        foreach (var (path, layer) in list)
        {
            if (string.IsNullOrEmpty(path) || path.Split('.').Any(p => p.Length == 0))
                throw new ArgumentException($"\"{path}\" is not a dotted module path.", nameof(layers));
            if (IsMerged(layer)) throw new InvalidOperationException($"The layer at \"{path}\" is merged; unmerge it before saving its adapter.");
        }
        var fields = new JsonObject
        {
            ["target_modules"] = StringArray(options.TargetModules ?? list.Select(p => p.Key.Split('.')[^1]).Distinct().Order(StringComparer.Ordinal).ToList()),
            ["base_model_name_or_path"] = options.BaseModelNameOrPath,
            ["task_type"] = options.TaskType,
            ["fan_in_fan_out"] = false,
            ["bias"] = "none",
            ["modules_to_save"] = null,
        };
        var tensors = new List<PeftTensor>();
        PeftTensor Tensor(string module, string component, Tensor value) =>
            new(PeftKeys.Format(module, component), options.DType, value.Shape.ToArray(), value.ToArray());

        if (list.All(p => p.Value is VeraLinear))
        {
            var projections = list.Select(p => ((VeraLinear)p.Value).Projections).Distinct().ToList();
            if (projections.Count != 1) throw new ArgumentException("The VeRA layers must share one VeraProjections (PEFT saves one pair per model).", nameof(layers));
            VeraProjections shared = projections[0];
            fields["r"] = shared.Rank;
            fields["projection_prng_key"] = (long)shared.ProjectionPrngKey;
            fields["save_projection"] = true;
            fields["vera_dropout"] = PeftConfig.Number(((VeraLinear)list[0].Value).Dropout);
            fields["d_initial"] = 0.1;
            fields["init_weights"] = true;
            foreach (var (path, layer) in list)
            {
                var vera = (VeraLinear)layer;
                tensors.Add(Tensor(path, "vera_lambda_b", vera.LambdaB.Value));
                tensors.Add(Tensor(path, "vera_lambda_d", vera.LambdaD.Value));
            }
            tensors.Add(new PeftTensor("base_model.vera_A", options.DType, shared.VeraA.Shape.ToArray(), shared.VeraA.ToArray()));
            tensors.Add(new PeftTensor("base_model.vera_B", options.DType, shared.VeraB.Shape.ToArray(), shared.VeraB.ToArray()));
            return Create(PeftConfig.Create("VERA", fields), tensors);
        }

        if (list.All(p => p.Value is LokrLinear)) return FromLokrLayers(list.Select(p => (p.Key, (LokrLinear)p.Value)).ToList(), fields, Tensor);
        if (list.All(p => p.Value is AdaLoraLinear))
            return AdaLoraAdapter(list.Select(p => (p.Key, (AdaLoraLinear)p.Value)).ToList(), fields, options);

        var adapters = list.Select(p => (Path: p.Key, Pair: RankPair(p.Key, p.Value))).ToList();
        bool dora = adapters[0].Pair.Magnitude is not null;
        if (adapters.Any(a => (a.Pair.Magnitude is not null) != dora))
            throw new ArgumentException("DoRA and plain LoRA layers cannot share one adapter (use_dora is one flag per adapter); save them as two adapters.", nameof(layers));
        bool rsLora = adapters[0].Pair.UseRsLora;
        if (adapters.Any(a => a.Pair.UseRsLora != rsLora))
            throw new ArgumentException("rsLoRA and plain LoRA layers cannot share one adapter (use_rslora is one flag per adapter).", nameof(layers));
        var (rank, alpha) = adapters.GroupBy(a => (a.Pair.Rank, a.Pair.Alpha)).OrderByDescending(g => g.Count()).First().Key;
        var rankPattern = new JsonObject();
        var alphaPattern = new JsonObject();
        foreach (var (path, pair) in adapters)
        {
            if (pair.Rank != rank) rankPattern[path] = pair.Rank;
            if (pair.Alpha != alpha) alphaPattern[path] = PeftConfig.Number(pair.Alpha);
            tensors.Add(Tensor(path, "lora_A.weight", pair.A));
            tensors.Add(Tensor(path, "lora_B.weight", pair.B));
            if (pair.Magnitude is not null) tensors.Add(Tensor(path, "lora_magnitude_vector", pair.Magnitude));
        }
        fields["r"] = rank;
        fields["lora_alpha"] = PeftConfig.Number(alpha);
        fields["lora_dropout"] = PeftConfig.Number(adapters[0].Pair.Dropout);
        fields["use_rslora"] = rsLora;
        fields["use_dora"] = dora;
        fields["lora_bias"] = false;
        fields["init_lora_weights"] = options.InitLoraWeights is null ? true : JsonValue.Create(options.InitLoraWeights);
        fields["rank_pattern"] = rankPattern;
        fields["alpha_pattern"] = alphaPattern;
        return Create(PeftConfig.Create("LORA", fields), tensors);
    }

    /// <summary>
    /// LoKr layers as PEFT's LOKR adapter: each parameter under its own name (lokr_w1, lokr_w1_a, ...), r and alpha the most
    /// common pair with rank_pattern / alpha_pattern for the others; decompose_factor and decompose_both must be one per adapter.
    /// </summary>
    private static PeftAdapter FromLokrLayers(List<(string Path, LokrLinear Layer)> layers, JsonObject fields,
                                              Func<string, string, Tensor, PeftTensor> tensor)
    {
        var (_, first) = layers[0];
        if (layers.Any(l => l.Layer.DecomposeFactor != first.DecomposeFactor || l.Layer.DecomposeBoth != first.DecomposeBoth))
            throw new ArgumentException("LoKr layers with different decompose_factor or decompose_both cannot share one adapter (one value per config).", nameof(layers));
        var (rank, alpha) = layers.GroupBy(l => (l.Layer.Rank, l.Layer.Alpha)).OrderByDescending(g => g.Count()).First().Key;
        var rankPattern = new JsonObject();
        var alphaPattern = new JsonObject();
        var tensors = new List<PeftTensor>();
        foreach (var (path, layer) in layers)
        {
            if (layer.Rank != rank) rankPattern[path] = layer.Rank;
            if (layer.Alpha != alpha) alphaPattern[path] = PeftConfig.Number(layer.Alpha);
            foreach (Parameter parameter in layer.Parameters()) tensors.Add(tensor(path, parameter.Name, parameter.Value));
        }
        fields["r"] = rank;
        fields["alpha"] = PeftConfig.Number(alpha);
        fields["rank_dropout"] = 0;
        fields["module_dropout"] = 0;
        fields["use_effective_conv2d"] = false;
        fields["decompose_both"] = first.DecomposeBoth;
        fields["decompose_factor"] = first.DecomposeFactor;
        fields["rank_dropout_scale"] = false;
        fields["init_weights"] = true;
        fields["rank_pattern"] = rankPattern;
        fields["alpha_pattern"] = alphaPattern;
        return Create(PeftConfig.Create("LOKR", fields), tensors);
    }

    /// <summary>The rank-r pair of a LoRA-family layer, through its public API.</summary>
    private readonly record struct LoraPair(int Rank, float Alpha, bool UseRsLora, float Dropout, Tensor A, Tensor B, Tensor? Magnitude);

    private static LoraPair RankPair(string path, IAdapterLayer layer) => layer switch
    {
        DoraLinear d => new(d.Rank, d.Alpha, d.UseRsLora, d.Dropout, d.A.Value, d.B.Value, d.Magnitude.Value),
        LoraLinear l => new(l.Rank, l.Alpha, l.UseRsLora, l.Dropout, l.A.Value, l.B.Value, null),
        LoraFaLinear f => new(f.Rank, f.Alpha, f.UseRsLora, f.Dropout, f.A, f.B.Value, null),
        QloraLinear q => new(q.Rank, q.Alpha, q.UseRsLora, q.Dropout, q.A.Value, q.B.Value, null),
        _ => throw new ArgumentException($"The layer at \"{path}\" is a {layer.GetType().Name}, which has no PEFT LoRA form; layers of one adapter are all LoRA-family or all VeRA.", nameof(layer)),
    };

    /// <summary>
    /// The ADALORA adapter of AdaLoRA layers, as PEFT saves one after training: each module's lora_A rows, lora_E [r', 1]
    /// and lora_B columns of the triplets its RankPattern keeps (all when it has none), rank_pattern naming them per
    /// module, init_r = the layers' ranknum, target_r = the largest kept rank and total_step = 1 (the schedule is not
    /// in the weights; PEFT requires total_step &gt; 0). A layer loaded already sliced (rank &lt; ranknum, no pattern) is
    /// written with its leading flags set: which of PEFT's init_r triplets are overwritten on load does not matter.
    /// </summary>
    private static PeftAdapter AdaLoraAdapter(List<(string Path, AdaLoraLinear Layer)> layers, JsonObject fields, PeftExportOptions options)
    {
        int rankNum = layers[0].Layer.RankNum;
        float alpha = layers[0].Layer.Alpha;
        if (layers.Any(l => l.Layer.RankNum != rankNum || l.Layer.Alpha != alpha))
            throw new ArgumentException("AdaLoRA layers of one adapter share init_r (ranknum) and lora_alpha (one config per adapter).", nameof(layers));
        var tensors = new List<PeftTensor>();
        var rankPattern = new JsonObject();
        int largest = 0;
        foreach (var (path, layer) in layers)
        {
            bool[] keep = layer.RankPattern ?? Enumerable.Range(0, layer.Rank).Select(i => true).ToArray();
            int[] kept = Enumerable.Range(0, keep.Length).Where(i => keep[i]).ToArray();
            largest = Math.Max(largest, kept.Length);
            if (kept.Length < rankNum)
            {
                bool[] flags = layer.RankPattern ?? Enumerable.Range(0, rankNum).Select(i => i < layer.Rank).ToArray();
                rankPattern[path + ".lora_E"] = new JsonArray(flags.Select(f => (JsonNode?)JsonValue.Create(f)).ToArray());
            }
            float[] a = layer.A.Value.ToArray(), e = layer.E.Value.ToArray(), b = layer.B.Value.ToArray();
            int inFeatures = layer.InFeatures, outFeatures = layer.OutFeatures;
            float[] keptA = kept.SelectMany(i => a.AsSpan(i * inFeatures, inFeatures).ToArray()).ToArray();
            float[] keptB = new float[(long)outFeatures * kept.Length];
            for (int n = 0; n < outFeatures; n++)
                for (int j = 0; j < kept.Length; j++) keptB[(long)n * kept.Length + j] = b[(long)n * layer.Rank + kept[j]];
            tensors.Add(new PeftTensor(PeftKeys.Format(path, "lora_A"), options.DType, [kept.Length, inFeatures], keptA));
            tensors.Add(new PeftTensor(PeftKeys.Format(path, "lora_E"), options.DType, [kept.Length, 1], kept.Select(i => e[i]).ToArray()));
            tensors.Add(new PeftTensor(PeftKeys.Format(path, "lora_B"), options.DType, [outFeatures, kept.Length], keptB));
        }
        fields["init_r"] = rankNum;
        fields["target_r"] = largest;
        fields["total_step"] = 1;
        fields["lora_alpha"] = PeftConfig.Number(alpha);
        fields["lora_dropout"] = PeftConfig.Number(layers[0].Layer.Dropout);
        fields["rank_pattern"] = rankPattern.Count == 0 ? null : rankPattern;
        return Create(PeftConfig.Create("ADALORA", fields), tensors);
    }

    /// <summary>
    /// A dense F32 layer of this adapter's variant over <paramref name="w0"/> (no bias, no dropout) holding the
    /// module's weights, for merging: its Merge is the library's merge of that variant.
    /// </summary>
    internal IAdapterLayer CreateMergeLayer(PeftModule module, Device device, Tensor w0, VeraProjections? projections)
    {
        IAdapterLayer layer = Variant switch
        {
            "vera" => new VeraLinear(device, w0, null, projections!, 0f, Config.DInitial),
            "lokr" => NewLokrLayer(module, device, w0, null, DType.F32),
            "adalora" => new AdaLoraLinear(device, w0, null, module.Rank, Config.Rank, module.Alpha),
            "dora" => new DoraLinear(device, w0, null, module.Rank, module.Alpha, 0f, Config.UseRsLora),
            _ => new LoraLinear(device, w0, null, module.Rank, module.Alpha, 0f, Config.UseRsLora),
        };
        try
        {
            CopyInto(module, layer);
            layer.Training = false;
            return layer;
        }
        catch
        {
            layer.Dispose();
            throw;
        }
    }

    /// <summary>Merges a layer made by <see cref="CreateMergeLayer"/> and returns its merged base weight [out, in].</summary>
    internal static Tensor MergeLayer(IAdapterLayer layer)
    {
        switch (layer)
        {
            case LoraLinear lora:
                lora.Merge();
                return lora.W0;
            case DoraLinear dora:
                dora.Merge();
                return dora.W0;
            case VeraLinear vera:
                vera.Merge();
                return vera.W0;
            case LokrLinear lokr:
                lokr.Merge();
                return lokr.W0;
            case GatedRankLinear gated:
                gated.Merge();
                return gated.W0;
            default:
                throw new NotSupportedException($"{layer.GetType().Name} has no merge.");
        }
    }

    private static bool IsMerged(IAdapterLayer layer) => layer switch
    {
        LoraLinear l => l.Merged,
        DoraLinear d => d.Merged,
        VeraLinear v => v.Merged,
        LokrLinear k => k.Merged,
        GatedRankLinear g => g.Merged,
        _ => false,
    };

    /// <summary>Every module the config selects among <paramref name="candidates"/> has weights in the adapter, and every adapter module is selected.</summary>
    internal void CheckCoverage(IEnumerable<string> candidates, bool isBaseFile)
    {
        foreach (PeftModule module in Modules)
            if (!PeftTargeting.IsTargeted(Config, module.Path))
                throw new AdapterMismatchException(module.Path,
                    $"has weights in {Source}, but target_modules {Config.TargetModules?.ToString() ?? "(none)"}{(Config.ExcludeModules is { } x ? $" with exclude_modules {x}" : "")} does not select it");
        // "all-linear" cannot be resolved against a bare weights file (which 2-D weights are linear layers is not in it).
        if (isBaseFile && Config.TargetModules is { IsAllLinear: true }) return;
        foreach (string candidate in candidates)
            if (Module(candidate) is null && PeftTargeting.IsTargeted(Config, candidate))
                throw new AdapterMismatchException(candidate,
                    $"is selected by target_modules {Config.TargetModules} but {Source} has no weights for it");
    }

    internal PeftTensor SharedProjection(string key) => SharedTensors.TryGetValue(key, out PeftTensor? tensor)
        ? tensor
        : throw new NotSupportedException(
            $"{Source}: the VeRA adapter was saved without its projections (save_projection=false); PyTorch's projections cannot be regenerated here (REFERENCE.md §10.1), so save it with save_projection=True.");

    /// <summary>Copies the saved vera_A / vera_B into the one projections object the VeRA layers share.</summary>
    internal void CopyProjections(IReadOnlyList<VeraProjections> projections)
    {
        if (projections.Count != 1)
            throw new AdapterMismatchException("base_model.vera_A", $"the VeRA layers use {projections.Count} projection objects; PEFT's VeRA shares one pair per model");
        PeftTensor veraA = SharedProjection("base_model.vera_A"), veraB = SharedProjection("base_model.vera_B");
        VeraProjections target = projections[0];
        if (!target.VeraA.Shape.SequenceEqual(veraA.Shape) || !target.VeraB.Shape.SequenceEqual(veraB.Shape))
            throw new AdapterMismatchException("base_model.vera_A",
                $"the adapter's projections are {veraA.Describe()} / {veraB.Describe()}, the layers' {target.VeraA.Describe()} / {target.VeraB.Describe()}");
        target.VeraA.CopyFrom(veraA.Values);
        target.VeraB.CopyFrom(veraB.Values);
    }

    /// <summary>The layer of this adapter's variant over the module's base weight in <paramref name="baseModel"/>.</summary>
    private IAdapterLayer CreateLayer(PeftModule module, Device device, SafeTensorsFile baseModel, DType dtype, VeraProjections? projections)
    {
        using BaseWeight weight = BaseWeights.Read(baseModel, module.Path, device, dtype);
        long outFeatures = weight.OutFeatures, inFeatures = weight.InFeatures;
        if (module.OutFeatures != outFeatures || (module.InFeatures != 0 && module.InFeatures != inFeatures))
            throw new AdapterMismatchException(module.Path,
                $"the base weight {weight.Key} is [{outFeatures}, {inFeatures}] but the adapter's tensors are for [out, in] = [{module.OutFeatures}, {(module.InFeatures == 0 ? "?" : module.InFeatures)}]");
        float dropout = Config.Dropout;
        switch (Variant)
        {
            case "lokr":
                if (weight.Quantized is not null)
                    throw new NotSupportedException($"module \"{module.Path}\": LoKr over a 4-bit base has no layer in this build; dequantize the base first (merging into it works).");
                return NewLokrLayer(module, device, weight.Dense!, weight.Bias, dtype);
            case "vera":
                if (weight.Quantized is not null)
                    throw new NotSupportedException($"module \"{module.Path}\": VeRA over a 4-bit base has no layer in this build; dequantize the base first.");
                return new VeraLinear(device, weight.Dense!, weight.Bias, projections!, dropout, Config.DInitial, dtype);
            case "adalora":
                if (weight.Quantized is not null)
                    throw new NotSupportedException($"module \"{module.Path}\": AdaLoRA over a 4-bit base has no layer in this build; dequantize the base first.");
                return new AdaLoraLinear(device, weight.Dense!, weight.Bias, module.Rank, Config.Rank, module.Alpha, dropout, dtype: dtype);
            case "dora":
                return weight.Quantized is not null
                    ? new DoraLinear(device, weight.TakeQuantized(), weight.Bias, module.Rank, module.Alpha, dropout, Config.UseRsLora)
                    : new DoraLinear(device, weight.Dense!, weight.Bias, module.Rank, module.Alpha, dropout, Config.UseRsLora, dtype: dtype);
            default:
                return weight.Quantized is not null
                    ? new QloraLinear(new Nf4Linear(weight.TakeQuantized(), weight.Bias), module.Rank, module.Alpha, dropout, Config.UseRsLora)
                    : new LoraLinear(device, weight.Dense!, weight.Bias, module.Rank, module.Alpha, dropout, Config.UseRsLora, dtype: dtype);
        }
    }

    /// <summary>Copies one module's tensors into its layer after checking that the layer can hold them.</summary>
    internal void CopyInto(PeftModule module, IAdapterLayer layer)
    {
        if (IsMerged(layer)) throw new AdapterMismatchException(module.Path, "the layer is merged; unmerge it before loading an adapter into it");
        if (layer.OutFeatures != module.OutFeatures || (module.InFeatures != 0 && layer.InFeatures != module.InFeatures))
            throw new AdapterMismatchException(module.Path,
                $"the layer is [out, in] = [{layer.OutFeatures}, {layer.InFeatures}] but the adapter's tensors are for [{module.OutFeatures}, {(module.InFeatures == 0 ? "?" : module.InFeatures)}]");
        bool hasMagnitude = module["lora_magnitude_vector"] is not null;
        switch (layer)
        {
            case LokrLinear lokr when Variant == "lokr":
                CheckRankAndScale(module, lokr.Rank, lokr.Scale);
                CopyLokr(module, lokr);
                return;
            case VeraLinear vera when Variant == "vera":
                if (vera.Rank != module.Rank)
                    throw new AdapterMismatchException(module.Path, $"the layer's VeRA rank is {vera.Rank}, the adapter's r is {module.Rank}");
                vera.LambdaB.Value.CopyFrom(module["vera_lambda_b"]!.Values);
                vera.LambdaD.Value.CopyFrom(module["vera_lambda_d"]!.Values);
                return;
            case AdaLoraLinear adaLora when Variant == "adalora":
                if (adaLora.Rank != module.Rank || adaLora.RankNum != Config.Rank)
                    throw new AdapterMismatchException(module.Path,
                        $"the layer holds {adaLora.Rank} of {adaLora.RankNum} triplets, the adapter {module.Rank} of init_r = {Config.Rank}");
                CheckRankAndScale(module, adaLora.Rank, adaLora.Scale);
                adaLora.A.Value.CopyFrom(module["lora_A"]!.Values);
                adaLora.E.Value.CopyFrom(module["lora_E"]!.Values);
                adaLora.B.Value.CopyFrom(module["lora_B"]!.Values);
                return;
            case DoraLinear dora when hasMagnitude:
                CopyPair(module, dora.Rank, dora.Scale, dora.A.Value, dora.B.Value);
                dora.Magnitude.Value.CopyFrom(module["lora_magnitude_vector"]!.Values);
                return;
            case LoraLinear lora when Variant is not ("vera" or "adalora") && !hasMagnitude:
                CopyPair(module, lora.Rank, lora.Scale, lora.A.Value, lora.B.Value);
                return;
            case LoraFaLinear fa when Variant is not ("vera" or "adalora") && !hasMagnitude:
                CopyPair(module, fa.Rank, fa.Scale, fa.A, fa.B.Value);
                return;
            case QloraLinear qlora when Variant is not ("vera" or "adalora") && !hasMagnitude:
                CopyPair(module, qlora.Rank, qlora.Scale, qlora.A.Value, qlora.B.Value);
                return;
            default:
                throw new AdapterMismatchException(module.Path,
                    $"the adapter is {Variant} (peft_type {Config.PeftType}{(Config.UseDora ? ", use_dora" : "")}) and needs a {LayerKinds}, but the layer is a {layer.GetType().Name}");
        }
    }

    /// <summary>
    /// A LokrLinear over <paramref name="w0"/> with the module's r and alpha and the config's decompose_factor and
    /// decompose_both, so its factors take PEFT's shapes; convolution modules (a 4-D lokr_w2, lokr_t2) are refused.
    /// </summary>
    private LokrLinear NewLokrLayer(PeftModule module, Device device, Tensor w0, Tensor? bias, DType dtype)
    {
        if (module["lokr_t2"] is not null || module["lokr_w2"] is { Shape.Count: 4 })
            throw new NotSupportedException($"module \"{module.Path}\": LoKr on a convolution (a 4-D lokr_w2 or use_effective_conv2d's lokr_t2) cannot be attached from PEFT files in this build; build a LokrConv2d and copy the factors.");
        return new LokrLinear(device, w0, bias, module.Rank, module.Alpha, Config.DecomposeFactor, Config.DecomposeBoth, dtype: dtype);
    }

    /// <summary>Copies every LoKr tensor of the module into the layer's parameter of the same name, shapes checked both ways.</summary>
    private static void CopyLokr(PeftModule module, LokrLinear layer)
    {
        var parameters = layer.Parameters().ToDictionary(p => p.Name, StringComparer.Ordinal);
        foreach (string component in module.Tensors.Keys)
            if (!parameters.ContainsKey(component))
                throw new AdapterMismatchException(module.Path,
                    $"the adapter has {component} but the layer's factors are {string.Join(", ", parameters.Keys)} (its r, decompose_factor and decompose_both decide which are low-rank)");
        foreach (var (name, parameter) in parameters)
        {
            PeftTensor tensor = module[name] ?? throw new AdapterMismatchException(module.Path,
                $"the layer has {name} {parameter.Value.Describe()} but the adapter has {string.Join(", ", module.Tensors.Keys)}");
            if (!tensor.Shape.SequenceEqual(parameter.Value.Shape))
                throw new AdapterMismatchException(module.Path, $"{name} is {tensor.Describe()} in the adapter and {parameter.Value.Describe()} in the layer");
            parameter.Value.CopyFrom(tensor.Values);
        }
    }

    /// <summary>Checks r and the scale, then copies lora_A and lora_B into the layer's A and B.</summary>
    private static void CopyPair(PeftModule module, int rank, float scale, Tensor a, Tensor b)
    {
        CheckRankAndScale(module, rank, scale);
        a.CopyFrom(module["lora_A.weight"]!.Values);
        b.CopyFrom(module["lora_B.weight"]!.Values);
    }

    private static void CheckRankAndScale(PeftModule module, int rank, float scale)
    {
        if (rank != module.Rank)
            throw new AdapterMismatchException(module.Path, $"the layer has r = {rank}, the adapter r = {module.Rank}");
        if (Math.Abs(scale - module.Scale) > 1e-6f * Math.Abs(module.Scale))
            throw new AdapterMismatchException(module.Path,
                $"the layer's scale is {scale}, the adapter's {module.Scale} (alpha = {module.Alpha}, r = {module.Rank}); build the layer with the adapter's alpha and rsLoRA flag");
    }

    private static string Preview(IEnumerable<string> names)
    {
        var list = names.Take(6).ToList();
        return list.Count == 0 ? "none" : string.Join(", ", list) + (names.Skip(6).Any() ? ", ..." : "");
    }
}
