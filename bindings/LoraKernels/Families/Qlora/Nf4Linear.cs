// A frozen linear layer whose weight is stored in 4 bits, as bitsandbytes' Linear4bit:
//   y = x·deq(W)ᵀ + bias
// computed by Ops.Nf4.Matmul without materialising deq(W). The layer owns its QuantizedWeight and
// its bias copy; it has no trainable parameters (QloraLinear adds a LoRA adapter on top).
namespace LoraKernels.Layers;

public sealed class Nf4Linear : IDisposable
{
    private bool _disposed;

    /// <summary>
    /// Quantizes <paramref name="weight"/> [out, in] (copied to <paramref name="device"/> in
    /// <paramref name="dtype"/> first) and copies <paramref name="bias"/> [out]; the caller keeps its tensors.
    /// </summary>
    public Nf4Linear(Device device, Tensor weight, Tensor? bias, QuantType quantType = QuantType.Nf4, int blockSize = 64,
                     bool doubleQuant = false, DType dtype = DType.F32)
    {
        const string op = "Nf4Linear";
        ArgumentNullException.ThrowIfNull(device);
        Ops.Checks.Alive(weight, op, nameof(weight));
        (long outFeatures, long inFeatures) = Ops.Checks.Matrix(op, nameof(weight), weight, "out, in");
        CheckFeatures(op, inFeatures, outFeatures);
        CheckBias(op, bias, outFeatures);
        Ops.Nf4.CheckBlockSize(op, blockSize);

        using (Tensor dense = CopyTo(weight, device, dtype))
            Weight = Ops.Nf4.Quantize(dense, quantType, blockSize, doubleQuant);
        try
        {
            Bias = bias is null ? null : CopyTo(bias, device, dtype);
        }
        catch
        {
            Weight.Dispose();
            throw;
        }
        Device = device;
        DType = dtype;
        InFeatures = (int)inFeatures;
        OutFeatures = (int)outFeatures;
    }

    /// <summary>Wraps an already quantized [out, in] weight (e.g. LoftQ's), taking ownership of it; bias is copied.</summary>
    public Nf4Linear(QuantizedWeight weight, Tensor? bias)
    {
        const string op = "Nf4Linear";
        ArgumentNullException.ThrowIfNull(weight);
        weight.ThrowIfDisposed(nameof(weight));
        if (weight.Shape.Count != 2 || weight.Shape[0] < 1 || weight.Shape[1] < 1)
            throw new ArgumentException($"{op}: weight must be a quantized matrix [out, in], got {weight.Describe()}", nameof(weight));
        CheckFeatures(op, weight.Shape[1], weight.Shape[0]);
        CheckBias(op, bias, weight.Shape[0]);
        Bias = bias is null ? null : CopyTo(bias, weight.Device, weight.DType);
        Weight = weight;
        Device = weight.Device;
        DType = weight.DType;
        InFeatures = (int)weight.Shape[1];
        OutFeatures = (int)weight.Shape[0];
    }

    public Device Device { get; }

    /// <summary>The dtype of the bias, of the activations the layer expects and of deq(W).</summary>
    public DType DType { get; }

    public int InFeatures { get; }
    public int OutFeatures { get; }

    /// <summary>The frozen 4-bit weight [out, in].</summary>
    public QuantizedWeight Weight { get; }

    /// <summary>The frozen bias [out], or null.</summary>
    public Tensor? Bias { get; }

    /// <summary>y [M, out] = x·deq(W)ᵀ + bias for x [M, in].</summary>
    public Tensor Forward(Tensor x)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        return Ops.Nf4.Matmul(x, Weight, Bias);
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        Weight.Dispose();
        Bias?.Dispose();
    }

    private static void CheckFeatures(string op, long inFeatures, long outFeatures)
    {
        if (inFeatures > int.MaxValue || outFeatures > int.MaxValue)
            throw new ArgumentException($"{op}: in = {inFeatures} and out = {outFeatures} must fit in 32 bits.", "weight");
    }

    private static void CheckBias(string op, Tensor? bias, long outFeatures)
    {
        if (bias is null) return;
        Ops.Checks.Alive(bias, op, nameof(bias));
        if (bias.Rank != 1 || bias.Shape[0] != outFeatures)
            throw new ArgumentException($"{op}: bias must be [out] = [{outFeatures}], got {bias.Describe()}", nameof(bias));
        Ops.Checks.FiniteBias(op, bias);
    }

    /// <summary>A copy of <paramref name="source"/> on <paramref name="device"/> in <paramref name="dtype"/>.</summary>
    internal static Tensor CopyTo(Tensor source, Device device, DType dtype)
    {
        Tensor moved = source.To(device);
        if (moved.DType == dtype) return moved;
        try
        {
            return Ops.Elementwise.Cast(moved, dtype);
        }
        finally
        {
            moved.Dispose();
        }
    }
}
