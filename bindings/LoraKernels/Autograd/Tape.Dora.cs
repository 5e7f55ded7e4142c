// The DoRA layer on the tape: the weight norm (detached, PEFT's `.detach()`), the forward, and a
// backward that fills A's, B's and the magnitude's gradients and x's (Ops.Dora.Backward).
using LoraKernels.Layers;

namespace LoraKernels.Autograd;

public sealed partial class Tape
{
    /// <summary>Records y = layer(x) (see <see cref="DoraLinear"/>); the weight norm is a constant of the step.</summary>
    /// <exception cref="InvalidOperationException">The layer is merged (unmerge it to train).</exception>
    /// <exception cref="NotSupportedException">The layer is training with dropout &gt; 0 (see <see cref="DoraLinear"/>).</exception>
    public Variable Dora(DoraLinear layer, Variable x)
    {
        ArgumentNullException.ThrowIfNull(layer);
        ArgumentNullException.ThrowIfNull(x);
        ThrowIfUnusable();
        if (layer.Merged)
            throw new InvalidOperationException("The DoraLinear layer is merged (W0 holds (m/n)·(W0 + s·B·A)); call Unmerge before training it.");
        layer.ThrowIfDropoutActive();
        float scale = layer.Scale;
        Parameter a = layer.A, b = layer.B, magnitude = layer.Magnitude;
        Tensor w0 = layer.W0;

        Tensor norm = Own(layer.WeightNorm());
        var (y, u, z) = Ops.Dora.Forward(x.Value, w0, layer.Bias, a.Value, b.Value, magnitude.Value, norm, scale);
        Own(y);
        Own(u);
        Own(z!);
        var output = new Variable(y, x.RequiresGrad || a.RequiresGrad || b.RequiresGrad || magnitude.RequiresGrad);
        if (output.RequiresGrad)
        {
            _backward.Add(() =>
            {
                if (output.Grad is null) return;
                var (dx, dA, dB, dm) = Ops.Dora.Backward(x.Value, w0, a.Value, b.Value, magnitude.Value, norm, u, z!, output.Grad,
                                                         scale, needDx: x.RequiresGrad, needDA: a.RequiresGrad,
                                                         needDB: b.RequiresGrad, needDMagnitude: magnitude.RequiresGrad);
                try
                {
                    AccumulateParameter(a, ref dA);
                    AccumulateParameter(b, ref dB);
                    AccumulateParameter(magnitude, ref dm);
                    if (dx is not null)
                    {
                        AccumulateVariable(x, Own(dx));
                        dx = null;
                    }
                }
                finally
                {
                    // Only what an accumulation that threw did not take over is left here.
                    dA?.Dispose();
                    dB?.Dispose();
                    dm?.Dispose();
                    dx?.Dispose();
                }
            });
        }
        return output;
    }
}
