// An adapter does not fit the model it is attached to or merged into: a module in the adapter that
// no layer (or base tensor) has, a layer that target_modules selects but the adapter has no weights
// for, a shape that differs, a variant the layer cannot hold. Never a silent fall-back to the base.
namespace LoraKernels;

public sealed class AdapterMismatchException : LoraKernelsException
{
    public AdapterMismatchException(string module, string problem)
        : base($"module \"{module}\": {problem}")
    {
        Module = module;
        Problem = problem;
    }

    /// <summary>The module path (e.g. model.layers.0.self_attn.q_proj) at fault.</summary>
    public string Module { get; }

    public string Problem { get; }
}
