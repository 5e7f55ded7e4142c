// Raised by an optimizer step whose policy is NonFiniteGradients.Throw when a gradient holds NaN or
// ±Inf; nothing has been updated when it is thrown.
namespace LoraKernels;

public sealed class NonFiniteGradientException : LoraKernelsException
{
    public NonFiniteGradientException(string parameter, long index, string gradient)
        : base($"The gradient of {parameter} ({gradient}) holds NaN or Inf at element {index}; the optimizer step was not applied.")
    {
        Parameter = parameter;
        Index = index;
    }

    /// <summary>The name of the parameter whose gradient is not finite.</summary>
    public string Parameter { get; }

    /// <summary>The flat index of its first NaN or ±Inf element.</summary>
    public long Index { get; }
}
