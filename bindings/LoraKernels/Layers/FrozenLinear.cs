// The frozen half of an adapted linear layer (base × delta, docs/ARCHITECTURE.md): a base product
// y = x Wᵀ + bias whose weight never trains. DenseLinear holds W as a dense tensor; Nf4Linear holds it
// in 4 bits (Families/Qlora). An adapter layer owns one base and adds its delta (low-rank, DoRA's
// magnitude, VeRA's scaling vectors) on top, choosing the fused kernels for its (base, delta) pair.
namespace LoraKernels.Layers;

public abstract class FrozenLinear : IDisposable
{
    private protected FrozenLinear(Device device, DType dtype, int inFeatures, int outFeatures, Tensor? bias)
    {
        Device = device;
        DType = dtype;
        InFeatures = inFeatures;
        OutFeatures = outFeatures;
        Bias = bias;
    }

    public Device Device { get; }

    /// <summary>The dtype of the bias, of the activations the layer takes and of its outputs.</summary>
    public DType DType { get; }

    public int InFeatures { get; }
    public int OutFeatures { get; }

    /// <summary>The frozen bias [out] (owned), or null.</summary>
    public Tensor? Bias { get; }

    /// <summary>Bytes of the frozen weight and bias as stored (measured from the buffers).</summary>
    public abstract long WeightBytes { get; }

    public bool IsDisposed { get; private set; }

    public void Dispose()
    {
        if (IsDisposed) return;
        IsDisposed = true;
        DisposeWeight();
        Bias?.Dispose();
    }

    /// <summary>Frees the weight (called once, by Dispose).</summary>
    private protected abstract void DisposeWeight();

    /// <summary>Checks bias [out] (alive, shape, finite) and that in and out fit 32 bits; <paramref name="weightName"/> names the weight in messages.</summary>
    private protected static void CheckShape(string op, string weightName, string weightDescription, long outFeatures, long inFeatures, Tensor? bias)
    {
        if (bias is not null)
        {
            Ops.Checks.Alive(bias, op, nameof(bias));
            if (bias.Rank != 1 || bias.Shape[0] != outFeatures)
                throw new ArgumentException($"{op}: bias must be [out] = [{outFeatures}], got {bias.Describe()}", nameof(bias));
        }
        if (inFeatures > int.MaxValue || outFeatures > int.MaxValue)
            throw new ArgumentException($"{op}: {weightName} is {weightDescription}; in and out must fit in 32 bits.", weightName);
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
