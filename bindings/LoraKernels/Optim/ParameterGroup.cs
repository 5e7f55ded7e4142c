// A set of parameters that an optimizer updates with one learning rate and one weight decay, as a
// torch.optim param_group: LoRA+ gives B a larger rate than A, and biases no decay.
using LoraKernels.Autograd;

namespace LoraKernels.Optim;

public sealed class ParameterGroup
{
    private float _learningRate;

    public ParameterGroup(string name, IEnumerable<Parameter> parameters, float learningRate, float weightDecay = 0f)
    {
        ArgumentNullException.ThrowIfNull(name);
        ArgumentNullException.ThrowIfNull(parameters);
        Name = name;
        Parameters = parameters.ToArray();
        for (int i = 0; i < Parameters.Count; i++)
        {
            if (Parameters[i] is null) throw new ArgumentException($"ParameterGroup '{name}': parameter {i} is null.", nameof(parameters));
        }
        LearningRate = learningRate;
        if (!(weightDecay >= 0f) || !float.IsFinite(weightDecay))
            throw new ArgumentOutOfRangeException(nameof(weightDecay), weightDecay, $"ParameterGroup '{name}': weightDecay must be finite and >= 0.");
        WeightDecay = weightDecay;
    }

    public string Name { get; }
    public IReadOnlyList<Parameter> Parameters { get; }

    /// <summary>This group's learning rate (settable, for schedules).</summary>
    public float LearningRate
    {
        get => _learningRate;
        set
        {
            if (!(value >= 0f) || !float.IsFinite(value))
                throw new ArgumentOutOfRangeException(nameof(value), value, $"ParameterGroup '{Name}': the learning rate must be finite and >= 0.");
            _learningRate = value;
        }
    }

    public float WeightDecay { get; }

    public override string ToString() => $"{Name}: {Parameters.Count} parameters, lr {LearningRate}, weight decay {WeightDecay}";
}
