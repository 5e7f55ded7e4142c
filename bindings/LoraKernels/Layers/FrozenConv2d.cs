// A frozen convolution base: W [O, C, KH, KW] and bias [O] (F32), with its stride, padding and dilation. A
// convolution is a linear map on each window of its input (a row of W flattened to C·KH·KW against the window's
// values), so it is a FrozenLinear whose InFeatures are the input channels C and OutFeatures the output channels O;
// its adapted layers are AdaptedLinear<FrozenConv2d> (conv-LoRA, LoKr, Tucker) and take image batches
// [N, C, H, W]. Copied and checked as DenseLinear is: W and bias finite, every dimension at least 1.
using LoraKernels.Ops;

namespace LoraKernels.Layers;

public sealed class FrozenConv2d : FrozenLinear
{
    private FrozenConv2d(Device device, Tensor weight, Tensor? bias, Conv2dGeometry geometry)
        : base(device, DType.F32, checked((int)weight.Shape[1]), checked((int)weight.Shape[0]), bias)
    {
        Weight = weight;
        Geometry = geometry;
    }

    /// <summary>
    /// Checks <paramref name="w0"/> [O, C, KH, KW], <paramref name="bias"/> [O] and <paramref name="geometry"/>, runs
    /// <paramref name="checkAdapter"/> (the adapter's own checks, given W0's shape), then copies both to
    /// <paramref name="device"/> as F32. <paramref name="op"/> names the layer in messages.
    /// </summary>
    internal static FrozenConv2d Create(string op, Device device, Tensor w0, Tensor? bias, Conv2dGeometry geometry,
                                        Action<IReadOnlyList<long>>? checkAdapter = null)
    {
        ArgumentNullException.ThrowIfNull(device);
        ArgumentNullException.ThrowIfNull(geometry);
        Checks.Alive(w0, op, nameof(w0));
        if (w0.Rank != 4 || w0.ElementCount < 1)
            throw new ArgumentException($"{op}: w0 must be a convolution weight [O, C, KH, KW] with every dimension >= 1, got {w0.Describe()}", nameof(w0));
        Checks.Size(op, nameof(w0), w0);
        CheckShape(op, nameof(w0), w0.Describe(), w0.Shape[0], w0.Shape[1], bias);
        geometry.Validate(op, nameof(geometry));
        checkAdapter?.Invoke(w0.Shape);
        Checks.FiniteBase(op, nameof(w0), w0, bias);
        Tensor weight = CopyTo(w0, device, DType.F32);
        try
        {
            return new FrozenConv2d(device, weight, bias is null ? null : CopyTo(bias, device, DType.F32), geometry);
        }
        catch
        {
            weight.Dispose();
            throw;
        }
    }

    /// <summary>The frozen weight [O, C, KH, KW] (owned; holding W0 + ΔW while an adapter that can merge is merged).</summary>
    public Tensor Weight { get; }

    public Conv2dGeometry Geometry { get; }
    public int KernelH => (int)Weight.Shape[2];
    public int KernelW => (int)Weight.Shape[3];

    public override long WeightBytes => Weight.SizeInBytes + (Bias?.SizeInBytes ?? 0);

    private protected override void DisposeWeight() => Weight.Dispose();
}
