using LoraKernels.Autograd;

namespace LoraKernels.Layers;

/// <summary>
/// What every adapted linear layer offers (LoRA, rsLoRA, DoRA, QLoRA, VeRA, LoRA-FA, ...), so the
/// variant catalogue, the demo and the optimizers treat them alike. A layer owns its frozen base
/// and its trainable parameters; <see cref="Parameters"/> lists only the trainable ones.
/// </summary>
public interface IAdapterLayer : IDisposable
{
    Device Device { get; }
    int InFeatures { get; }
    int OutFeatures { get; }

    /// <summary>Dropout and other training-only behaviour is active while true (PyTorch's train()/eval()).</summary>
    bool Training { get; set; }

    /// <summary>Records the forward pass on <paramref name="tape"/>; its backward fills the parameters' gradients.</summary>
    Variable Forward(Tape tape, Variable x);

    /// <summary>Inference forward (no tape).</summary>
    Tensor Forward(Tensor x);

    /// <summary>The trainable parameters.</summary>
    IEnumerable<Parameter> Parameters();
}
