// The per-parameter state store every optimizer shares: for each parameter its step count and named
// buffers (AdamW: exp_avg, exp_avg_sq and, for a BF16 parameter, an fp32 master; 8-bit AdamW: the two
// code arrays and their per-block absmax), all in one memory kind: the device's own memory, or the
// paged kind (pinned host, mapped file) when the optimizer pages its state. Each buffer says how its
// bytes map onto the parameter's elements, so a pager can move any run of elements of any optimizer's
// state, and checkpoints and the memory report read the buffers without knowing the optimizer.
using LoraKernels.Autograd;
using LoraKernels.Runtime;

namespace LoraKernels.Optim;

/// <summary>The element type of a state buffer (stored as safetensors F32 or U8 in checkpoints).</summary>
internal enum StateElement { F32, U8 }

/// <summary>
/// One named state buffer: <see cref="Units"/> values of <see cref="Element"/>, unit u covering the
/// parameter's elements [u·ElementsPerUnit, (u + 1)·ElementsPerUnit) (1 for a moment per element, 256
/// for a per-block absmax).
/// </summary>
internal sealed class StateBuffer(string name, StateElement element, long units, int elementsPerUnit, DeviceBuffer buffer) : IDisposable
{
    public string Name { get; } = name;
    public StateElement Element { get; } = element;
    public long Units { get; } = units;
    public int ElementsPerUnit { get; } = elementsPerUnit;
    public DeviceBuffer Buffer { get; } = buffer;

    public int UnitBytes => Element == StateElement.F32 ? 4 : 1;

    /// <summary>The bytes holding the state of parameter elements [first, first + count); first is a multiple of ElementsPerUnit.</summary>
    public (long Offset, long Bytes) Range(long first, long count)
    {
        long firstUnit = first / ElementsPerUnit;
        long endUnit = (first + count + ElementsPerUnit - 1) / ElementsPerUnit;
        return (firstUnit * UnitBytes, (endUnit - firstUnit) * UnitBytes);
    }

    public void Dispose() => Buffer.Dispose();
}

/// <summary>One parameter's optimizer state.</summary>
internal sealed class ParameterState(Parameter parameter, int granule, IReadOnlyList<StateBuffer> buffers) : IDisposable
{
    public Parameter Parameter { get; } = parameter;

    /// <summary>A pager may cut this state only at multiples of this many elements (1, or 256 for blockwise 8-bit state).</summary>
    public int Granule { get; } = granule;

    public IReadOnlyList<StateBuffer> Buffers { get; } = buffers;

    /// <summary>Steps applied to this parameter (it advances only when the parameter has a gradient, as torch's per-parameter step).</summary>
    public long Steps { get; set; }

    /// <summary>The parameter's <see cref="Parameter.Version"/> that state derived from its value (a master copy) was taken from.</summary>
    public long ValueVersion { get; set; } = parameter.Version;

    public long Elements => Parameter.Value.ElementCount;

    public long Bytes => Buffers.Sum(b => b.Buffer.SizeInBytes);

    public StateBuffer this[string name] =>
        Buffers.FirstOrDefault(b => b.Name == name) ?? throw new KeyNotFoundException($"{Parameter.Name} has no optimizer state \"{name}\".");

    public void Dispose()
    {
        foreach (StateBuffer buffer in Buffers) buffer.Dispose();
    }
}

/// <summary>The state of every parameter an optimizer has stepped (or restored from a checkpoint).</summary>
internal sealed class OptimizerState(Device device, MemoryKind kind) : IDisposable
{
    private readonly Dictionary<Parameter, ParameterState> _states = new(ReferenceEqualityComparer.Instance);

    public Device Device { get; } = device;

    /// <summary>Where every state buffer lives: MemoryKind.Device, or the paged kind.</summary>
    public MemoryKind Kind { get; } = kind;

    public bool IsPaged => Kind != MemoryKind.Device;

    public IEnumerable<ParameterState> All => _states.Values;

    public bool TryGet(Parameter parameter, out ParameterState state) => _states.TryGetValue(parameter, out state!);

    public void Add(ParameterState state) => _states.Add(state.Parameter, state);

    /// <summary>Frees and forgets <paramref name="parameter"/>'s state (a checkpoint without it is being restored).</summary>
    public void Remove(Parameter parameter)
    {
        if (_states.Remove(parameter, out ParameterState? state)) state.Dispose();
    }

    /// <summary>
    /// A state for <paramref name="parameter"/> whose buffers <paramref name="add"/> creates (with <see cref="Zeros"/>)
    /// and adds to the list it is given; if it throws, the buffers made so far are freed.
    /// </summary>
    public ParameterState Create(Parameter parameter, int granule, Action<List<StateBuffer>> add)
    {
        var buffers = new List<StateBuffer>(4);
        try
        {
            add(buffers);
            return new ParameterState(parameter, granule, buffers);
        }
        catch
        {
            foreach (StateBuffer buffer in buffers) buffer.Dispose();
            throw;
        }
    }

    /// <summary>
    /// A zero-filled buffer of <paramref name="units"/> values in this store's memory. A mapped file is
    /// zeros when created, so it is not written (writing would make every page resident at once).
    /// </summary>
    public StateBuffer Zeros(string name, StateElement element, long units, int elementsPerUnit = 1)
    {
        long bytes = units * (element == StateElement.F32 ? 4 : 1);
        DeviceBuffer buffer = Kind == MemoryKind.Device ? Device.Allocate(bytes) : Device.Allocate(bytes, Kind);
        try
        {
            if (Kind != MemoryKind.MappedFile) Device.Memset(buffer, 0, bytes, 0);
            return new StateBuffer(name, element, units, elementsPerUnit, buffer);
        }
        catch
        {
            buffer.Dispose();
            throw;
        }
    }

    public void Dispose()
    {
        foreach (ParameterState state in _states.Values) state.Dispose();
        _states.Clear();
    }
}
