// What the adapted linear layers over a dense frozen base share (LoraLinear, LoraFaLinear, VeraLinear):
// the base weight W0 [out, in] and bias [out], copied to the layer's device and dtype so the caller
// keeps its tensors; the dims; Training; the tape entry point; and ownership. The constructor checks
// the base, then runs the derived layer's own argument checks against (out, in) before anything is
// allocated, so a bad argument wastes no copy. Everything the layer allocates goes through Create,
// which on failure releases what already exists, so a throwing constructor leaks nothing and Dispose
// releases exactly what was created, both in one place. QloraLinear is not one of these: its base is
// a quantized Nf4Linear, not a dense W0.
using LoraKernels.Autograd;

namespace LoraKernels.Layers;

public abstract class DenseAdapterLinear : IAdapterLayer
{
    private readonly List<IDisposable> _owned = new();
    private bool _disposed;

    /// <summary>
    /// Checks and copies <paramref name="w0"/> [out, in] (and <paramref name="bias"/> [out]) to
    /// <paramref name="device"/> in <paramref name="dtype"/>. <paramref name="checkAdapterArguments"/>
    /// receives (out, in) and throws for the derived layer's bad arguments; it runs before any allocation.
    /// </summary>
    private protected DenseAdapterLinear(string op, Device device, Tensor w0, Tensor? bias, DType dtype,
                                         Action<long, long> checkAdapterArguments)
    {
        ArgumentNullException.ThrowIfNull(device);
        Ops.Checks.Alive(w0, op, nameof(w0));
        (long outFeatures, long inFeatures) = Ops.Checks.Matrix(op, nameof(w0), w0, "out, in");
        if (bias is not null)
        {
            Ops.Checks.Alive(bias, op, nameof(bias));
            if (bias.Rank != 1 || bias.Shape[0] != outFeatures)
                throw new ArgumentException($"{op}: bias must be [out] = [{outFeatures}], got {bias.Describe()}", nameof(bias));
        }
        checkAdapterArguments(outFeatures, inFeatures);
        Ops.Checks.FiniteBase(op, nameof(w0), w0, bias);
        if (inFeatures > int.MaxValue || outFeatures > int.MaxValue)
            throw new ArgumentException($"{op}: w0 is {w0.Describe()}; in and out must fit in 32 bits.", nameof(w0));

        Device = device;
        DType = dtype;
        InFeatures = (int)inFeatures;
        OutFeatures = (int)outFeatures;
        W0 = Create(() => Nf4Linear.CopyTo(w0, device, dtype));
        if (bias is not null) Bias = Create(() => Nf4Linear.CopyTo(bias, device, dtype));
    }

    public Device Device { get; }
    public DType DType { get; }
    public int InFeatures { get; }
    public int OutFeatures { get; }

    /// <summary>The frozen base weight [out, in] (holding W0 + ΔW while a layer that can merge is merged).</summary>
    public Tensor W0 { get; }

    /// <summary>The frozen base bias [out], or null.</summary>
    public Tensor? Bias { get; }

    /// <summary>Whether dropout is active (PyTorch's module.training; true for a new layer).</summary>
    public bool Training { get; set; } = true;

    /// <summary>Records the layer on <paramref name="tape"/>; its backward fills the parameters' gradients.</summary>
    public Variable Forward(Tape tape, Variable x)
    {
        ArgumentNullException.ThrowIfNull(tape);
        ThrowIfDisposed();
        return Record(tape, x);
    }

    /// <summary>y [M, out] for x [M, in] without recording gradients (dropout still applies while Training).</summary>
    public abstract Tensor Forward(Tensor x);

    /// <summary>The trainable parameters.</summary>
    public abstract IEnumerable<Parameter> Parameters();

    /// <summary>The layer's tape recording (Tape.Lora, Tape.LoraFa, ...); the layer is alive and the tape non-null.</summary>
    private protected abstract Variable Record(Tape tape, Variable x);

    /// <summary>
    /// Runs <paramref name="create"/> and takes ownership of its result; if it throws, first releases
    /// everything the layer already owns, so a constructor built from Create calls needs no cleanup of its own.
    /// </summary>
    private protected T Create<T>(Func<T> create) where T : IDisposable
    {
        T item;
        try
        {
            item = create();
        }
        catch
        {
            Dispose();
            throw;
        }
        _owned.Add(item);
        return item;
    }

    internal void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(_disposed, this);

    /// <summary>Releases the base copies and the adapter's tensors; the caller's tensors and shared objects are untouched.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        foreach (IDisposable item in _owned) item.Dispose();
    }
}
