// What an op's backward function receives and returns on the tape (Tape.Record).
namespace LoraKernels.Autograd;

/// <summary>
/// Turns the gradient of a recorded op's output into the gradients of its inputs and parameters.
/// It runs during <see cref="Tape.Backward()"/>, at most once, only when the output received a gradient.
/// </summary>
public delegate Gradients BackwardFunction(BackwardContext context);

/// <summary>The gradient reaching a recorded op's output, and which of its inputs and parameters need theirs.</summary>
public sealed class BackwardContext
{
    private readonly IReadOnlyList<Variable> _inputs;
    private readonly IReadOnlyList<Parameter> _parameters;

    internal BackwardContext(Tensor outputGradient, IReadOnlyList<Variable> inputs, IReadOnlyList<Parameter> parameters)
    {
        OutputGradient = outputGradient;
        _inputs = inputs;
        _parameters = parameters;
    }

    /// <summary>d(loss)/d(output), the output's dtype and shape (owned by the tape: read it, do not dispose it).</summary>
    public Tensor OutputGradient { get; }

    /// <summary>Whether input <paramref name="index"/> (in the order given to Record) wants its gradient.</summary>
    public bool NeedsInput(int index) => _inputs[index].RequiresGrad;

    /// <summary>Whether parameter <paramref name="index"/> (in the order given to Record) wants its gradient.</summary>
    public bool NeedsParameter(int index) => _parameters[index].RequiresGrad;
}

/// <summary>
/// A backward function's result: one gradient per input and one per parameter, in the order given to
/// Record (null where not needed). The tape takes ownership of every tensor: an input's gradient (its
/// value's dtype and shape) is summed into the variable's Grad, a parameter's (any float dtype, the
/// value's shape) into the parameter's F32 Grad.
/// </summary>
public readonly record struct Gradients(IReadOnlyList<Tensor?> Inputs, IReadOnlyList<Tensor?> Parameters)
{
    /// <summary>Gradients of inputs only (an op without parameters).</summary>
    public static Gradients ForInputs(params Tensor?[] inputs) => new(inputs, []);
}
