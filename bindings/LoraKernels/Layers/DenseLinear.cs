// A dense frozen base: W [out, in] and bias [out], copied to the layer's device and dtype (the caller
// keeps its tensors) after every check, so a bad argument wastes no copy: W a matrix, bias [out],
// both finite (the library's non-finite policy), in and out within 32 bits.
namespace LoraKernels.Layers;

public sealed class DenseLinear : FrozenLinear
{
    private DenseLinear(Device device, DType dtype, Tensor weight, Tensor? bias)
        : base(device, dtype, checked((int)weight.Shape[1]), checked((int)weight.Shape[0]), bias) => Weight = weight;

    /// <summary>
    /// Checks <paramref name="w0"/> [out, in] and <paramref name="bias"/> [out], runs
    /// <paramref name="checkAdapter"/> (the adapter's own checks, given (out, in)), then copies both to
    /// <paramref name="device"/> in <paramref name="dtype"/>. <paramref name="op"/> names the layer in messages.
    /// </summary>
    internal static DenseLinear Create(string op, Device device, Tensor w0, Tensor? bias, DType dtype, Action<long, long>? checkAdapter = null)
    {
        ArgumentNullException.ThrowIfNull(device);
        _ = DTypeInfo.SizeOf(dtype);
        Ops.Checks.Alive(w0, op, nameof(w0));
        (long outFeatures, long inFeatures) = Ops.Checks.Matrix(op, nameof(w0), w0, "out, in");
        CheckShape(op, nameof(w0), w0.Describe(), outFeatures, inFeatures, bias);
        checkAdapter?.Invoke(outFeatures, inFeatures);
        Ops.Checks.FiniteBase(op, nameof(w0), w0, bias);
        Tensor weight = CopyTo(w0, device, dtype);
        try
        {
            return new DenseLinear(device, dtype, weight, bias is null ? null : CopyTo(bias, device, dtype));
        }
        catch
        {
            weight.Dispose();
            throw;
        }
    }

    /// <summary>The frozen weight [out, in] (owned; holding W0 + ΔW while an adapter that can merge is merged).</summary>
    public Tensor Weight { get; }

    public override long WeightBytes => Weight.SizeInBytes + (Bias?.SizeInBytes ?? 0);

    private protected override void DisposeWeight() => Weight.Dispose();
}
