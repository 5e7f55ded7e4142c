// An adapted linear layer = a frozen base (TBase: DenseLinear, Nf4Linear, or either) × a delta that
// trains. This class holds what every such layer shares: the base it owns, the dims, Training, the
// ownership of everything the layer allocates (Create releases what exists if a step of construction
// throws, Dispose releases it all once). A derived layer adds its delta's parameters, its forward
// (fused kernels for its base and delta) and its tape recording (Tape.Record with its own backward).
using LoraKernels.Autograd;

namespace LoraKernels.Layers;

public abstract class AdaptedLinear<TBase> : IAdapterLayer where TBase : FrozenLinear
{
    private readonly List<IDisposable> _owned = new();
    private bool _disposed;

    /// <summary>Takes ownership of <paramref name="frozenBase"/> (it is disposed with the layer).</summary>
    private protected AdaptedLinear(TBase frozenBase)
    {
        ArgumentNullException.ThrowIfNull(frozenBase);
        Base = frozenBase;
    }

    /// <summary>The frozen base (owned).</summary>
    public TBase Base { get; }

    public Device Device => Base.Device;
    public DType DType => Base.DType;
    public int InFeatures => Base.InFeatures;
    public int OutFeatures => Base.OutFeatures;

    /// <summary>The frozen base bias [out], or null.</summary>
    public Tensor? Bias => Base.Bias;

    /// <summary>Whether dropout and other training-only behaviour is active (PyTorch's module.training; true for a new layer).</summary>
    public bool Training { get; set; } = true;

    /// <summary>y [M, out] for x [M, in] without recording gradients (dropout still applies while Training).</summary>
    public abstract Tensor Forward(Tensor x);

    /// <summary>Records the layer on <paramref name="tape"/>; its backward fills the parameters' gradients and x's.</summary>
    public Variable Forward(Tape tape, Variable x)
    {
        ArgumentNullException.ThrowIfNull(tape);
        ArgumentNullException.ThrowIfNull(x);
        ThrowIfDisposed();
        tape.CheckRecording(x);
        return Record(tape, x);
    }

    /// <summary>The trainable parameters.</summary>
    public abstract IEnumerable<Parameter> Parameters();

    /// <summary>Runs the forward for x (alive, checked against the tape) and records it with its backward (Tape.Record).</summary>
    private protected abstract Variable Record(Tape tape, Variable x);

    /// <summary>
    /// Runs <paramref name="create"/> and takes ownership of its result; if it throws, first releases
    /// everything the layer already owns (the base included), so a constructor built from Create calls
    /// needs no cleanup of its own.
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

    /// <summary>Releases the base, the adapter's tensors and whatever the layer created; shared objects are untouched.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        for (int i = _owned.Count - 1; i >= 0; i--) _owned[i].Dispose();
        Base.Dispose();
        DisposeState();
    }

    /// <summary>Releases state a derived layer holds outside Create (e.g. DoRA's merged norm); called once.</summary>
    private protected virtual void DisposeState() { }
}
