// The VeRA layer on the tape: Ops.Vera's fused forward, and a backward that fills λ_d's, λ_b's and
// x's gradients (the shared projections are frozen) exactly as Tape.Lora does for LoRA.
using LoraKernels.Layers;

namespace LoraKernels.Autograd;

public sealed partial class Tape
{
    /// <summary>Records y = layer(x), with dropout when the layer is training.</summary>
    /// <exception cref="InvalidOperationException">The layer is merged (unmerge it to train).</exception>
    public Variable Vera(VeraLinear layer, Variable x)
    {
        ArgumentNullException.ThrowIfNull(layer);
        CheckInput(x);
        ThrowIfUnusable();
        if (layer.Merged)
            throw new InvalidOperationException("The VeraLinear layer is merged (W0 holds W0 + ΔW); call Unmerge before training it.");
        float dropoutP = layer.Training ? layer.Dropout : 0f;
        ulong seed = dropoutP > 0f ? layer.NextDropoutSeed() : 0;
        Parameter lambdaD = layer.LambdaD, lambdaB = layer.LambdaB;
        Tensor w0 = layer.W0, veraA = layer.Projections.VeraA, veraB = layer.Projections.VeraB;

        var (y, u) = Ops.Vera.Forward(x.Value, w0, layer.Bias, veraA, veraB, lambdaD.Value, lambdaB.Value, dropoutP, seed);
        Own(y);
        Own(u);
        var output = NewOutput(y, x.RequiresGrad || lambdaD.RequiresGrad || lambdaB.RequiresGrad);
        if (output.RequiresGrad)
        {
            _backward.Add(() =>
            {
                if (output.Grad is null) return;
                var (dx, dLambdaD, dLambdaB) = Ops.Vera.Backward(w0, veraA, veraB, lambdaD.Value, lambdaB.Value, u, output.Grad,
                                                                 dropoutP, seed, needDx: x.RequiresGrad,
                                                                 needDLambdaD: lambdaD.RequiresGrad,
                                                                 needDLambdaB: lambdaB.RequiresGrad);
                try
                {
                    AccumulateParameter(lambdaD, ref dLambdaD);
                    AccumulateParameter(lambdaB, ref dLambdaB);
                    if (dx is not null)
                    {
                        AccumulateVariable(x, Own(dx));
                        dx = null;
                    }
                }
                finally
                {
                    dLambdaD?.Dispose();
                    dLambdaB?.Dispose();
                    dx?.Dispose();
                }
            });
        }
        return output;
    }
}
