// What every optimizer shares: parameter groups (torch's param_groups, each with its own learning
// rate and weight decay), the step's order of business, and the per-parameter state store. A step:
//   1. checks every gradient (F32, the parameter's shape and device);
//   2. with AccumulationSteps = k, only every k-th call applies (the tape sums the k gradients; the
//      update scales them by 1/k, so it sees their mean); the calls between return false;
//   3. one pass over all gradients (when clipping or guarding) computes Σ g² in double: not finite iff
//      a gradient holds NaN or ±Inf, which the policy OnNonFiniteGradients handles before anything
//      moves (skip the step, throw, or apply); else the global norm clips the step (torch's
//      clip_grad_norm_: coefficient max_norm / (norm + 1e-6) when below 1);
//   4. the schedule sets each group's rate for this step (its LearningRate × the schedule's factor);
//   5. the subclass updates every parameter with a gradient in one fused call per kernel, through the
//      pager (resident state in place; paged state chunk by chunk through a working window).
// The gradient scale of 2 and 3 is computed in double and rounded once; it is exactly 1 without them,
// so a plain step is bit for bit the unscaled update.
using LoraKernels.Autograd;
using LoraKernels.Layers;
using LoraKernels.Runtime;

namespace LoraKernels.Optim;

public abstract class Optimizer : IDisposable
{
    // torch.nn.utils.clip_grad_norm_'s guard against dividing by a zero norm.
    private const double ClipEpsilon = 1e-6;

    private readonly Parameter[] _parameters;
    private readonly ParameterGroup[] _groups;
    private readonly StatePager _pager;
    private readonly SegmentList<GradSpan> _spans = new();
    private int _accumulationSteps = 1;
    private float? _maxGradNorm;
    private bool _disposed;

    private protected Optimizer(string name, IEnumerable<ParameterGroup> groups, StatePaging? paging)
    {
        ArgumentNullException.ThrowIfNull(groups);
        Name = name;
        _groups = groups.ToArray();
        if (_groups.Any(g => g is null)) throw new ArgumentException($"{name}: a parameter group is null.", nameof(groups));
        if (_groups.Length == 0) throw new ArgumentException($"{name}: at least one parameter group is needed.", nameof(groups));
        _parameters = _groups.SelectMany(g => g.Parameters).ToArray();
        if (_parameters.Length == 0) throw new ArgumentException($"{name}: the parameter groups hold no parameter.", nameof(groups));
        if (_parameters.Distinct(ReferenceEqualityComparer.Instance).Count() != _parameters.Length)
            throw new ArgumentException($"{name}: a parameter appears more than once.", nameof(groups));
        Device = _parameters[0].Value.Device;
        if (_parameters.FirstOrDefault(p => !ReferenceEquals(p.Value.Device, Device)) is { } elsewhere)
            throw new ArgumentException(
                $"{name}: every parameter must be on one device (one fused launch updates them all); {_parameters[0].Name} is on {Device}, {elsewhere.Name} on {elsewhere.Value.Device}.",
                nameof(groups));
        Paging = paging;
        State = new OptimizerState(Device, paging is null ? MemoryKind.Device : StatePaging.KindOn(Device));
        _pager = StatePager.Create(Device, paging);
    }

    /// <summary>The optimizer's kind as checkpoints name it ("AdamW", "AdamW8bit").</summary>
    public string Name { get; }

    /// <summary>The device every parameter lives on.</summary>
    public Device Device { get; }

    /// <summary>The parameter groups, in the order given.</summary>
    public IReadOnlyList<ParameterGroup> Groups => _groups;

    public IReadOnlyList<Parameter> Parameters => _parameters;

    /// <summary>Null when the state lives in the device's memory; else how it is paged.</summary>
    public StatePaging? Paging { get; }

    /// <summary>
    /// The learning rate when there is one group (settable); with several, set each group's
    /// <see cref="ParameterGroup.LearningRate"/> instead. A <see cref="Schedule"/> multiplies it at each step.
    /// </summary>
    public float LearningRate
    {
        get => SingleGroup().LearningRate;
        set => SingleGroup().LearningRate = value;
    }

    /// <summary>The weight decay when there is one group (see <see cref="ParameterGroup.WeightDecay"/> otherwise).</summary>
    public float WeightDecay => SingleGroup().WeightDecay;

    /// <summary>Steps applied so far (skipped steps and accumulating calls are not counted); the schedule's position.</summary>
    public long StepCount { get; internal set; }

    /// <summary>What <see cref="Step"/> does when a gradient holds NaN or ±Inf (default: skip the step).</summary>
    public NonFiniteGradients OnNonFiniteGradients { get; set; } = NonFiniteGradients.SkipStep;

    /// <summary>Steps skipped because a gradient held NaN or ±Inf.</summary>
    public long SkippedSteps { get; internal set; }

    /// <summary>
    /// Clip the gradients by their global L2 norm over every parameter (torch's clip_grad_norm_) when set:
    /// a step whose norm exceeds it is scaled by max / (norm + 1e-6). Null (default): no clipping.
    /// </summary>
    public float? MaxGradNorm
    {
        get => _maxGradNorm;
        set
        {
            if (value is float max && !(max > 0f && float.IsFinite(max)))
                throw new ArgumentOutOfRangeException(nameof(value), value, $"{Name}: MaxGradNorm must be finite and > 0 (or null for no clipping).");
            _maxGradNorm = value;
        }
    }

    /// <summary>The global norm of the last applied step's (averaged) gradients, when that step computed it.</summary>
    public double? LastGradNorm { get; private set; }

    /// <summary>
    /// Calls of <see cref="Step"/> per applied step (gradient accumulation, default 1): the first k - 1 calls of
    /// each round return false and change nothing, and <see cref="ZeroGrad"/> keeps the gradients until the k-th
    /// call applies their mean.
    /// </summary>
    public int AccumulationSteps
    {
        get => _accumulationSteps;
        set
        {
            if (value < 1) throw new ArgumentOutOfRangeException(nameof(value), value, $"{Name}: AccumulationSteps must be >= 1.");
            if (PendingAccumulation > 0)
                throw new InvalidOperationException($"{Name}: AccumulationSteps cannot change while {PendingAccumulation} gradient(s) are accumulated.");
            _accumulationSteps = value;
        }
    }

    /// <summary>Calls of <see cref="Step"/> accumulated since the last applied step (0 at a step boundary).</summary>
    public int PendingAccumulation { get; internal set; }

    /// <summary>The learning-rate schedule (null: constant). Each group's rate at step t is its LearningRate × Factor(t).</summary>
    public LearningRateSchedule? Schedule { get; set; }

    /// <summary>The learning rate <paramref name="group"/> gets at the next applied step.</summary>
    public float ScheduledLearningRate(ParameterGroup group)
    {
        ArgumentNullException.ThrowIfNull(group);
        if (!_groups.Contains(group)) throw new ArgumentException($"{Name}: the group '{group.Name}' is not one of this optimizer's.", nameof(group));
        return Schedule is null ? group.LearningRate : (float)(group.LearningRate * Schedule.Factor(StepCount));
    }

    /// <summary>
    /// One update of every parameter that requires a gradient and has one. Returns false when nothing was
    /// applied: the step was skipped because a gradient held NaN or ±Inf (<see cref="OnNonFiniteGradients"/>),
    /// or it accumulated a gradient (<see cref="AccumulationSteps"/>).
    /// </summary>
    /// <exception cref="NonFiniteGradientException">A gradient holds NaN or ±Inf and the policy is <see cref="NonFiniteGradients.Throw"/>.</exception>
    public bool Step()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var active = new List<(Parameter Parameter, ParameterGroup Group)>();
        foreach (ParameterGroup group in _groups)
        {
            foreach (Parameter parameter in group.Parameters)
            {
                if (!parameter.RequiresGrad || parameter.Grad is null) continue;
                CheckGradient(parameter);
                active.Add((parameter, group));
            }
        }
        if (++PendingAccumulation < _accumulationSteps) return false;
        PendingAccumulation = 0;

        double scale = 1.0 / _accumulationSteps;
        LastGradNorm = null;
        if (active.Count > 0 && (_maxGradNorm is not null || OnNonFiniteGradients != NonFiniteGradients.Apply))
        {
            double sumOfSquares = GradientSumOfSquares(active.Select(a => a.Parameter));
            if (!double.IsFinite(sumOfSquares))
            {
                if (OnNonFiniteGradients == NonFiniteGradients.Throw) throw NonFinite(active.Select(a => a.Parameter));
                if (OnNonFiniteGradients == NonFiniteGradients.SkipStep)
                {
                    SkippedSteps++;
                    return false;
                }
            }
            else
            {
                double norm = Math.Sqrt(sumOfSquares) * scale;
                LastGradNorm = norm;
                if (_maxGradNorm is float max && max / (norm + ClipEpsilon) < 1.0) scale *= max / (norm + ClipEpsilon);
            }
        }

        var updates = new List<ParameterUpdate>(active.Count);
        foreach (var (parameter, group) in active)
        {
            ParameterState state = StateOf(parameter);
            state.Steps++;
            updates.Add(new ParameterUpdate(parameter, group, state, ScheduledLearningRate(group)));
        }
        if (updates.Count > 0) Update(updates, (float)scale);
        StepCount++;
        return true;
    }

    /// <summary>Frees every parameter's gradient (torch's zero_grad(set_to_none=True)), except while gradients accumulate.</summary>
    public void ZeroGrad()
    {
        if (PendingAccumulation > 0) return;
        foreach (Parameter parameter in _parameters) parameter.ZeroGrad();
    }

    /// <summary>
    /// Bytes of optimizer state per parameter group, measured from the buffers held (0 before a parameter's
    /// first step): resident in the device's memory, or paged (pinned host memory, a mapped file).
    /// </summary>
    public IReadOnlyList<OptimizerGroupMemory> StateMemory() =>
        _groups.Select(g =>
        {
            long bytes = g.Parameters.Sum(StateBytes);
            return State.IsPaged ? new OptimizerGroupMemory(g.Name, 0, bytes) : new OptimizerGroupMemory(g.Name, bytes, 0);
        }).ToArray();

    /// <summary>Bytes of the device buffers paged state moves through (the staging buffers; 0 when resident or on the CPU).</summary>
    public long WorkingBytes => _pager.WorkingBytes;

    /// <summary>Frees the optimizer state; the parameters are untouched.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        State.Dispose();
        _pager.Dispose();
        _spans.Dispose();
        DisposeSegmentLists();
        GC.SuppressFinalize(this);
    }

    /// <summary>Frees the subclass's segment lists (their device copies).</summary>
    private protected abstract void DisposeSegmentLists();

    /// <summary>The per-parameter state store.</summary>
    internal OptimizerState State { get; }

    /// <summary>Bytes of the state buffers held for <paramref name="parameter"/>; 0 before its first step.</summary>
    internal long StateBytes(Parameter parameter) => State.TryGet(parameter, out ParameterState state) ? state.Bytes : 0;

    /// <summary>The state of <paramref name="parameter"/>, created (zero, in the store's memory kind) on first use.</summary>
    internal ParameterState StateOf(Parameter parameter)
    {
        if (State.TryGet(parameter, out ParameterState state)) return state;
        state = CreateState(parameter);
        State.Add(state);
        return state;
    }

    /// <summary>A fresh state for <paramref name="parameter"/>, not yet in the store (a checkpoint fills it before it is added).</summary>
    internal ParameterState NewState(Parameter parameter) => CreateState(parameter);

    /// <summary>A fresh state for <paramref name="parameter"/> (the optimizer's buffers, zero), in <see cref="State"/>'s memory kind.</summary>
    private protected abstract ParameterState CreateState(Parameter parameter);

    /// <summary>Updates every parameter of <paramref name="updates"/> (their Steps already advanced), gradients multiplied by <paramref name="gradScale"/>.</summary>
    private protected abstract void Update(IReadOnlyList<ParameterUpdate> updates, float gradScale);

    /// <summary>
    /// Runs <paramref name="update"/> over the updates' state through the pager (see StatePager); it also gets a
    /// function giving the leased address of element i of a tensor (a parameter or gradient), valid for the step.
    /// </summary>
    private protected void RunPaged(IReadOnlyList<ParameterUpdate> updates, Action<IReadOnlyList<StatePiece>, Func<Tensor, long, ulong>> update)
    {
        using var leases = new BufferLeases();
        ulong At(Tensor tensor, long element) => leases.Address(tensor) + (ulong)(element * DTypeInfo.SizeOf(tensor.DType));
        _pager.Run(updates.Select(u => u.State).ToArray(), pieces => update(pieces, At));
    }

    /// <summary>The optimizer kernels of <see cref="Device"/>.</summary>
    private protected IOptimizerKernels Kernels => IOptimizerKernels.On(Device);

    /// <summary>The hyper-parameters a checkpoint records and checks on resume.</summary>
    internal abstract IReadOnlyDictionary<string, double> Hyperparameters { get; }

    private ParameterGroup SingleGroup() =>
        _groups.Length == 1
            ? _groups[0]
            : throw new InvalidOperationException($"{Name} has {_groups.Length} parameter groups; use Groups[i].LearningRate and Groups[i].WeightDecay.");

    private double GradientSumOfSquares(IEnumerable<Parameter> parameters)
    {
        using var leases = new BufferLeases();
        _spans.Clear();
        foreach (Parameter parameter in parameters)
            _spans.Add(new GradSpan { Grad = leases.Address(parameter.Grad), N = parameter.Grad!.ElementCount });
        return IOptimizerKernels.On(Device).GradSumOfSquares(_spans);
    }

    private static NonFiniteGradientException NonFinite(IEnumerable<Parameter> parameters)
    {
        foreach (Parameter parameter in parameters)
        {
            long index = parameter.Grad!.Device.Backend.FirstNonFinite(parameter.Grad);
            if (index >= 0) return new NonFiniteGradientException(parameter.Name, index, parameter.Grad.Describe());
        }
        throw new InvalidOperationException("The gradients' sum of squares is not finite, but no gradient holds NaN or Inf.");
    }

    private void CheckGradient(Parameter parameter)
    {
        string op = $"{Name}.Step";
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
}

/// <summary>One parameter's part of an applied step: its group, its state (Steps already advanced) and this step's learning rate.</summary>
internal sealed record ParameterUpdate(Parameter Parameter, ParameterGroup Group, ParameterState State, float LearningRate);
