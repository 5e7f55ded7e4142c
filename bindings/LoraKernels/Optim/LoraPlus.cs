// LoRA+ (Hayou, Ghosh, Yu 2024, arXiv:2402.12354): B learns `ratio` times faster than A. Groups
// parameters exactly as PEFT's create_loraplus_optimizer (REFERENCE.md 7.1), for the parameters
// that require a gradient:
//   groupB          name contains "lora_B", or a 1-D parameter (DoRA magnitude, VeRA λ) -> lr·ratio, weightDecay
//   groupB_no_decay the same, but PEFT's no-decay names (containing "bias")              -> lr·ratio, 0
//   groupA          everything else (lora_A, other matrices)                              -> lr, weightDecay
// PEFT's fourth group (LoRA embedding layers, lr = loraplus_lr_embedding) has no counterpart here:
// the library has no embedding adapters. Empty groups are left out. The default ratio is 16
// (REFERENCE.md section 11; PEFT requires the argument).
using LoraKernels.Autograd;
using LoraKernels.Layers;

namespace LoraKernels.Optim;

public static class LoraPlus
{
    public const float DefaultRatio = 16f;

    /// <summary>The LoRA+ parameter groups of <paramref name="parameters"/> (see the file comment).</summary>
    public static IReadOnlyList<ParameterGroup> Groups(IEnumerable<Parameter> parameters, float lr, float ratio = DefaultRatio,
                                                       float weightDecay = 0f)
    {
        ArgumentNullException.ThrowIfNull(parameters);
        if (!(ratio > 0f) || !float.IsFinite(ratio))
            throw new ArgumentOutOfRangeException(nameof(ratio), ratio, "LoraPlus: the learning-rate ratio must be finite and > 0.");
        var groupA = new List<Parameter>();
        var groupB = new List<Parameter>();
        var groupBNoDecay = new List<Parameter>();
        foreach (Parameter parameter in parameters)
        {
            if (parameter is null) throw new ArgumentException("LoraPlus: a parameter is null.", nameof(parameters));
            if (!parameter.RequiresGrad) continue;
            bool fastGroup = parameter.Name.Contains("lora_B", StringComparison.Ordinal) || parameter.Value.Rank == 1;
            if (!fastGroup) groupA.Add(parameter);
            else if (parameter.Name.Contains("bias", StringComparison.Ordinal)) groupBNoDecay.Add(parameter);
            else groupB.Add(parameter);
        }
        var groups = new List<ParameterGroup>(3);
        if (groupA.Count > 0) groups.Add(new ParameterGroup("groupA", groupA, lr, weightDecay));
        if (groupB.Count > 0) groups.Add(new ParameterGroup("groupB", groupB, lr * ratio, weightDecay));
        if (groupBNoDecay.Count > 0) groups.Add(new ParameterGroup("groupB_no_decay", groupBNoDecay, lr * ratio, 0f));
        if (groups.Count == 0) throw new ArgumentException("LoraPlus: no parameter requires a gradient.", nameof(parameters));
        return groups;
    }

    /// <summary>An AdamW over the LoRA+ groups of <paramref name="parameters"/> (any optimizer takes <see cref="Groups"/> too).</summary>
    public static AdamW CreateOptimizer(IEnumerable<Parameter> parameters, float lr, float ratio = DefaultRatio, float weightDecay = 0f,
                                        float beta1 = 0.9f, float beta2 = 0.999f, float eps = 1e-8f, StatePaging? paging = null) =>
        new(Groups(parameters, lr, ratio, weightDecay), beta1, beta2, eps, paging);

    /// <summary>An AdamW over the LoRA+ groups of the trainable parameters of <paramref name="layers"/>.</summary>
    public static AdamW CreateOptimizer(IEnumerable<IAdapterLayer> layers, float lr, float ratio = DefaultRatio, float weightDecay = 0f,
                                        float beta1 = 0.9f, float beta2 = 0.999f, float eps = 1e-8f, StatePaging? paging = null)
    {
        ArgumentNullException.ThrowIfNull(layers);
        return CreateOptimizer(layers.SelectMany(layer => layer.Parameters()), lr, ratio, weightDecay, beta1, beta2, eps, paging);
    }
}
