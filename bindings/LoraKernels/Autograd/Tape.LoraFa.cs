// Tape recording of a LoRA-FA layer (Layers/LoraFaLinear.cs). The backward closure captures u, the
// frozen weights and the input *variable* (to hand it its gradient), never x's values: dB and dx
// need only dy, u, W0, A and B. Ops.Lora.Backward takes x in its signature for dA; with needDA
// false no backend reads it, so the closure passes an uninitialised [M, in] placeholder allocated
// for the call and freed at once (transient workspace, not a retained activation).
using LoraKernels.Layers;

namespace LoraKernels.Autograd;

public sealed partial class Tape
{
    /// <summary>Records y = layer(x) for a LoRA-FA layer: the fused LoRA forward, with dropout when the layer is training.</summary>
    public Variable LoraFa(LoraFaLinear layer, Variable x)
    {
        ArgumentNullException.ThrowIfNull(layer);
        CheckInput(x);
        ThrowIfUnusable();
        layer.ThrowIfDisposed();
        float scale = layer.Scale;
        float dropoutP = layer.Training ? layer.Dropout : 0f;
        ulong seed = dropoutP > 0f ? layer.NextDropoutSeed() : 0;
        Parameter b = layer.B;
        Tensor w0 = layer.W0, a = layer.A;

        var (y, u) = Ops.Lora.Forward(x.Value, w0, layer.Bias, a, b.Value, scale, dropoutP, seed);
        Own(y);
        Own(u);
        long rows = x.Value.Shape[0];
        layer.RetainedActivationBytes = u.SizeInBytes;
        var output = NewOutput(y, x.RequiresGrad || b.RequiresGrad);
        if (output.RequiresGrad)
        {
            bool needDx = x.RequiresGrad;
            DType dtype = x.Value.DType;
            _backward.Add(() =>
            {
                if (output.Grad is null) return;
                Tensor? dx = null, dB = null;
                try
                {
                    using (Tensor unreadInput = Tensor.Empty(w0.Device, dtype, rows, w0.Shape[1]))
                    {
                        (dx, _, dB) = Ops.Lora.Backward(unreadInput, w0, a, b.Value, u, output.Grad, scale, dropoutP, seed,
                                                        needDx: needDx, needDA: false, needDB: b.RequiresGrad);
                    }
                    AccumulateParameter(b, ref dB);
                    if (dx is not null)
                    {
                        AccumulateVariable(x, Own(dx));
                        dx = null;
                    }
                }
                finally
                {
                    dB?.Dispose();
                    dx?.Dispose();
                }
            });
        }
        return output;
    }
}
