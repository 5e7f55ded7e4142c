// Ops.Gated on the CPU kernels and on kernels/gated.cu (+ kernels/lora.cu) under the SIMT emulator, against the
// double-precision references of GatedReference.cs: the gate per rank and per token, the top-k form, merge.
//
// Tolerances: Tolerance.Bounds (Atol + 2·K·2⁻²⁴·Σ|terms| + εout·|reference|, K the longest fp32 chain) plus, for
// BF16 with a per-rank gate, 2·2⁻⁸·Σ|adapter terms|: the GPU path stores B' = B·diag(g) (and dB') in bf16, one extra
// rounding each (kernels/gated.cu); for BF16 top-k, 2⁻⁸·Σ|terms| for the base product stored before the experts' term
// is added to it. The CPU stages bf16 as fp32 and is inside the first part; both devices share one bound.

namespace LoraKernels.Tests.GatedRank;

[TestFixture]
public sealed class GatedOpsTests
{
    public static IEnumerable<GatedCase> DenseCases()
    {
        // M: 1 and 7 (decode for the per-rank fold), 17 (tiled), 33; in/out multiples of no tile or warp; r 1, 3, 8.
        foreach (bool perToken in new[] { false, true })
            foreach (DType dtype in new[] { DType.F32, DType.BF16 })
                foreach (float p in new[] { 0f, 0.2f })
                {
                    yield return new GatedCase(1, 7, 5, 3, perToken, p, dtype);
                    yield return new GatedCase(17, 33, 20, 8, perToken, p, dtype);
                    yield return new GatedCase(33, 20, 65, 1, perToken, p, dtype);
                }
    }

    public static IEnumerable<TopKCase> TopKCases()
    {
        foreach (DType dtype in new[] { DType.F32, DType.BF16 })
            foreach (float p in new[] { 0f, 0.2f })
            {
                yield return new TopKCase(1, 7, 5, 4, 1, p, dtype);
                yield return new TopKCase(17, 33, 20, 9, 3, p, dtype);
                yield return new TopKCase(33, 20, 65, 37, 2, p, dtype);
            }
    }

    private static double[] WithExtra(double[] bounds, double[] extraAbs, double extra)
    {
        for (int i = 0; i < bounds.Length; i++) bounds[i] += extra * extraAbs[i];
        return bounds;
    }

    [TestCaseSource(nameof(DenseCases))]
    public void ForwardMatchesReferenceOnCpuAndSimt(GatedCase c)
    {
        var data = new GatedData(c);
        var (uRef, uAbs, yRef, yAbs, yAdapter) = data.Forward();
        Expect.NotVacuous("y", yRef);
        double extra = c.DType == DType.BF16 && !c.PerToken ? Tolerance.Bf16Rounding : 0;
        double[] uBound = Tolerance.Bounds(uRef, uAbs, c.In, DType.F32);
        double[] yBound = WithExtra(Tolerance.Bounds(yRef, yAbs, c.In + c.R + 3, c.DType), yAdapter, extra);
        var results = new List<float[]>();
        foreach (Device device in new[] { Device.Cpu, Device.Simt })
        {
            using Tensor x = Tensor.FromArray(device, data.X, c.DType, c.M, c.In);
            using Tensor w0 = Tensor.FromArray(device, data.W0, c.DType, c.Out, c.In);
            using Tensor bias = Tensor.FromArray(device, data.Bias, c.DType, c.Out);
            using Tensor a = Tensor.FromArray(device, data.A, c.DType, c.R, c.In);
            using Tensor b = Tensor.FromArray(device, data.B, c.DType, c.Out, c.R);
            using Tensor gate = Tensor.FromArray(device, data.Gate, data.GateShape);
            var (y, u) = Ops.Gated.Forward(x, w0, bias, a, b, gate, GatedData.Scale, c.DropoutP, GatedData.Seed);
            using (y)
            using (u)
            {
                Expect.Close($"{device} u", u.ToArray(), uRef, uBound);
                float[] values = y.ToArray();
                Expect.Close($"{device} y", values, yRef, yBound);
                results.Add(values);
            }
        }
        Expect.Agree("cpu vs simt y", results[0], results[1], yBound);
    }

    [TestCaseSource(nameof(DenseCases))]
    public void BackwardMatchesReferenceOnCpuAndSimt(GatedCase c)
    {
        var data = new GatedData(c);
        float[] u = Array.ConvertAll(data.Forward().U, v => (float)v);
        GatedData.Grads r = data.Backward(u);
        Expect.NotVacuous("dgate", r.DGate);
        double extra = c.DType == DType.BF16 && !c.PerToken ? 2 * Tolerance.Bf16Rounding : 0;
        double[] dxBound = WithExtra(Tolerance.Bounds(r.Dx, r.DxAbs, c.Out + c.R + 2, c.DType), r.DxAdapterAbs, extra);
        double[] daBound = WithExtra(Tolerance.Bounds(r.DA, r.DAAbs, c.M + c.Out + 2, c.DType), r.DAAbs, extra);
        double[] dbBound = WithExtra(Tolerance.Bounds(r.DB, r.DBAbs, c.M + 2, c.DType), r.DBAbs, extra);
        double[] dgBound = WithExtra(Tolerance.Bounds(r.DGate, r.DGateAbs, c.M + c.Out + 2, DType.F32), r.DGateAbs, extra);
        var results = new List<float[][]>();
        foreach (Device device in new[] { Device.Cpu, Device.Simt })
        {
            using Tensor x = Tensor.FromArray(device, data.X, c.DType, c.M, c.In);
            using Tensor w0 = Tensor.FromArray(device, data.W0, c.DType, c.Out, c.In);
            using Tensor a = Tensor.FromArray(device, data.A, c.DType, c.R, c.In);
            using Tensor b = Tensor.FromArray(device, data.B, c.DType, c.Out, c.R);
            using Tensor gate = Tensor.FromArray(device, data.Gate, data.GateShape);
            using Tensor uTensor = Tensor.FromArray(device, u, c.M, c.R);
            using Tensor dy = Tensor.FromArray(device, data.Dy, c.DType, c.M, c.Out);
            var (dx, dA, dB, dGate) = Ops.Gated.Backward(x, w0, a, b, gate, uTensor, dy, GatedData.Scale, c.DropoutP, GatedData.Seed);
            using (dx)
            using (dA)
            using (dB)
            using (dGate)
            {
                float[][] values = [dx!.ToArray(), dA!.ToArray(), dB!.ToArray(), dGate!.ToArray()];
                Assert.That(dGate.Shape, Is.EqualTo(data.GateShape), "the gate's gradient has the gate's shape");
                Expect.Close($"{device} dx", values[0], r.Dx, dxBound);
                Expect.Close($"{device} dA", values[1], r.DA, daBound);
                Expect.Close($"{device} dB", values[2], r.DB, dbBound);
                Expect.Close($"{device} dgate", values[3], r.DGate, dgBound);
                results.Add(values);
            }
        }
        Expect.Agree("cpu vs simt dgate", results[0][3], results[1][3], dgBound);
        Expect.Agree("cpu vs simt dx", results[0][0], results[1][0], dxBound);
    }

    /// <summary>
    /// The chain-rule reference against central differences of the double forward, for L = Σ dy ⊙ y: y is linear in
    /// each of x, A, B and the gate separately, so the central difference is exact up to double rounding (bound
    /// 1e-9 + 1e-6·Σ|terms|; the reference takes u rounded to fp32, 2⁻²⁴ relative, inside it).
    /// </summary>
    [TestCase(false)]
    [TestCase(true)]
    public void ReferenceGradientsMatchCentralDifferences_M4_in6_out5_r3(bool perToken)
    {
        var data = new GatedData(new GatedCase(4, 6, 5, 3, perToken, 0.3f, DType.F32));
        double[] x = Array.ConvertAll(data.X, v => (double)v), a = Array.ConvertAll(data.A, v => (double)v);
        double[] b = Array.ConvertAll(data.B, v => (double)v), gate = Array.ConvertAll(data.Gate, v => (double)v);
        double Loss() => data.Loss(x, a, b, gate);
        var chain = data.Backward(Array.ConvertAll(data.Forward().U, v => (float)v));
        static double[] Bound(double[] abs) => Array.ConvertAll(abs, v => 1e-9 + 1e-6 * v);
        Expect.Close("dgate", Array.ConvertAll(CentralDifference.Of(Loss, gate), v => (float)v), chain.DGate, Bound(chain.DGateAbs));
        Expect.Close("dA", Array.ConvertAll(CentralDifference.Of(Loss, a), v => (float)v), chain.DA, Bound(chain.DAAbs));
        Expect.Close("dB", Array.ConvertAll(CentralDifference.Of(Loss, b), v => (float)v), chain.DB, Bound(chain.DBAbs));
        Expect.Close("dx", Array.ConvertAll(CentralDifference.Of(Loss, x), v => (float)v), chain.Dx, Bound(chain.DxAbs));
        Expect.NotVacuous("dgate", chain.DGate);
    }

    [TestCaseSource(nameof(TopKCases))]
    public void TopKForwardAndBackwardMatchReferenceOnCpuAndSimt(TopKCase c)
    {
        var data = new TopKData(c);
        var (hRef, hAbs, yRef, yAbs) = data.Forward();
        float[] h = Array.ConvertAll(hRef, v => (float)v);
        var g = data.Backward(h);
        Expect.NotVacuous("y", yRef);
        Expect.NotVacuous("dweight", g.DWeight);
        double extra = c.DType == DType.BF16 ? Tolerance.Bf16Rounding : 0;
        int slots = c.M * c.K;
        double[] hBound = Tolerance.Bounds(hRef, hAbs, c.In, DType.F32);
        double[] yBound = WithExtra(Tolerance.Bounds(yRef, yAbs, c.In + c.K + 3, c.DType), yAbs, extra);
        double[] dxBound = WithExtra(Tolerance.Bounds(g.Dx, g.DxAbs, 2 * c.Out + c.K + 3, c.DType), g.DxAbs, extra);
        double[] daBound = Tolerance.Bounds(g.DA, g.DAAbs, c.Out + slots + 2, c.DType);
        double[] dbBound = Tolerance.Bounds(g.DB, g.DBAbs, slots + 3, c.DType);
        double[] dwBound = Tolerance.Bounds(g.DWeight, g.DWeightAbs, c.Out + 2, DType.F32);
        foreach (Device device in new[] { Device.Cpu, Device.Simt })
        {
            using Tensor x = Tensor.FromArray(device, data.X, c.DType, c.M, c.In);
            using Tensor w0 = Tensor.FromArray(device, data.W0, c.DType, c.Out, c.In);
            using Tensor bias = Tensor.FromArray(device, data.Bias, c.DType, c.Out);
            using Tensor a = Tensor.FromArray(device, data.A, c.DType, c.Experts, c.In);
            using Tensor b = Tensor.FromArray(device, data.B, c.DType, c.Out, c.Experts);
            using Tensor expert = Tensor.FromArray(device, data.Expert, c.M, c.K);
            using Tensor weight = Tensor.FromArray(device, data.Weight, c.M, c.K);
            var (y, hOut) = Ops.Gated.TopKForward(x, w0, bias, a, b, expert, weight, TopKData.Scale, c.DropoutP, TopKData.Seed);
            using (y)
            using (hOut)
            {
                Expect.Close($"{device} h", hOut.ToArray(), hRef, hBound);
                Expect.Close($"{device} y", y.ToArray(), yRef, yBound);
            }
            using Tensor hTensor = Tensor.FromArray(device, h, c.M, c.K);
            using Tensor dy = Tensor.FromArray(device, data.Dy, c.DType, c.M, c.Out);
            var (dx, dA, dB, dw) = Ops.Gated.TopKBackward(x, w0, a, b, expert, weight, hTensor, dy, TopKData.Scale, c.DropoutP, TopKData.Seed);
            using (dx)
            using (dA)
            using (dB)
            using (dw)
            {
                Expect.Close($"{device} dx", dx!.ToArray(), g.Dx, dxBound);
                Expect.Close($"{device} dA", dA!.ToArray(), g.DA, daBound);
                Expect.Close($"{device} dB", dB!.ToArray(), g.DB, dbBound);
                Expect.Close($"{device} dweight", dw!.ToArray(), g.DWeight, dwBound);
                float[] dBValues = dB.ToArray();
                for (int n = 0; n < c.Out; n++)
                    Assert.That(dBValues[n * c.Experts + c.Experts - 1], Is.Zero, $"{device}: the never-picked expert's column of dB");
            }
        }
    }

    /// <summary>The top-k reference's gradients (x, A, B, the routing weights) against central differences (exact: y is linear in each).</summary>
    [Test]
    public void TopKReferenceGradientsMatchCentralDifferences_M4_in6_out5_E5_k2()
    {
        var data = new TopKData(new TopKCase(4, 6, 5, 5, 2, 0.3f, DType.F32));
        double[] x = Array.ConvertAll(data.X, v => (double)v), a = Array.ConvertAll(data.A, v => (double)v);
        double[] b = Array.ConvertAll(data.B, v => (double)v), w = Array.ConvertAll(data.Weight, v => (double)v);
        double Loss() => data.Loss(x, a, b, w);
        var g = data.Backward(Array.ConvertAll(data.Forward().H, v => (float)v));
        static double[] Bound(double[] abs) => Array.ConvertAll(abs, v => 1e-9 + 1e-6 * v);
        Expect.Close("dweight", Array.ConvertAll(CentralDifference.Of(Loss, w), v => (float)v), g.DWeight, Bound(g.DWeightAbs));
        Expect.Close("dA", Array.ConvertAll(CentralDifference.Of(Loss, a), v => (float)v), g.DA, Bound(g.DAAbs));
        Expect.Close("dB", Array.ConvertAll(CentralDifference.Of(Loss, b), v => (float)v), g.DB, Bound(g.DBAbs));
        Expect.Close("dx", Array.ConvertAll(CentralDifference.Of(Loss, x), v => (float)v), g.Dx, Bound(g.DxAbs));
    }

    /// <summary>
    /// The top-k forward never reads an expert no token picked: the unpicked expert's row of A and column of B hold NaN,
    /// and the output is still finite and equal to the reference (a read would make it NaN).
    /// </summary>
    [TestCase(DeviceKind.Cpu)]
    [TestCase(DeviceKind.Simt)]
    public void TopKForwardNeverReadsAnUnpickedExpert_M17_in33_out20_E9_k3(DeviceKind kind)
    {
        Device device = kind == DeviceKind.Cpu ? Device.Cpu : Device.Simt;
        var c = new TopKCase(17, 33, 20, 9, 3, 0f, DType.F32);
        var data = new TopKData(c);
        var (_, _, yRef, yAbs) = data.Forward();
        float[] a = (float[])data.A.Clone(), b = (float[])data.B.Clone();
        int unpicked = c.Experts - 1;
        for (int k = 0; k < c.In; k++) a[unpicked * c.In + k] = float.NaN;
        for (int n = 0; n < c.Out; n++) b[n * c.Experts + unpicked] = float.NaN;
        using Tensor x = Tensor.FromArray(device, data.X, c.M, c.In);
        using Tensor w0 = Tensor.FromArray(device, data.W0, c.Out, c.In);
        using Tensor bias = Tensor.FromArray(device, data.Bias, c.Out);
        using Tensor aTensor = Tensor.FromArray(device, a, c.Experts, c.In);
        using Tensor bTensor = Tensor.FromArray(device, b, c.Out, c.Experts);
        using Tensor expert = Tensor.FromArray(device, data.Expert, c.M, c.K);
        using Tensor weight = Tensor.FromArray(device, data.Weight, c.M, c.K);
        var (y, h) = Ops.Gated.TopKForward(x, w0, bias, aTensor, bTensor, expert, weight, TopKData.Scale);
        using (y)
        using (h)
            Expect.Close($"{device} y", y.ToArray(), yRef, Tolerance.Bounds(yRef, yAbs, c.In + c.K + 3, DType.F32));
    }

    [TestCase(DType.F32)]
    [TestCase(DType.BF16)]
    public void MergeAndUnmergeRoundTripOnCpuAndSimt_out23_in19_r5(DType dtype)
    {
        var c = new GatedCase(1, 19, 23, 5, false, 0f, dtype);
        var data = new GatedData(c);
        double[] merged = new double[c.Out * c.In], abs = new double[c.Out * c.In], delta = new double[c.Out * c.In];
        for (int n = 0; n < c.Out; n++)
            for (int k = 0; k < c.In; k++)
            {
                double sum = data.W0[n * c.In + k], d = 0;
                for (int j = 0; j < c.R; j++)
                {
                    double term = GatedData.Scale * data.B[n * c.R + j] * data.Gate[j] * data.A[j * c.In + k];
                    sum += term;
                    d += Math.Abs(term);
                }
                merged[n * c.In + k] = sum;
                abs[n * c.In + k] = Math.Abs(data.W0[n * c.In + k]) + d;
                delta[n * c.In + k] = d;
            }
        double[] bound = WithExtra(Tolerance.Bounds(merged, abs, c.R + 3, dtype), delta, dtype == DType.BF16 ? Tolerance.Bf16Rounding : 0);
        double[] original = Array.ConvertAll(data.W0, v => (double)v);
        foreach (Device device in new[] { Device.Cpu, Device.Simt })
        {
            using Tensor w0 = Tensor.FromArray(device, data.W0, dtype, c.Out, c.In);
            using Tensor a = Tensor.FromArray(device, data.A, dtype, c.R, c.In);
            using Tensor b = Tensor.FromArray(device, data.B, dtype, c.Out, c.R);
            using Tensor gate = Tensor.FromArray(device, data.Gate, c.R);
            Ops.Gated.Merge(w0, a, b, gate, GatedData.Scale);
            Expect.Close($"{device} merged", w0.ToArray(), merged, bound);
            Ops.Gated.Unmerge(w0, a, b, gate, GatedData.Scale);
            Expect.Close($"{device} unmerged", w0.ToArray(), original, Array.ConvertAll(bound, v => 2 * v));
        }
    }

    [Test]
    public void BadInputGivesClearErrors_Cpu()
    {
        Device device = Device.Cpu;
        using Tensor x = Tensor.FromArray(device, new TestData(3).NonZero(2 * 4), 2, 4);
        using Tensor w0 = Tensor.FromArray(device, new TestData(4).NonZero(5 * 4), 5, 4);
        using Tensor a = Tensor.FromArray(device, new TestData(5).NonZero(3 * 4), 3, 4);
        using Tensor b = Tensor.FromArray(device, new TestData(6).NonZero(5 * 3), 5, 3);
        using Tensor wrongGate = Tensor.FromArray(device, new float[4], 4);
        Assert.That(() => Ops.Gated.Forward(x, w0, null, a, b, wrongGate, 1f),
                    Throws.ArgumentException.With.Message.Contains("gate must be [r] = [3] (one value per rank) or [M, r] = [2, 3]")
                          .And.Message.Contains("F32[4]"));
        using Tensor bf16Gate = Tensor.FromArray(device, new float[3], DType.BF16, 3);
        Assert.That(() => Ops.Gated.Forward(x, w0, null, a, b, bf16Gate, 1f), Throws.ArgumentException.With.Message.Contains("dtype F32"));

        // k > E: a pool of 3 experts, 4 slots per token.
        using Tensor tooMany = Tensor.FromArray(device, new float[] { 0, 1, 2, 0, 0, 1, 2, 1 }, 2, 4);
        using Tensor weights = Tensor.FromArray(device, new float[8], 2, 4);
        Assert.That(() => Ops.Gated.TopKForward(x, w0, null, a, b, tooMany, weights, 1f),
                    Throws.TypeOf<ArgumentOutOfRangeException>().With.Message.Contains("k = 4").And.Message.Contains("E = 3"));
        // An index outside the pool, or not an integer.
        foreach (float bad in new[] { 3f, -1f, 0.5f, float.NaN })
        {
            using Tensor expert = Tensor.FromArray(device, new float[] { 0, 1, 2, bad }, 2, 2);
            using Tensor w = Tensor.FromArray(device, new float[4], 2, 2);
            Assert.That(() => Ops.Gated.TopKForward(x, w0, null, a, b, expert, w, 1f),
                        Throws.ArgumentException.With.Message.Contains("expert[1, 1]").And.Message.Contains("integers in [0, 3)"));
        }
        using Tensor gate = Tensor.FromArray(device, new float[3], 3);
        Assert.That(() => Ops.Gated.SoftThreshold(gate, -1f), Throws.TypeOf<ArgumentOutOfRangeException>().With.Message.Contains("lambda"));
    }
}
