// The DoRA layer on the tape: the weight norm (detached, PEFT's `.detach()`), the forward, and a
// backward that fills A's, B's and the magnitude's gradients and x's (Ops.Dora.Backward).
using LoraKernels.Layers;

namespace LoraKernels.Autograd;

public sealed partial class Tape
{
    /// <summary>Records y = layer(x) (see <see cref="DoraLinear"/>); the weight norm is a constant of the step.</summary>
    /// <exception cref="InvalidOperationException">The layer is merged (unmerge it to train).</exception>
    /// <exception cref="NotSupportedException">A BF16 layer training with dropout &gt; 0 (see <see cref="DoraLinear"/>).</exception>
    public Variable Dora(DoraLinear layer, Variable x)
    {
        ArgumentNullException.ThrowIfNull(layer);
        CheckInput(x);
        ThrowIfUnusable();
        if (layer.Merged)
            throw new InvalidOperationException("The DoraLinear layer is merged (W0 holds (m/n)·(W0 + s·B·A)); call Unmerge before training it.");
        layer.ThrowIfDropoutUnsupported();
        float scale = layer.Scale;
        Parameter a = layer.A, b = layer.B, magnitude = layer.Magnitude;
        QuantizedWeight? quantized = layer.QuantizedW0;
        Tensor? w0 = quantized is null ? layer.W0 : null;

        Tensor norm = Own(layer.WeightNorm());
        if (layer.DropoutActive) return DoraWithDropout(layer, x, quantized, w0, norm);
        var (y, u, z) = quantized is not null
            ? Ops.Dora.Forward(x.Value, quantized, layer.Bias, a.Value, b.Value, magnitude.Value, norm, scale)
            : Ops.Dora.Forward(x.Value, w0!, layer.Bias, a.Value, b.Value, magnitude.Value, norm, scale);
        Own(y);
        Own(u);
        Own(z!);
        var output = NewOutput(y, x.RequiresGrad || a.RequiresGrad || b.RequiresGrad || magnitude.RequiresGrad);
        if (output.RequiresGrad)
        {
            _backward.Add(() =>
            {
                if (output.Grad is null) return;
                var (dx, dA, dB, dm) = quantized is not null
                    ? Ops.Dora.Backward(x.Value, quantized, a.Value, b.Value, magnitude.Value, norm, u, z!, output.Grad,
                                        scale, needDx: x.RequiresGrad, needDA: a.RequiresGrad,
                                        needDB: b.RequiresGrad, needDMagnitude: magnitude.RequiresGrad)
                    : Ops.Dora.Backward(x.Value, w0!, a.Value, b.Value, magnitude.Value, norm, u, z!, output.Grad,
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

    /// <summary>PEFT's training path with dropout (Ops.Dora.ForwardWithDropout), its state kept for the backward.</summary>
    private Variable DoraWithDropout(DoraLinear layer, Variable x, QuantizedWeight? quantized, Tensor? w0, Tensor norm)
    {
        float scale = layer.Scale, p = layer.Dropout;
        ulong seed = layer.NextDropoutSeed();
        Parameter a = layer.A, b = layer.B, magnitude = layer.Magnitude;
        var (y, state) = Ops.Dora.ForwardWithDropout(x.Value, w0, quantized, layer.Bias, a.Value, b.Value, magnitude.Value, norm,
                                                     scale, p, seed);
        Own(y);
        Own(state.U);
        Own(state.Z);
        Own(state.XDropped);
        var output = NewOutput(y, x.RequiresGrad || a.RequiresGrad || b.RequiresGrad || magnitude.RequiresGrad);
        if (output.RequiresGrad)
        {
            _backward.Add(() =>
            {
                if (output.Grad is null) return;
                var (dx, dA, dB, dm) = Ops.Dora.BackwardWithDropout(x.Value, w0, quantized, a.Value, b.Value, magnitude.Value, norm,
                                                                    state, output.Grad, scale, p, seed,
                                                                    needDx: x.RequiresGrad, needDA: a.RequiresGrad,
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
