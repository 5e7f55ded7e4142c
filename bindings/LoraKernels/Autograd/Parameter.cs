// A trainable tensor and its gradient. The parameter owns both: Dispose frees them, and assigning
// Grad frees the previous gradient. Gradients are F32 whatever the value's dtype (the tape widens
// BF16 gradients), so accumulation and the optimizer work in fp32.
namespace LoraKernels.Autograd;

public sealed class Parameter : IDisposable
{
    private Tensor? _grad;
    private Tensor _value;

    /// <summary>Wraps <paramref name="value"/>, taking ownership of it.</summary>
    public Parameter(string name, Tensor value, bool requiresGrad = true)
    {
        ArgumentNullException.ThrowIfNull(name);
        ArgumentNullException.ThrowIfNull(value);
        value.ThrowIfDisposed(nameof(value));
        Name = name;
        _value = value;
        RequiresGrad = requiresGrad;
    }

    public string Name { get; }

    /// <summary>
    /// The trainable tensor. Setting it (to load weights, as PyTorch's <c>param.data = t</c>) takes ownership of
    /// the new tensor and disposes the old one; the new one must have the old one's shape, dtype and device,
    /// since the layer's kernels are built for them. The gradient is dropped; optimizer state (moments) is
    /// kept, and an optimizer's fp32 master copy of a BF16 value is refreshed from the new value at its next step.
    /// To copy values into the existing tensor instead, use <c>Value.CopyFrom</c>.
    /// </summary>
    public Tensor Value
    {
        get => _value;
        set
        {
            ArgumentNullException.ThrowIfNull(value);
            if (ReferenceEquals(_value, value)) return;
            const string op = "Parameter.Value";
            Ops.Checks.Alive(value, op, nameof(value));
            Ops.Checks.SameAs(op, nameof(value), value, Name, _value);
            Grad = null;
            _value.Dispose();
            _value = value;
            Version++;
        }
    }

    /// <summary>Counts assignments to <see cref="Value"/>, so state derived from the value (master copies) can tell it is stale.</summary>
    internal long Version { get; private set; }

    /// <summary>The accumulated gradient (F32, Value's shape and device), or null before the first backward pass
    /// and after ZeroGrad. Setting it takes ownership of the new tensor and disposes the old one.</summary>
    public Tensor? Grad
    {
        get => _grad;
        set
        {
            if (ReferenceEquals(_grad, value)) return;
            _grad?.Dispose();
            _grad = value;
        }
    }

    /// <summary>Whether the tape computes a gradient for this parameter (false freezes it, as LoRA-FA freezes A).</summary>
    public bool RequiresGrad { get; set; }

    /// <summary>Frees the gradient (torch's zero_grad(set_to_none=True)); the next backward pass creates it afresh.</summary>
    public void ZeroGrad() => Grad = null;

    public override string ToString() => $"{Name}: {Value.Describe()}";

    public void Dispose()
    {
        Grad = null;
        Value.Dispose();
    }
}
