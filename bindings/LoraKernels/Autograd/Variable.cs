// A value in a tape's graph: an input the caller wraps (optionally requiring its gradient) or the
// output of a recorded op. The tape owns the tensors of the variables it creates and every
// gradient it computes; the caller owns the tensor of an input variable it made.
namespace LoraKernels.Autograd;

public sealed class Variable
{
    /// <summary>An input to the graph; <paramref name="requiresGrad"/> asks the tape for d(loss)/d(value) in Grad.</summary>
    public Variable(Tensor value, bool requiresGrad = false)
    {
        ArgumentNullException.ThrowIfNull(value);
        value.ThrowIfDisposed(nameof(value));
        Value = value;
        RequiresGrad = requiresGrad;
    }

    public Tensor Value { get; }

    /// <summary>The tape whose op produced this variable and that recording's number; null for an input the caller made.</summary>
    internal Tape? Producer { get; init; }
    internal long Recording { get; init; }

    /// <summary>d(loss)/d(Value) after Tape.Backward (Value's dtype), when RequiresGrad; owned by the tape and freed by its Reset.</summary>
    public Tensor? Grad { get; internal set; }

    /// <summary>True for an input that asked for its gradient and for any op output that depends on a parameter or such an input.</summary>
    public bool RequiresGrad { get; }

    public override string ToString() => $"Variable {Value.Describe()}{(RequiresGrad ? " (requires grad)" : "")}";
}
