// AdamW with torch.optim.AdamW semantics (decoupled weight decay, bias-corrected moments, a step
// count per parameter that advances only when the parameter has a gradient). Moments m and v are
// F32 tensors on the parameter's device, created at its first step. A BF16 parameter is trained
// through an F32 master copy kept in the optimizer state (created from the parameter's value at
// its first step) and rounded back into the parameter after every step, so small updates
// accumulate instead of vanishing in bf16 rounding. Parameters come in groups (torch's param_groups),
// each with its own learning rate and weight decay; the plain constructor makes one group.
// Non-finite gradients (a NaN in the input, an overflow) are looked for before any parameter moves:
// by default the whole step is skipped and counted (as a mixed-precision GradScaler does), so one bad
// batch cannot turn every parameter into NaN (docs/API.md, "Non-finite values").
using LoraKernels.Autograd;

namespace LoraKernels.Optim;

/// <summary>What an optimizer step does when a gradient holds NaN or ±Inf.</summary>
public enum NonFiniteGradients
{
    /// <summary>Skip the whole step (no parameter or state changes), count it in SkippedSteps and return false from Step.</summary>
    SkipStep,

    /// <summary>Throw an exception naming the parameter and the first bad element; nothing changes.</summary>
    Throw,

    /// <summary>Apply the update unchecked (saves one read of every gradient; NaN then spreads into the parameters).</summary>
    Apply,
}

public sealed class AdamW : IDisposable
{
    private sealed class State(Tensor m, Tensor v, Tensor? master) : IDisposable
    {
        public Tensor M { get; } = m;
        public Tensor V { get; } = v;
        public Tensor? Master { get; } = master;
        public long Steps { get; set; }

        public void Dispose()
        {
            M.Dispose();
            V.Dispose();
            Master?.Dispose();
        }
    }

    private readonly Parameter[] _parameters;
    private readonly ParameterGroup[] _groups;
    private readonly Dictionary<Parameter, State> _states = new(ReferenceEqualityComparer.Instance);
    private bool _disposed;

    public AdamW(IEnumerable<Parameter> parameters, float lr = 1e-3f, float beta1 = 0.9f, float beta2 = 0.999f,
                 float eps = 1e-8f, float weightDecay = 0.01f)
        : this([new ParameterGroup("default", parameters ?? throw new ArgumentNullException(nameof(parameters)), lr, weightDecay)],
               beta1, beta2, eps)
    {
    }

    /// <summary>AdamW over parameter groups, each stepped with its own learning rate and weight decay.</summary>
    public AdamW(IEnumerable<ParameterGroup> groups, float beta1 = 0.9f, float beta2 = 0.999f, float eps = 1e-8f)
    {
        ArgumentNullException.ThrowIfNull(groups);
        _groups = groups.ToArray();
        if (_groups.Any(g => g is null)) throw new ArgumentException("AdamW: a parameter group is null.", nameof(groups));
        if (_groups.Length == 0) throw new ArgumentException("AdamW: at least one parameter group is needed.", nameof(groups));
        _parameters = _groups.SelectMany(g => g.Parameters).ToArray();
        if (_parameters.Distinct(ReferenceEqualityComparer.Instance).Count() != _parameters.Length)
            throw new ArgumentException("AdamW: a parameter appears more than once.", nameof(groups));
        if (!(beta1 >= 0f && beta1 < 1f)) throw new ArgumentOutOfRangeException(nameof(beta1), beta1, "AdamW: beta1 must be in [0, 1).");
        if (!(beta2 >= 0f && beta2 < 1f)) throw new ArgumentOutOfRangeException(nameof(beta2), beta2, "AdamW: beta2 must be in [0, 1).");
        if (!(eps >= 0f) || !float.IsFinite(eps)) throw new ArgumentOutOfRangeException(nameof(eps), eps, "AdamW: eps must be finite and >= 0.");
        Beta1 = beta1;
        Beta2 = beta2;
        Eps = eps;
    }

    /// <summary>
    /// The learning rate of the next step (settable, for schedules) when there is one group; with
    /// several, set each group's <see cref="ParameterGroup.LearningRate"/> instead.
    /// </summary>
    public float LearningRate
    {
        get => SingleGroup().LearningRate;
        set => SingleGroup().LearningRate = value;
    }

    public float Beta1 { get; }
    public float Beta2 { get; }
    public float Eps { get; }

    /// <summary>The weight decay when there is one group (see <see cref="ParameterGroup.WeightDecay"/> otherwise).</summary>
    public float WeightDecay => SingleGroup().WeightDecay;

    /// <summary>The parameter groups, in the order given.</summary>
    public IReadOnlyList<ParameterGroup> Groups => _groups;

    /// <summary>Steps applied so far (skipped steps are not counted).</summary>
    public long StepCount { get; private set; }

    /// <summary>What <see cref="Step"/> does when a gradient holds NaN or ±Inf (default: skip the step).</summary>
    public NonFiniteGradients OnNonFiniteGradients { get; set; } = NonFiniteGradients.SkipStep;

    /// <summary>Steps skipped because a gradient held NaN or ±Inf.</summary>
    public long SkippedSteps { get; private set; }

    public IReadOnlyList<Parameter> Parameters => _parameters;

    /// <summary>
    /// One AdamW update of every parameter that requires a gradient and has one. Returns false when the
    /// step was skipped because a gradient held NaN or ±Inf (<see cref="OnNonFiniteGradients"/>).
    /// </summary>
    /// <exception cref="NonFiniteGradientException">A gradient holds NaN or ±Inf and the policy is <see cref="NonFiniteGradients.Throw"/>.</exception>
    public bool Step()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        foreach (Parameter parameter in _parameters)
        {
            if (!parameter.RequiresGrad || parameter.Grad is null) continue;
            CheckGradient(parameter);
        }
        if (OnNonFiniteGradients != NonFiniteGradients.Apply && FirstNonFiniteGradient() is var (bad, index))
        {
            if (OnNonFiniteGradients == NonFiniteGradients.Throw) throw new NonFiniteGradientException(bad.Name, index, bad.Grad!.Describe());
            SkippedSteps++;
            return false;
        }
        StepCount++;
        foreach (ParameterGroup group in _groups)
        {
            foreach (Parameter parameter in group.Parameters)
            {
                if (!parameter.RequiresGrad || parameter.Grad is null) continue;
                State state = StateOf(parameter);
                state.Steps++;
                Tensor weights = state.Master ?? parameter.Value;
                IOptimizerKernels.On(parameter.Value.Device).AdamWStep(weights, parameter.Grad, state.M, state.V, group.LearningRate, Beta1, Beta2,
                                                         Eps, group.WeightDecay, state.Steps);
                if (state.Master is not null) parameter.Value.Device.Backend.Cast(state.Master, parameter.Value);
            }
        }
        return true;
    }

    /// <summary>The first parameter whose gradient holds NaN or ±Inf and that element's index, or null.</summary>
    private (Parameter Parameter, long Index)? FirstNonFiniteGradient()
    {
        foreach (Parameter parameter in _parameters)
        {
            if (!parameter.RequiresGrad || parameter.Grad is null) continue;
            long index = parameter.Grad.Device.Backend.FirstNonFinite(parameter.Grad);
            if (index >= 0) return (parameter, index);
        }
        return null;
    }

    private ParameterGroup SingleGroup() =>
        _groups.Length == 1
            ? _groups[0]
            : throw new InvalidOperationException($"AdamW has {_groups.Length} parameter groups; use Groups[i].LearningRate and Groups[i].WeightDecay.");

    /// <summary>Frees every parameter's gradient (torch's zero_grad(set_to_none=True)).</summary>
    public void ZeroGrad()
    {
        foreach (Parameter parameter in _parameters) parameter.ZeroGrad();
    }

    private static void CheckGradient(Parameter parameter)
    {
        const string op = "AdamW.Step";
        Tensor value = parameter.Value;
        value.ThrowIfDisposed(parameter.Name);
        Tensor grad = parameter.Grad!;
        grad.ThrowIfDisposed($"{parameter.Name}.Grad");
        if (grad.DType != DType.F32 || !ReferenceEquals(grad.Device, value.Device) || !grad.Shape.SequenceEqual(value.Shape))
            throw new ArgumentException(
                $"{op}: the gradient of {parameter.Name} must be F32[{string.Join(", ", value.Shape)}] on {value.Device}, got {grad.Describe()}",
                nameof(parameter));
        Ops.Checks.NotEmpty(op, parameter.Name, value);
    }

    private State StateOf(Parameter parameter)
    {
        if (_states.TryGetValue(parameter, out State? state)) return state;
        Tensor value = parameter.Value;
        long[] shape = [.. value.Shape];
        Tensor m = Tensor.Zeros(value.Device, DType.F32, shape);
        Tensor? v = null, master = null;
        try
        {
            v = Tensor.Zeros(value.Device, DType.F32, shape);
            if (value.DType != DType.F32) master = Ops.Elementwise.Cast(value, DType.F32);
            state = new State(m, v, master);
        }
        catch
        {
            m.Dispose();
            v?.Dispose();
            throw;
        }
        _states.Add(parameter, state);
        return state;
    }

    /// <summary>Bytes of the state buffers (moments, master copy) held for <paramref name="parameter"/>; 0 before its first step.</summary>
    internal long StateBytes(Parameter parameter)
    {
        if (!_states.TryGetValue(parameter, out State? state)) return 0;
        return state.M.Buffer.SizeInBytes + state.V.Buffer.SizeInBytes + (state.Master?.Buffer.SizeInBytes ?? 0);
    }

    /// <summary>Frees the optimizer state (moments, master copies); the parameters are untouched.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        foreach (State state in _states.Values) state.Dispose();
        _states.Clear();
    }
}
