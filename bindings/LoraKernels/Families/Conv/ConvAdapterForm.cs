// The inference path of a convolution adapter: form ΔW into a copy of W0 and run one convolution, or apply the
// adapter's own products beside the base convolution, whichever costs fewer FLOPs. A convolution weight is small
// next to the activations it slides over (O·C·kh·kw against N·HO·WO pixels), so forming usually wins once a batch
// has more pixels than about O·C·kh·kw / (the adapter's per-pixel width); docs/DECISIONS.md has the measurements.
// Training never forms: the backward of a formed ΔW needs the whole [O, C, kh, kw] weight gradient, a product as
// large as the base convolution, where the adapter's own backward costs about twice its forward.
using LoraKernels.Layers;

namespace LoraKernels.Families.Conv;

internal static class ConvAdapterForm
{
    /// <summary>
    /// Whether forming is cheaper: <paramref name="formFlops"/> (ΔW) plus copying W0 and adding ΔW (2 per element)
    /// against <paramref name="applyFlops"/>, the adapter's products at this batch.
    /// </summary>
    public static bool Cheaper(long formFlops, long applyFlops, Tensor w0) => formFlops + 2 * w0.ElementCount < applyFlops;

    /// <summary>conv(x, W0 + ΔW) + bias, with <paramref name="addDelta"/> adding ΔW to a copy of W0 (freed before returning).</summary>
    public static Tensor Forward(FrozenConv2d frozen, Tensor x, Action<Tensor> addDelta)
    {
        using Tensor w = frozen.Weight.Clone();
        addDelta(w);
        return Ops.Conv2d.Forward(x, w, frozen.Bias, frozen.Geometry);
    }
}
