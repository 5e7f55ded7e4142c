// A checkpoint's manifest.json: what the two safetensors files hold and everything else a resumed
// run needs to take the same next steps (the optimizer's kind, hyper-parameters and settings, step
// and skip counts, the schedule, each group's rate, decay and members, each parameter's dtype, shape
// and step count), plus each file's size and SHA-256, so a truncated or corrupted file is caught
// before anything is loaded. Written with Utf8JsonWriter and read with JsonDocument (no reflection,
// trim-safe); every field is checked and a bad one named in an InvalidFileException.
using System.Globalization;
using System.Text.Json;

namespace LoraKernels.Optim;

internal sealed record CheckpointManifest(
    long StepCount,
    long SkippedSteps,
    string Optimizer,
    IReadOnlyDictionary<string, double> Hyperparameters,
    bool Paged,
    int AccumulationSteps,
    double? MaxGradNorm,
    NonFiniteGradients OnNonFiniteGradients,
    CheckpointSchedule? Schedule,
    IReadOnlyList<CheckpointGroup> Groups,
    IReadOnlyDictionary<string, CheckpointParameter> Parameters,
    IReadOnlyDictionary<string, CheckpointFile> Files,
    IReadOnlyDictionary<string, string> Metadata)
{
    public const string Format = "lorakernels-checkpoint";
    public const int Version = 1;
    private const int MaxBytes = 64 << 20;

    public byte[] ToJson()
    {
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer, new JsonWriterOptions { Indented = true }))
        {
            json.WriteStartObject();
            json.WriteString("format", Format);
            json.WriteNumber("version", Version);
            json.WriteNumber("step_count", StepCount);
            json.WriteNumber("skipped_steps", SkippedSteps);
            json.WriteStartObject("optimizer");
            json.WriteString("name", Optimizer);
            json.WriteStartObject("hyperparameters");
            foreach (var (key, value) in Hyperparameters.OrderBy(p => p.Key, StringComparer.Ordinal)) json.WriteNumber(key, value);
            json.WriteEndObject();
            json.WriteBoolean("paged", Paged);
            json.WriteNumber("accumulation_steps", AccumulationSteps);
            if (MaxGradNorm is double max) json.WriteNumber("max_grad_norm", max);
            else json.WriteNull("max_grad_norm");
            json.WriteString("non_finite_gradients", OnNonFiniteGradients.ToString());
            json.WriteEndObject();
            if (Schedule is { } schedule)
            {
                json.WriteStartObject("schedule");
                json.WriteString("kind", schedule.Kind);
                json.WriteNumber("warmup_steps", schedule.WarmupSteps);
                json.WriteNumber("total_steps", schedule.TotalSteps);
                json.WriteNumber("minimum_factor", schedule.MinimumFactor);
                json.WriteEndObject();
            }
            else
            {
                json.WriteNull("schedule");
            }
            json.WriteStartArray("groups");
            foreach (CheckpointGroup group in Groups)
            {
                json.WriteStartObject();
                json.WriteString("name", group.Name);
                json.WriteNumber("learning_rate", group.LearningRate);
                json.WriteNumber("weight_decay", group.WeightDecay);
                json.WriteStartArray("parameters");
                foreach (string name in group.Parameters) json.WriteStringValue(name);
                json.WriteEndArray();
                json.WriteEndObject();
            }
            json.WriteEndArray();
            json.WriteStartObject("parameters");
            foreach (var (name, parameter) in Parameters)
            {
                json.WriteStartObject(name);
                json.WriteString("dtype", parameter.DType.ToString());
                json.WriteStartArray("shape");
                foreach (long dimension in parameter.Shape) json.WriteNumberValue(dimension);
                json.WriteEndArray();
                if (parameter.Steps is long steps) json.WriteNumber("steps", steps);
                else json.WriteNull("steps");
                json.WriteEndObject();
            }
            json.WriteEndObject();
            json.WriteStartObject("files");
            foreach (var (name, file) in Files)
            {
                json.WriteStartObject(name);
                json.WriteNumber("bytes", file.Bytes);
                json.WriteString("sha256", file.Sha256);
                json.WriteEndObject();
            }
            json.WriteEndObject();
            json.WriteStartObject("metadata");
            foreach (var (key, value) in Metadata.OrderBy(p => p.Key, StringComparer.Ordinal)) json.WriteString(key, value);
            json.WriteEndObject();
            json.WriteEndObject();
        }
        return buffer.ToArray();
    }

    /// <summary>The manifest at <paramref name="path"/>, every field checked.</summary>
    public static CheckpointManifest Read(string path)
    {
        var info = new FileInfo(path);
        if (!info.Exists) throw new InvalidFileException(path, null, "the checkpoint has no manifest");
        if (info.Length > MaxBytes) throw new InvalidFileException(path, null, $"the manifest is {info.Length} bytes, more than the {MaxBytes}-byte limit");
        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(File.ReadAllBytes(path), new JsonDocumentOptions { AllowDuplicateProperties = false, MaxDepth = 16 });
        }
        catch (JsonException e)
        {
            throw new InvalidFileException(path, null, $"the manifest is not valid JSON: {e.Message}", e);
        }
        using (document)
        {
            var reader = new Fields(path);
            JsonElement root = reader.Object(document.RootElement, "(root)");
            if (reader.String(root, "format") != Format) throw new InvalidFileException(path, "format", $"is not \"{Format}\"");
            long version = reader.Count(root, "version");
            if (version != Version) throw new InvalidFileException(path, "version", $"is {version}; this library reads version {Version}");
            JsonElement optimizer = reader.Child(root, "optimizer");
            var hyperparameters = new Dictionary<string, double>(StringComparer.Ordinal);
            foreach (JsonProperty property in reader.Child(optimizer, "hyperparameters").EnumerateObject())
                hyperparameters[property.Name] = reader.NumberValue(property.Value, $"hyperparameters.{property.Name}");
            string policy = reader.String(optimizer, "non_finite_gradients");
            if (!Enum.TryParse(policy, ignoreCase: false, out NonFiniteGradients onNonFinite) || !Enum.IsDefined(onNonFinite))
                throw new InvalidFileException(path, "non_finite_gradients", $"\"{policy}\" is not SkipStep, Throw or Apply");
            return new CheckpointManifest(
                reader.Count(root, "step_count"),
                reader.Count(root, "skipped_steps"),
                reader.String(optimizer, "name"),
                hyperparameters,
                reader.Boolean(optimizer, "paged"),
                (int)Math.Min(int.MaxValue, reader.Count(optimizer, "accumulation_steps")),
                reader.OptionalNumber(optimizer, "max_grad_norm"),
                onNonFinite,
                ReadSchedule(reader, root),
                reader.Array(root, "groups").EnumerateArray().Select((g, i) => ReadGroup(reader, g, i)).ToArray(),
                reader.Child(root, "parameters").EnumerateObject().ToDictionary(p => p.Name, p => ReadParameter(reader, p), StringComparer.Ordinal),
                reader.Child(root, "files").EnumerateObject().ToDictionary(
                    p => p.Name, p => new CheckpointFile(reader.Count(reader.Object(p.Value, p.Name), "bytes"), reader.String(p.Value, "sha256")),
                    StringComparer.Ordinal),
                reader.Child(root, "metadata").EnumerateObject().ToDictionary(p => p.Name, p => reader.StringValue(p.Value, $"metadata.{p.Name}"), StringComparer.Ordinal));
        }
    }

    private static CheckpointSchedule? ReadSchedule(Fields reader, JsonElement root)
    {
        if (!root.TryGetProperty("schedule", out JsonElement schedule)) throw new InvalidFileException(reader.Path, "schedule", "is missing");
        if (schedule.ValueKind == JsonValueKind.Null) return null;
        reader.Object(schedule, "schedule");
        long warmup = reader.Count(schedule, "warmup_steps");
        if (warmup > int.MaxValue) throw new InvalidFileException(reader.Path, "warmup_steps", $"{warmup} is too large");
        return new CheckpointSchedule(reader.String(schedule, "kind"), (int)warmup, reader.Count(schedule, "total_steps"),
                                      reader.Number(schedule, "minimum_factor"));
    }

    private static CheckpointGroup ReadGroup(Fields reader, JsonElement group, int index)
    {
        reader.Object(group, $"groups[{index}]");
        return new CheckpointGroup(reader.String(group, "name"), reader.Number(group, "learning_rate"), reader.Number(group, "weight_decay"),
                                   reader.Array(group, "parameters").EnumerateArray().Select(p => reader.StringValue(p, $"groups[{index}].parameters")).ToArray());
    }

    private static CheckpointParameter ReadParameter(Fields reader, JsonProperty property)
    {
        JsonElement parameter = reader.Object(property.Value, property.Name);
        string dtype = reader.String(parameter, "dtype");
        if (!Enum.TryParse(dtype, ignoreCase: false, out DType parsed) || !Enum.IsDefined(parsed))
            throw new InvalidFileException(reader.Path, $"{property.Name}.dtype", $"\"{dtype}\" is not F32 or BF16");
        long[] shape = reader.Array(parameter, "shape").EnumerateArray().Select(d => reader.CountValue(d, $"{property.Name}.shape")).ToArray();
        if (!parameter.TryGetProperty("steps", out JsonElement steps)) throw new InvalidFileException(reader.Path, $"{property.Name}.steps", "is missing");
        return new CheckpointParameter(parsed, shape, steps.ValueKind == JsonValueKind.Null ? null : reader.CountValue(steps, $"{property.Name}.steps"));
    }

    /// <summary>Typed, checked access to the manifest's fields; every failure names the field.</summary>
    private sealed class Fields(string path)
    {
        public string Path { get; } = path;

        public JsonElement Object(JsonElement element, string key) =>
            element.ValueKind == JsonValueKind.Object ? element : throw Bad(key, $"is {element.ValueKind}, not an object");

        public JsonElement Child(JsonElement parent, string key) => Object(Get(parent, key), key);

        public JsonElement Array(JsonElement parent, string key)
        {
            JsonElement value = Get(parent, key);
            return value.ValueKind == JsonValueKind.Array ? value : throw Bad(key, $"is {value.ValueKind}, not an array");
        }

        public string String(JsonElement parent, string key) => StringValue(Get(parent, key), key);

        public string StringValue(JsonElement value, string key) =>
            value.ValueKind == JsonValueKind.String ? value.GetString()! : throw Bad(key, $"is {value.ValueKind}, not a string");

        public bool Boolean(JsonElement parent, string key)
        {
            JsonElement value = Get(parent, key);
            return value.ValueKind switch
            {
                JsonValueKind.True => true,
                JsonValueKind.False => false,
                _ => throw Bad(key, $"is {value.ValueKind}, not true or false"),
            };
        }

        public double Number(JsonElement parent, string key) => NumberValue(Get(parent, key), key);

        public double NumberValue(JsonElement value, string key) =>
            value.ValueKind == JsonValueKind.Number && value.TryGetDouble(out double number) && double.IsFinite(number)
                ? number
                : throw Bad(key, $"is {Describe(value)}, not a finite number");

        public double? OptionalNumber(JsonElement parent, string key)
        {
            JsonElement value = Get(parent, key);
            return value.ValueKind == JsonValueKind.Null ? null : NumberValue(value, key);
        }

        public long Count(JsonElement parent, string key) => CountValue(Get(parent, key), key);

        public long CountValue(JsonElement value, string key) =>
            value.ValueKind == JsonValueKind.Number && value.TryGetInt64(out long count) && count >= 0
                ? count
                : throw Bad(key, $"is {Describe(value)}, not an integer >= 0");

        private JsonElement Get(JsonElement parent, string key) =>
            parent.TryGetProperty(key, out JsonElement value) ? value : throw Bad(key, "is missing");

        private InvalidFileException Bad(string key, string problem) => new(Path, key, problem);

        private static string Describe(JsonElement value) =>
            value.ValueKind == JsonValueKind.Number ? value.GetRawText() : value.ValueKind.ToString();
    }
}

internal sealed record CheckpointSchedule(string Kind, int WarmupSteps, long TotalSteps, double MinimumFactor);

internal sealed record CheckpointGroup(string Name, double LearningRate, double WeightDecay, IReadOnlyList<string> Parameters);

/// <summary>A parameter's dtype and shape, and its optimizer step count (null when it has no state yet).</summary>
internal sealed record CheckpointParameter(DType DType, IReadOnlyList<long> Shape, long? Steps);

internal sealed record CheckpointFile(long Bytes, string Sha256)
{
    public override string ToString() => string.Create(CultureInfo.InvariantCulture, $"{Bytes} bytes, SHA-256 {Sha256}");
}
