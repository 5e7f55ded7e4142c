// What an optimizer step does when a gradient holds NaN or ±Inf (docs/API.md, "Non-finite values"):
// one bad batch must not turn every parameter into NaN, so by default the whole step is skipped.
namespace LoraKernels.Optim;

public enum NonFiniteGradients
{
    /// <summary>Skip the whole step (no parameter or state changes), count it in SkippedSteps and return false from Step.</summary>
    SkipStep,

    /// <summary>Throw an exception naming the parameter and the first bad element; nothing changes.</summary>
    Throw,

    /// <summary>Apply the update unchecked (saves one read of every gradient unless clipping reads them; NaN then spreads into the parameters).</summary>
    Apply,
}
