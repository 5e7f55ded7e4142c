// Ops.Segmented on the CPU kernels and on kernels/segmented.cu under the SIMT emulator: against each row
// run through the single-adapter LoRA reference in double (SegmentedData), against Ops.Lora run segment
// by segment on the same device (the single-adapter path), and CPU against SIMT.
//
// Tolerances: Tolerance.Bounds (Atol + 2·K·2⁻²⁴·Σ|terms| + εout·|reference|), K the longest fp32 chain:
// u: in; y: in + r + 2 (u's sums, r more products and the scale, beside the base's in); du: out + 1;
// dB: M + 2; dA: out + M + 2; dx: 2·out + r + 2. With BF16 storage and a dense base the base is stored
// (rounded) before the adapter term is added and rounded again: + 2⁻⁸·Σ|terms| for y and dx.
namespace LoraKernels.Tests.SegmentedAdapters;

[TestFixture]
public sealed class SegmentedTests
{
    public static IEnumerable<SegmentedCase> Cases()
    {
        foreach (DType dtype in new[] { DType.F32, DType.BF16 })
        {
            // Decode (M ≤ 16: lora.cu's decode base), prefill (tiled base), a segment over two row tiles.
            yield return new SegmentedCase(1, 33, 20, 8, 3, "perrow", false, dtype);
            yield return new SegmentedCase(7, 20, 65, 1, 4, "perrow", false, dtype);
            yield return new SegmentedCase(16, 33, 20, 8, 5, "random", false, dtype);
            yield return new SegmentedCase(17, 20, 33, 16, 3, "random", false, dtype);
            yield return new SegmentedCase(70, 33, 20, 4, 2, "long", false, dtype);
            yield return new SegmentedCase(9, 20, 33, 3, 2, "single", false, dtype);
            yield return new SegmentedCase(7, 33, 20, 8, 3, "random", true, dtype);
            yield return new SegmentedCase(70, 20, 33, 4, 3, "long", true, dtype);
        }
    }

    private static double[] Bounds(double[] reference, double[] abs, int k, SegmentedCase c)
    {
        double[] bounds = Tolerance.Bounds(reference, abs, k, c.DType);
        if (c.DType == DType.BF16 && !c.Grouped)
            for (int i = 0; i < bounds.Length; i++) bounds[i] += Tolerance.Bf16Rounding * abs[i];
        return bounds;
    }

    [TestCaseSource(nameof(Cases))]
    public void ForwardMatchesEachSegmentThroughSingleAdapterLora(SegmentedCase c)
    {
        var data = new SegmentedData(c);
        var reference = data.Forward();
        Expect.NotVacuous("y", reference.Y);
        double[] uBound = Tolerance.Bounds(reference.U, reference.UAbs, c.In, DType.F32);
        double[] yBound = Bounds(reference.Y, reference.YAbs, c.In + c.R + 2, c);
        var results = new List<float[]>();
        foreach (Device device in new[] { Device.Cpu, Device.Simt })
        {
            using Tensor x = Tensor.FromArray(device, data.X, c.DType, c.M, c.In);
            var (y, u) = Run(device, data, x);
            using (y)
            using (u)
            {
                float[] yValues = y.ToArray(), uValues = u!.ToArray();
                Expect.Close($"{device} u", uValues, reference.U, uBound);
                Expect.Close($"{device} y", yValues, reference.Y, yBound);
                CompareWithLoraPerSegment(device, data, yValues, uValues, yBound, uBound);
                results.Add(yValues);
            }
        }
        Expect.Agree("cpu vs simt y", results[0], results[1], yBound);
    }

    [TestCaseSource(nameof(Cases))]
    public void BackwardMatchesEachSegmentThroughSingleAdapterLora(SegmentedCase c)
    {
        var data = new SegmentedData(c);
        float[] u = Array.ConvertAll(data.Forward().U, v => (float)v);
        var reference = data.Backward(u);
        Expect.NotVacuous("dx", reference.Dx);
        double[] dxBound = Bounds(reference.Dx, reference.DxAbs, 2 * c.Out + c.R + 2, c);
        double[] dABound = Tolerance.Bounds(reference.DA, reference.DAAbs, c.Out + c.M + 2, c.DType);
        double[] dBBound = Tolerance.Bounds(reference.DB, reference.DBAbs, c.M + 2, c.DType);
        var results = new List<(float[] Dx, float[] DA, float[] DB)>();
        foreach (Device device in new[] { Device.Cpu, Device.Simt })
        {
            using Tensor x = Tensor.FromArray(device, data.X, c.DType, c.M, c.In);
            using Tensor uTensor = Tensor.FromArray(device, u, DType.F32, c.M, c.R);
            using Tensor dy = Tensor.FromArray(device, data.Dy, c.DType, c.M, c.Out);
            using Tensor w0 = Base(device, data);
            using Tensor aTable = Tensor.FromArray(device, data.A, c.DType, c.Adapters, c.R, c.In);
            using Tensor bTable = Tensor.FromArray(device, data.B, c.DType, c.Adapters, c.Out, c.R);
            using Tensor scales = Tensor.FromArray(device, data.Scales, c.Adapters);
            var (dx, dA, dB) = c.Grouped
                ? Segmented.GroupedBackward(x, w0, aTable, bTable, scales, uTensor, dy, data.Table)
                : Segmented.Backward(x, w0, aTable, bTable, scales, uTensor, dy, data.Table);
            using (dx)
            using (dA)
            using (dB)
            {
                Assert.That(dA!.Shape, Is.EqualTo(new long[] { c.Adapters, c.R, c.In }));
                Assert.That(dB!.Shape, Is.EqualTo(new long[] { c.Adapters, c.Out, c.R }));
                var values = (dx!.ToArray(), dA.ToArray(), dB.ToArray());
                Expect.Close($"{device} dx", values.Item1, reference.Dx, dxBound);
                Expect.Close($"{device} dA", values.Item2, reference.DA, dABound);
                Expect.Close($"{device} dB", values.Item3, reference.DB, dBBound);
                if (!c.Grouped) CompareGradientsWithLoraPerSegment(device, data, u, values.Item2, values.Item3, reference);
                results.Add(values);
            }
        }
        Expect.Agree("cpu vs simt dx", results[0].Dx, results[1].Dx, dxBound);
        Expect.Agree("cpu vs simt dA", results[0].DA, results[1].DA, dABound);
        Expect.Agree("cpu vs simt dB", results[0].DB, results[1].DB, dBBound);
    }

    /// <summary>Ops.Segmented's forward for the case (dense or grouped) on <paramref name="device"/>.</summary>
    private static (Tensor Y, Tensor? U) Run(Device device, SegmentedData data, Tensor x)
    {
        SegmentedCase c = data.Case;
        using Tensor w0 = Base(device, data);
        using Tensor? bias = data.Bias is null ? null : Tensor.FromArray(device, data.Bias, c.DType, c.Out);
        using Tensor aTable = Tensor.FromArray(device, data.A, c.DType, c.Adapters, c.R, c.In);
        using Tensor bTable = Tensor.FromArray(device, data.B, c.DType, c.Adapters, c.Out, c.R);
        using Tensor scales = Tensor.FromArray(device, data.Scales, c.Adapters);
        if (c.Grouped) return Segmented.GroupedForward(x, w0, aTable, bTable, scales, data.Table);
        var (y, u) = Segmented.Forward(x, w0, bias, aTable, bTable, scales, data.Table);
        return (y, u);
    }

    private static Tensor Base(Device device, SegmentedData data)
    {
        SegmentedCase c = data.Case;
        return c.Grouped
            ? Tensor.FromArray(device, data.W0, c.DType, c.Adapters, c.Out, c.In)
            : Tensor.FromArray(device, data.W0, c.DType, c.Out, c.In);
    }

    /// <summary>Each segment with an adapter through Ops.Lora.Forward on the same device: its rows of y and u agree with the segmented op's.</summary>
    private static void CompareWithLoraPerSegment(Device device, SegmentedData data, float[] y, float[] u, double[] yBound, double[] uBound)
    {
        SegmentedCase c = data.Case;
        int compared = 0;
        foreach (Segment s in data.Segments.Where(s => s.Adapter >= 0 && s.Length > 0))
        {
            using Tensor xs = Tensor.FromArray(device, data.Rows(data.X, s.Start, s.Length, c.In), c.DType, s.Length, c.In);
            using Tensor w0 = Tensor.FromArray(device, data.BaseOf(s.Adapter), c.DType, c.Out, c.In);
            using Tensor? bias = data.Bias is null ? null : Tensor.FromArray(device, data.Bias, c.DType, c.Out);
            using Tensor a = Tensor.FromArray(device, data.AdapterA(s.Adapter), c.DType, c.R, c.In);
            using Tensor b = Tensor.FromArray(device, data.AdapterB(s.Adapter), c.DType, c.Out, c.R);
            var (ys, us) = Lora.Forward(xs, w0, bias, a, b, data.Scales[s.Adapter]);
            using (ys)
            using (us)
            {
                Expect.Agree($"{device} segment [{s.Start}, {s.Start + s.Length}) y vs Lora.Forward", data.Rows(y, s.Start, s.Length, c.Out),
                             ys.ToArray(), yBound[(s.Start * c.Out)..((s.Start + s.Length) * c.Out)]);
                Expect.Agree($"{device} segment [{s.Start}, {s.Start + s.Length}) u vs Lora.Forward", data.Rows(u, s.Start, s.Length, c.R),
                             us.ToArray(), uBound[(s.Start * c.R)..((s.Start + s.Length) * c.R)]);
            }
            compared++;
        }
        Assert.That(compared, Is.GreaterThan(0), "at least one segment has an adapter");
    }

    /// <summary>Each adapter's dA and dB equal Ops.Lora.Backward summed over that adapter's segments (same device).</summary>
    private static void CompareGradientsWithLoraPerSegment(Device device, SegmentedData data, float[] u, float[] dA, float[] dB,
                                                           Reference.BackwardResult reference)
    {
        SegmentedCase c = data.Case;
        var sumA = new float[dA.Length];
        var sumB = new float[dB.Length];
        foreach (Segment s in data.Segments.Where(s => s.Adapter >= 0 && s.Length > 0))
        {
            using Tensor xs = Tensor.FromArray(device, data.Rows(data.X, s.Start, s.Length, c.In), c.DType, s.Length, c.In);
            using Tensor w0 = Tensor.FromArray(device, data.W0, c.DType, c.Out, c.In);
            using Tensor a = Tensor.FromArray(device, data.AdapterA(s.Adapter), c.DType, c.R, c.In);
            using Tensor b = Tensor.FromArray(device, data.AdapterB(s.Adapter), c.DType, c.Out, c.R);
            using Tensor us = Tensor.FromArray(device, data.Rows(u, s.Start, s.Length, c.R), DType.F32, s.Length, c.R);
            using Tensor dys = Tensor.FromArray(device, data.Rows(data.Dy, s.Start, s.Length, c.Out), c.DType, s.Length, c.Out);
            var (dx, da, db) = Lora.Backward(xs, w0, a, b, us, dys, data.Scales[s.Adapter], needDx: false);
            using (da)
            using (db)
            {
                float[] aValues = da!.ToArray(), bValues = db!.ToArray();
                for (int i = 0; i < aValues.Length; i++) sumA[s.Adapter * c.R * c.In + i] += aValues[i];
                for (int i = 0; i < bValues.Length; i++) sumB[s.Adapter * c.Out * c.R + i] += bValues[i];
            }
        }
        // Ops.Lora stores each segment's gradient in the dtype before the sum here: one more rounding per
        // segment, at most 2⁻⁸·Σ|terms| in all (Agree doubles the bound for the two sides' own errors).
        double[] Bound(double[] reference, double[] abs, int k) =>
            Tolerance.Bounds(reference, abs, k, c.DType).Select((b, i) => b + Tolerance.OutputRounding(c.DType) * abs[i]).ToArray();
        Expect.Agree($"{device} dA vs Σ Lora.Backward over segments", dA, sumA, Bound(reference.DA, reference.DAAbs, c.Out + c.M + 2));
        Expect.Agree($"{device} dB vs Σ Lora.Backward over segments", dB, sumB, Bound(reference.DB, reference.DBAbs, c.M + 2));
    }
}
