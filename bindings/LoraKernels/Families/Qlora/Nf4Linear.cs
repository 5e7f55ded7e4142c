// A frozen linear layer whose weight is stored in 4 bits, as bitsandbytes' Linear4bit:
//   y = x·deq(W)ᵀ + bias
// computed by Ops.Nf4.Matmul without materialising deq(W): the 4-bit frozen base of QLoRA and QDoRA
// (FrozenLinear). It owns its QuantizedWeight and its bias copy; it has no trainable parameters.
using LoraKernels.Runtime;

namespace LoraKernels.Layers;

public sealed class Nf4Linear : FrozenLinear
{
    private const string Op = "Nf4Linear";

    /// <summary>
    /// Quantizes <paramref name="weight"/> [out, in] (copied to <paramref name="device"/> in
    /// <paramref name="dtype"/> first) and copies <paramref name="bias"/> [out]; the caller keeps its tensors.
    /// </summary>
    public Nf4Linear(Device device, Tensor weight, Tensor? bias, QuantType quantType = QuantType.Nf4, int blockSize = 64,
                     bool doubleQuant = false, DType dtype = DType.F32)
        : this(Quantize(device, weight, bias, quantType, blockSize, doubleQuant, dtype))
    {
    }

    /// <summary>Wraps an already quantized [out, in] weight (e.g. LoftQ's), taking ownership of it; bias is copied.</summary>
    public Nf4Linear(QuantizedWeight weight, Tensor? bias) : this(Adopt(weight, bias))
    {
    }

    private Nf4Linear((QuantizedWeight Weight, Tensor? Bias) parts)
        : base(parts.Weight.Device, parts.Weight.DType, (int)parts.Weight.Shape[1], (int)parts.Weight.Shape[0], parts.Bias) =>
        Weight = parts.Weight;

    /// <summary>The frozen 4-bit weight [out, in] (owned).</summary>
    public QuantizedWeight Weight { get; }

    /// <summary>Codes, statistics and bias as stored (measured from the buffers).</summary>
    public override long WeightBytes => Weight.SizeInBytes + (Bias?.SizeInBytes ?? 0);

    /// <summary>y [M, out] = x·deq(W)ᵀ + bias for x [M, in].</summary>
    public Tensor Forward(Tensor x)
    {
        ObjectDisposedException.ThrowIf(IsDisposed, this);
        return Ops.Nf4.Matmul(x, Weight, Bias);
    }

    private protected override void DisposeWeight() => Weight.Dispose();

    private static (QuantizedWeight, Tensor?) Quantize(Device device, Tensor weight, Tensor? bias, QuantType quantType, int blockSize,
                                                       bool doubleQuant, DType dtype)
    {
        ArgumentNullException.ThrowIfNull(device);
        Ops.Checks.Alive(weight, Op, nameof(weight));
        (long outFeatures, long inFeatures) = Ops.Checks.Matrix(Op, nameof(weight), weight, "out, in");
        CheckShape(Op, nameof(weight), weight.Describe(), outFeatures, inFeatures, bias);
        Ops.Checks.FiniteBias(Op, bias);
        Ops.Nf4.CheckBlockSize(Op, blockSize);
        QuantizedWeight quantized;
        using (Tensor dense = CopyTo(weight, device, dtype))
            quantized = Ops.Nf4.Quantize(dense, quantType, blockSize, doubleQuant);
        try
        {
            return (quantized, bias is null ? null : CopyTo(bias, device, dtype));
        }
        catch
        {
            quantized.Dispose();
            throw;
        }
    }

    private static (QuantizedWeight, Tensor?) Adopt(QuantizedWeight weight, Tensor? bias)
    {
        ArgumentNullException.ThrowIfNull(weight);
        weight.ThrowIfDisposed(nameof(weight));
        if (weight.Shape.Count != 2 || weight.Shape[0] < 1 || weight.Shape[1] < 1)
            throw new ArgumentException($"{Op}: weight must be a quantized matrix [out, in], got {weight.Describe()}", nameof(weight));
        CheckShape(Op, nameof(weight), weight.Describe(), weight.Shape[0], weight.Shape[1], bias);
        Ops.Checks.FiniteBias(Op, bias);
        return (weight, bias is null ? null : CopyTo(bias, weight.Device, weight.DType));
    }
}
