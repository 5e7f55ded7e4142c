// PEFT's checkpoint naming, one row per tuner (REFERENCE.md §9.2): which tensors a targeted module
// holds (the component after the module path, in the saved form without the adapter name), their
// shapes, and which tensors are shared by the whole model. Reading, writing, attaching and merging
// all go through this table, so a tuner that lands later plugs in by flipping its row to available
// and giving it a layer; until then its files load and inspect, and using them with layers says what
// is pending.
namespace LoraKernels.IO.Peft;

/// <summary>One tensor a targeted module holds in a PEFT checkpoint.</summary>
/// <param name="Component">The saved key's tail after the module path, e.g. "lora_A.weight", "lora_magnitude_vector", "vera_lambda_d".</param>
/// <param name="Parameter">The PEFT attribute it lives in ("lora_A", "lora_magnitude_vector", ...): the name PEFT inserts the adapter name after.</param>
/// <param name="ShapeFormula">Its shape in terms of r, in and out, for messages and docs.</param>
/// <param name="Required">Whether every targeted module of the tuner must have it.</param>
/// <param name="Condition">When an optional tensor is present: the config flag it needs (e.g. "use_dora").</param>
public sealed record PeftModuleTensor(string Component, string Parameter, string ShapeFormula, bool Required, string? Condition = null);

/// <summary>How one PEFT tuner (peft_type) is saved, and whether this build can attach and merge it.</summary>
public sealed record PeftFormat
{
    /// <summary>adapter_config.json's peft_type ("LORA", "VERA", "LOKR", "ADALORA").</summary>
    public required string PeftType { get; init; }

    /// <summary>The catalogue variants this tuner covers (LoRA's row also carries rsLoRA, DoRA, PiSSA, LoftQ).</summary>
    public required IReadOnlyList<string> Variants { get; init; }

    /// <summary>The tensors of each targeted module.</summary>
    public required IReadOnlyList<PeftModuleTensor> ModuleTensors { get; init; }

    /// <summary>Tensors shared by all modules, with their full keys (VeRA's projections).</summary>
    public IReadOnlyList<PeftModuleTensor> SharedTensors { get; init; } = [];

    /// <summary>The config field holding the rank, and its default (PEFT's).</summary>
    public required string RankField { get; init; }
    public required int DefaultRank { get; init; }

    /// <summary>Whether adapters of this tuner can be attached to layers and merged in this build.</summary>
    public required bool Available { get; init; }

    /// <summary>Why not, when not available.</summary>
    public string? Pending { get; init; }

    /// <summary>The module tensor whose saved component is <paramref name="component"/>, or null.</summary>
    public PeftModuleTensor? Find(string component) => ModuleTensors.FirstOrDefault(t => t.Component == component);

    /// <summary>The PEFT attribute names of the module tensors ("lora_A", "lora_B", ...).</summary>
    public IEnumerable<string> Parameters => ModuleTensors.Select(t => t.Parameter).Distinct();
}

public static class PeftFormats
{
    /// <summary>Every key starts with this, then the module path in the base model.</summary>
    public const string ModulePrefix = "base_model.model.";

    /// <summary>Shared tensors (VeRA's projections) start with this.</summary>
    public const string SharedPrefix = "base_model.";

    public static readonly PeftFormat Lora = new()
    {
        PeftType = "LORA",
        Variants = ["lora", "rslora", "dora", "pissa", "loftq", "lora-fa", "lora+", "qlora", "qdora"],
        ModuleTensors =
        [
            new("lora_A.weight", "lora_A", "[r, in]", Required: true),
            new("lora_B.weight", "lora_B", "[out, r]", Required: true),
            new("lora_B.bias", "lora_B", "[out]", Required: false, Condition: "lora_bias"),
            // Saved without its ".weight" (PEFT strips it for backward compatibility, and re-adds it on load).
            new("lora_magnitude_vector", "lora_magnitude_vector", "[out]", Required: false, Condition: "use_dora"),
        ],
        RankField = "r",
        DefaultRank = 8,
        Available = true,
    };

    public static readonly PeftFormat Vera = new()
    {
        PeftType = "VERA",
        Variants = ["vera"],
        ModuleTensors =
        [
            new("vera_lambda_b", "vera_lambda_b", "[out]", Required: true),
            new("vera_lambda_d", "vera_lambda_d", "[r]", Required: true),
        ],
        SharedTensors =
        [
            new("base_model.vera_A", "vera_A", "[r, max_in]", Required: false, Condition: "save_projection"),
            new("base_model.vera_B", "vera_B", "[max_out, r]", Required: false, Condition: "save_projection"),
        ],
        RankField = "r",
        DefaultRank = 256,
        Available = true,
    };

    public static readonly PeftFormat LoKr = new()
    {
        PeftType = "LOKR",
        Variants = ["lokr"],
        ModuleTensors =
        [
            new("lokr_w1", "lokr_w1", "[out_l, in_m]", Required: false),
            new("lokr_w1_a", "lokr_w1_a", "[out_l, r]", Required: false, Condition: "decompose_both"),
            new("lokr_w1_b", "lokr_w1_b", "[r, in_m]", Required: false, Condition: "decompose_both"),
            new("lokr_w2", "lokr_w2", "[out_k, in_n]", Required: false),
            new("lokr_w2_a", "lokr_w2_a", "[out_k, r]", Required: false),
            new("lokr_w2_b", "lokr_w2_b", "[r, in_n]", Required: false),
            new("lokr_t2", "lokr_t2", "[r, r, kh, kw]", Required: false, Condition: "use_effective_conv2d"),
        ],
        RankField = "r",
        DefaultRank = 8,
        Available = true,
    };

    public static readonly PeftFormat AdaLora = new()
    {
        PeftType = "ADALORA",
        Variants = ["adalora"],
        ModuleTensors =
        [
            new("lora_A", "lora_A", "[r', in]", Required: true),
            new("lora_E", "lora_E", "[r', 1]", Required: true),
            new("lora_B", "lora_B", "[out, r']", Required: true),
        ],
        RankField = "init_r",
        DefaultRank = 12,
        Available = true,
    };

    /// <summary>Every tuner this library knows the checkpoint format of.</summary>
    public static IReadOnlyList<PeftFormat> All { get; } = [Lora, Vera, LoKr, AdaLora];

    /// <summary>The tuner saved with peft_type <paramref name="peftType"/>, or null.</summary>
    public static PeftFormat? ForPeftType(string peftType) =>
        All.FirstOrDefault(f => string.Equals(f.PeftType, peftType, StringComparison.Ordinal));
}
