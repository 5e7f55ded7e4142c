// The QLoRA layer on the tape: the fused 4-bit forward, and a backward that fills the adapter's
// gradients and x's (through the frozen quantized base) exactly as Tape.Lora does for LoRA.
using LoraKernels.Layers;

namespace LoraKernels.Autograd;

public sealed partial class Tape
{
    /// <summary>Records y = layer(x): Ops.Qlora.Forward, with dropout when the layer is training.</summary>
    public Variable Qlora(QloraLinear layer, Variable x)
    {
        ArgumentNullException.ThrowIfNull(layer);
        CheckInput(x);
        ThrowIfUnusable();
        float scale = layer.Scale;
        float dropoutP = layer.Training ? layer.Dropout : 0f;
        ulong seed = dropoutP > 0f ? layer.NextDropoutSeed() : 0;
        Parameter a = layer.A, b = layer.B;
        QuantizedWeight w = layer.Base.Weight;

        var (y, u) = Ops.Qlora.Forward(x.Value, w, layer.Base.Bias, a.Value, b.Value, scale, dropoutP, seed);
        Own(y);
        Own(u);
        var output = NewOutput(y, x.RequiresGrad || a.RequiresGrad || b.RequiresGrad);
        if (output.RequiresGrad)
        {
            _backward.Add(() =>
            {
                if (output.Grad is null) return;
                var (dx, dA, dB) = Ops.Qlora.Backward(x.Value, w, a.Value, b.Value, u, output.Grad, scale, dropoutP, seed,
                                                         needDx: x.RequiresGrad, needDA: a.RequiresGrad, needDB: b.RequiresGrad);
                try
                {
                    AccumulateParameter(a, ref dA);
                    AccumulateParameter(b, ref dB);
                    if (dx is not null)
                    {
                        AccumulateVariable(x, Own(dx));
                        dx = null;
                    }
                }
                finally
                {
                    dA?.Dispose();
                    dB?.Dispose();
                    dx?.Dispose();
                }
            });
        }
        return output;
    }
}
