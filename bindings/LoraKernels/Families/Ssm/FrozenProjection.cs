// A frozen dense projection y = x Wᵀ, no bias: the Mamba projections that LoRA does not target. It trains
// nothing, but records itself so gradients flow through it to the block's earlier steps (dx = dy W).
using LoraKernels.Autograd;
using LoraKernels.Families.Ssm;

namespace LoraKernels.Layers;

internal sealed class FrozenProjection : IAdapterLayer
{
    private readonly Tensor _weight;

    /// <summary>Copies <paramref name="weight"/> [out, in] to <paramref name="device"/> as F32.</summary>
    public FrozenProjection(Device device, Tensor weight)
    {
        Device = device;
        _weight = FrozenLinear.CopyTo(weight, device, DType.F32);
    }

    public Device Device { get; }
    public int InFeatures => (int)_weight.Shape[1];
    public int OutFeatures => (int)_weight.Shape[0];
    public bool Training { get; set; }

    public IEnumerable<Parameter> Parameters() => [];

    public Tensor Forward(Tensor x)
    {
        Ops.AdapterChecks.Activations("FrozenProjection", x, InFeatures, DType.F32, Device, "the weight");
        Tensor y = Tensor.Empty(Device, DType.F32, x.Shape[0], OutFeatures);
        try
        {
            ISsmKernels.On(Device).DenseForward(x, _weight, null, y);
            return y;
        }
        catch
        {
            y.Dispose();
            throw;
        }
    }

    public Variable Forward(Tape tape, Variable x) =>
        tape.Record(Forward(x.Value), [x], [], g =>
        {
            Tensor dx = Tensor.Empty(Device, DType.F32, x.Value.Shape[0], InFeatures);
            ISsmKernels.On(Device).DenseGradX(g.OutputGradient, _weight, dx);
            return Gradients.ForInputs(dx);
        });

    public void Dispose() => _weight.Dispose();
}
