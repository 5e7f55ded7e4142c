// VeRA (Ops.Vera, VeraProjections, VeraLinear) on the CPU kernels and on kernels/vera.cu +
// kernels/lora.cu under the SIMT emulator, against the double-precision reference of VeraReference.cs.
//
// Tolerances: Tolerance.Bounds (Atol + 2·K·2⁻²⁴·Σ|terms| + εout·|reference|, K the longest fp32
// chain) plus, for BF16, 2⁻⁸·Σ|adapter terms|: the CPU stages bf16 as fp32 and is inside the first
// part, but the GPU path stores B' = diag(λ_b)·B_l·diag(λ_d) and G = dyᵀu in bf16 (one extra
// rounding of each adapter term; kernels/vera.cu says why), and both devices share one bound.
using LoraKernels.Autograd;
using LoraKernels.Layers;

namespace LoraKernels.Tests.VeraAdapter;

[TestFixture]
public sealed class VeraTests
{
    [TestCaseSource(nameof(Cases))]
    public void ForwardMatchesReferenceOnCpuAndSimt(VeraCase c) => Forward(c, Device.Cpu, Device.Simt);

    [TestCaseSource(nameof(Cases))]
    public void BackwardMatchesReferenceOnCpuAndSimt(VeraCase c) => Backward(c, Device.Cpu, Device.Simt);

    [TestCase(DType.F32)]
    [TestCase(DType.BF16)]
    public void MergeAndUnmergeRoundTripOnCpuAndSimt(DType dtype) => MergeUnmerge(dtype, Device.Cpu, Device.Simt);

    public static IEnumerable<VeraCase> Cases()
    {
        // M: 1 (decode), 17 (tiled, past one 16-token decode), 33; in/out multiples of no tile or
        // warp; maxIn == in (A read in place) and maxIn > in (strided slice copied); r 1, 3, 8.
        foreach (DType dtype in new[] { DType.F32, DType.BF16 })
            foreach (float p in new[] { 0f, 0.2f })
            {
                yield return new VeraCase(1, 7, 5, 3, 11, 9, p, dtype);
                yield return new VeraCase(17, 33, 20, 8, 40, 20, p, dtype);
                yield return new VeraCase(33, 20, 65, 1, 20, 70, p, dtype);
            }
    }

    private static double[] VeraBounds(double[] reference, double[] abs, double[] adapterAbs, int k, DType dtype)
    {
        double[] bounds = Tolerance.Bounds(reference, abs, k, dtype);
        if (dtype == DType.BF16)
            for (int i = 0; i < bounds.Length; i++) bounds[i] += Tolerance.Bf16Rounding * adapterAbs[i];
        return bounds;
    }

    /// <summary>Each device against the reference, and the two against each other.</summary>
    internal static void Forward(VeraCase c, Device first, Device second)
    {
        var data = new VeraData(c);
        var (uRef, uAbs, yRef, yAbs, yAdapter) = data.Forward();
        Expect.NotVacuous("y", yRef);
        double[] uBound = Tolerance.Bounds(uRef, uAbs, c.In, DType.F32);
        double[] yBound = VeraBounds(yRef, yAbs, yAdapter, c.In + c.R + 2, c.DType);
        var results = new List<float[]>();
        foreach (Device device in new[] { first, second })
        {
            using Tensor x = Tensor.FromArray(device, data.X, c.DType, c.M, c.In);
            using Tensor w0 = Tensor.FromArray(device, data.W0, c.DType, c.Out, c.In);
            using Tensor bias = Tensor.FromArray(device, data.Bias, c.DType, c.Out);
            using Tensor a = Tensor.FromArray(device, data.VeraA, c.DType, c.R, c.MaxIn);
            using Tensor b = Tensor.FromArray(device, data.VeraB, c.DType, c.MaxOut, c.R);
            using Tensor ld = Tensor.FromArray(device, data.LambdaD, c.DType, c.R);
            using Tensor lb = Tensor.FromArray(device, data.LambdaB, c.DType, c.Out);
            var (y, u) = Vera.Forward(x, w0, bias, a, b, ld, lb, c.DropoutP, VeraData.Seed);
            using (y)
            using (u)
            {
                Expect.Close($"{device} u", u.ToArray(), uRef, uBound);
                float[] yValues = y.ToArray();
                Expect.Close($"{device} y", yValues, yRef, yBound);
                results.Add(yValues);
            }
        }
        Expect.Agree($"{first} vs {second} y", results[0], results[1], yBound);
    }

    internal static void Backward(VeraCase c, Device first, Device second)
    {
        var data = new VeraData(c);
        float[] u = Array.ConvertAll(data.Forward().U, v => (float)v);
        var r = data.Backward(u);
        Expect.NotVacuous("dλ_b", r.DLambdaB);
        double[] dxBound = VeraBounds(r.Dx, r.DxAbs, r.DxAdapterAbs, c.Out + c.R + 2, c.DType);
        double[] ddBound = VeraBounds(r.DLambdaD, r.DLambdaDAbs, r.DLambdaDAbs, c.M + c.Out + 2, c.DType);
        double[] dbBound = VeraBounds(r.DLambdaB, r.DLambdaBAbs, r.DLambdaBAbs, c.M + c.R + 2, c.DType);
        var results = new List<(float[] Dx, float[] Dd, float[] Db)>();
        foreach (Device device in new[] { first, second })
        {
            using Tensor w0 = Tensor.FromArray(device, data.W0, c.DType, c.Out, c.In);
            using Tensor a = Tensor.FromArray(device, data.VeraA, c.DType, c.R, c.MaxIn);
            using Tensor b = Tensor.FromArray(device, data.VeraB, c.DType, c.MaxOut, c.R);
            using Tensor ld = Tensor.FromArray(device, data.LambdaD, c.DType, c.R);
            using Tensor lb = Tensor.FromArray(device, data.LambdaB, c.DType, c.Out);
            using Tensor uTensor = Tensor.FromArray(device, u, DType.F32, c.M, c.R);
            using Tensor dy = Tensor.FromArray(device, data.Dy, c.DType, c.M, c.Out);
            var (dx, dd, db) = Vera.Backward(w0, a, b, ld, lb, uTensor, dy, c.DropoutP, VeraData.Seed);
            using (dx)
            using (dd)
            using (db)
            {
                var values = (dx!.ToArray(), dd!.ToArray(), db!.ToArray());
                Expect.Close($"{device} dx", values.Item1, r.Dx, dxBound);
                Expect.Close($"{device} dλ_d", values.Item2, r.DLambdaD, ddBound);
                Expect.Close($"{device} dλ_b", values.Item3, r.DLambdaB, dbBound);
                results.Add(values);
            }
        }
        Expect.Agree($"{first} vs {second} dx", results[0].Dx, results[1].Dx, dxBound);
        Expect.Agree($"{first} vs {second} dλ_d", results[0].Dd, results[1].Dd, ddBound);
        Expect.Agree($"{first} vs {second} dλ_b", results[0].Db, results[1].Db, dbBound);
    }

    /// <summary>
    /// The chain-rule reference against central differences of the double forward, for the loss
    /// L = Σ dy ⊙ y: y is linear in each of λ_d, λ_b and x, so the central difference is exact up
    /// to double rounding (bound 1e-9·Σ|terms|, h = 2⁻⁸ exact in binary).
    /// </summary>
    [TestCase(3, 7, 5, 3, 11, 9, 0f)]
    [TestCase(4, 6, 9, 4, 6, 12, 0.3f)]
    public void ReferenceGradientsMatchCentralDifferences(int m, int inFeatures, int outFeatures, int r, int maxIn, int maxOut, float p)
    {
        var data = new VeraData(new VeraCase(m, inFeatures, outFeatures, r, maxIn, maxOut, p, DType.F32));
        double[] x = Array.ConvertAll(data.X, v => (double)v);
        double[] ld = Array.ConvertAll(data.LambdaD, v => (double)v);
        double[] lb = Array.ConvertAll(data.LambdaB, v => (double)v);
        double Loss()
        {
            double[] y = data.Forward(x, ld, lb).Y;
            double sum = 0;
            for (int i = 0; i < y.Length; i++) sum += data.Dy[i] * y[i];
            return sum;
        }
        double[] Central(double[] values)
        {
            const double h = 1.0 / 256;
            var grad = new double[values.Length];
            for (int i = 0; i < values.Length; i++)
            {
                double saved = values[i];
                values[i] = saved + h;
                double plus = Loss();
                values[i] = saved - h;
                double minus = Loss();
                values[i] = saved;
                grad[i] = (plus - minus) / (2 * h);
            }
            return grad;
        }
        float[] u = Array.ConvertAll(data.Forward(x, ld, lb).U, v => (float)v);
        // The chain rule on u rounded to fp32 differs from the exact u by 2⁻²⁴ relative: inside the bound.
        var chain = data.Backward(u);
        static double[] Bound(double[] abs) => Array.ConvertAll(abs, a => 1e-9 + 1e-6 * a);
        Expect.Close("dλ_d", Array.ConvertAll(Central(ld), v => (float)v), chain.DLambdaD, Bound(chain.DLambdaDAbs));
        Expect.Close("dλ_b", Array.ConvertAll(Central(lb), v => (float)v), chain.DLambdaB, Bound(chain.DLambdaBAbs));
        Expect.Close("dx", Array.ConvertAll(Central(x), v => (float)v), chain.Dx, Bound(chain.DxAbs));
        Expect.NotVacuous("dλ_d", chain.DLambdaD);
    }

    internal static void MergeUnmerge(DType dtype, Device first, Device second)
    {
        var c = new VeraCase(1, 19, 23, 5, 30, 26, 0f, dtype);
        var data = new VeraData(c);
        var (merged, abs, deltaAbs) = data.Merge(1.0);
        double[] mergedBound = VeraBounds(merged, abs, deltaAbs, c.R + 3, dtype);
        double[] original = Array.ConvertAll(data.W0, v => (double)v);
        // Unmerge subtracts the same delta: the round trip errs by two merges' bounds.
        double[] roundTripBound = Array.ConvertAll(mergedBound, b => 2 * b);
        foreach (Device device in new[] { first, second })
        {
            using Tensor w0 = Tensor.FromArray(device, data.W0, dtype, c.Out, c.In);
            using Tensor a = Tensor.FromArray(device, data.VeraA, dtype, c.R, c.MaxIn);
            using Tensor b = Tensor.FromArray(device, data.VeraB, dtype, c.MaxOut, c.R);
            using Tensor ld = Tensor.FromArray(device, data.LambdaD, dtype, c.R);
            using Tensor lb = Tensor.FromArray(device, data.LambdaB, dtype, c.Out);
            Vera.Merge(w0, a, b, ld, lb);
            Expect.Close($"{device} merged W0", w0.ToArray(), merged, mergedBound);
            Vera.Unmerge(w0, a, b, ld, lb);
            Expect.Close($"{device} unmerged W0", w0.ToArray(), original, roundTripBound);
        }
    }

    [Test]
    public void ProjectionsAreBoundedCenteredAndSeeded_r16_maxIn300_maxOut200()
    {
        const int r = 16, maxIn = 300, maxOut = 200;
        using var p = VeraProjections.Create(Device.Cpu, r, maxIn, maxOut, projectionPrngKey: 7);
        Assert.That(p.VeraA.Shape, Is.EqualTo(new long[] { r, maxIn }));
        Assert.That(p.VeraB.Shape, Is.EqualTo(new long[] { maxOut, r }));
        CheckUniform("vera_A", p.VeraA.ToArray(), Math.Sqrt(6.0 / maxIn));
        CheckUniform("vera_B", p.VeraB.ToArray(), Math.Sqrt(6.0 / r));

        using var same = VeraProjections.Create(Device.Cpu, r, maxIn, maxOut, projectionPrngKey: 7);
        using var other = VeraProjections.Create(Device.Cpu, r, maxIn, maxOut, projectionPrngKey: 8);
        Expect.Exact("same key, vera_A", same.VeraA.ToArray(), p.VeraA.ToArray());
        Expect.Exact("same key, vera_B", same.VeraB.ToArray(), p.VeraB.ToArray());
        Assert.That(other.VeraA.ToArray(), Is.Not.EqualTo(p.VeraA.ToArray()), "another key draws other values");
    }

    /// <summary>
    /// Every value in [-bound, bound); the mean within 5 standard errors of 0 (σ of U(±b) is b/√3);
    /// the extremes reach 95% of the bound (the chance that n ≥ 3200 uniforms all stay inside
    /// ±0.95·b is 0.95ⁿ, below 10⁻⁷⁰), so a smaller bound fails too.
    /// </summary>
    private static void CheckUniform(string what, float[] values, double bound)
    {
        Assert.That(values.All(v => v >= -bound && v < bound), Is.True, $"{what}: a value outside ±{bound}");
        double mean = values.Average(v => (double)v);
        Assert.That(Math.Abs(mean), Is.LessThan(5 * bound / Math.Sqrt(3.0 * values.Length)), $"{what}: mean {mean}");
        Assert.That(values.Max(v => Math.Abs((double)v)), Is.GreaterThan(0.95 * bound), $"{what}: never near the bound");
    }

    [Test]
    public void SharedProjectionsServeTwoLayersOfDifferentShapes_20x12_and_9x30()
    {
        Device device = Device.Simt;
        using var projections = VeraProjections.ForLayers(device, [(20, 12), (9, 30)], r: 4, projectionPrngKey: 3);
        Assert.That((projections.MaxIn, projections.MaxOut, projections.Rank), Is.EqualTo((20, 30, 4)));
        float[] a = projections.VeraA.ToArray(), b = projections.VeraB.ToArray();
        var data = new TestData(11);
        foreach (var (inFeatures, outFeatures) in new[] { (20, 12), (9, 30) })
        {
            const int m = 5;
            float[] w0Values = data.NonZero(outFeatures * inFeatures), xValues = data.NonZero(m * inFeatures);
            float[] lambdaB = data.NonZero(outFeatures);
            using Tensor w0 = Tensor.FromArray(Device.Cpu, w0Values, outFeatures, inFeatures);
            using var layer = new VeraLinear(device, w0, null, projections, dInitial: 0.5f);
            Assert.That(layer.LambdaB.Value.ToArray(), Is.All.EqualTo(0f), "λ_b starts at 0");
            Assert.That(layer.LambdaD.Value.ToArray(), Is.All.EqualTo(0.5f), "λ_d starts at dInitial");
            layer.LambdaB.Value.CopyFrom(lambdaB);
            using Tensor x = Tensor.FromArray(device, xValues, m, inFeatures);
            using Tensor y = layer.Forward(x);

            // y = x W0ᵀ + λ_b ⊙ ((0.5·x A_lᵀ) B_lᵀ) with A_l = vera_A[:, :in] (row stride 20), B_l = vera_B[:out].
            double[] reference = new double[m * outFeatures], abs = new double[m * outFeatures];
            for (int t = 0; t < m; t++)
                for (int j = 0; j < outFeatures; j++)
                {
                    double sum = 0, mag = 0;
                    for (int k = 0; k < inFeatures; k++)
                    {
                        double xk = xValues[t * inFeatures + k], baseTerm = xk * w0Values[j * inFeatures + k];
                        sum += baseTerm;
                        mag += Math.Abs(baseTerm);
                        for (int i = 0; i < 4; i++)
                        {
                            double term = lambdaB[j] * 0.5 * b[j * 4 + i] * a[i * 20 + k] * xk;
                            sum += term;
                            mag += Math.Abs(term);
                        }
                    }
                    reference[t * outFeatures + j] = sum;
                    abs[t * outFeatures + j] = mag;
                }
            Expect.Close($"layer {inFeatures}x{outFeatures} y", y.ToArray(), reference,
                         Tolerance.Bounds(reference, abs, inFeatures + 4 + 2, DType.F32));
            Assert.That(layer.Parameters().Sum(p => p.Value.ElementCount), Is.EqualTo(4 + outFeatures),
                        "trainable values: r + out, the projections not counted");
        }
    }

    /// <summary>
    /// The tape's gradients of mean((y - target)²) against the chain rule in double (dy = 2(y - target)/n
    /// from the device's y), then merge/unmerge leave the layer's output unchanged within the fp32
    /// bound of the merged product (K = in + r + 2 over Σ|x|·(|W0| + |ΔW|) per output).
    /// </summary>
    [Test]
    public void LayerTrainsOnTheTapeAndMergesExactly_M4_in13_out11_r6_maxin17()
    {
        const int m = 4, inF = 13, outF = 11, r = 6, maxIn = 17;
        Device device = Device.Simt;
        using var projections = VeraProjections.Create(device, r, maxIn, outF, projectionPrngKey: 5);
        float[] a = projections.VeraA.ToArray(), b = projections.VeraB.ToArray();
        var data = new TestData(21);
        float[] w0Values = data.NonZero(outF * inF), lambdaB = data.NonZero(outF), xValues = data.NonZero(m * inF);
        float[] targetValues = data.NonZero(m * outF);
        using Tensor w0 = Tensor.FromArray(Device.Cpu, w0Values, outF, inF);
        using var layer = new VeraLinear(device, w0, null, projections);
        layer.LambdaB.Value.CopyFrom(lambdaB);
        float[] lambdaD = layer.LambdaD.Value.ToArray();
        using Tensor x = Tensor.FromArray(device, xValues, m, inF);
        using Tensor target = Tensor.FromArray(device, targetValues, m, outF);
        float[] y;
        using (var tape = new Tape())
        {
            Variable output = layer.Forward(tape, new Variable(x));
            y = output.Value.ToArray();
            tape.MseLoss(output, target);
            tape.Backward();
        }

        double[] u = new double[m * r], uAbs = new double[m * r];
        for (int t = 0; t < m; t++)
            for (int i = 0; i < r; i++)
                for (int k = 0; k < inF; k++)
                {
                    u[t * r + i] += (double)xValues[t * inF + k] * a[i * maxIn + k];
                    uAbs[t * r + i] += Math.Abs((double)xValues[t * inF + k] * a[i * maxIn + k]);
                }
        double[] dd = new double[r], ddAbs = new double[r], db = new double[outF], dbAbs = new double[outF];
        for (int t = 0; t < m; t++)
            for (int j = 0; j < outF; j++)
            {
                double dy = 2.0 * (y[t * outF + j] - targetValues[t * outF + j]) / (m * outF);
                for (int i = 0; i < r; i++)
                {
                    double bji = b[j * r + i];
                    db[j] += dy * lambdaD[i] * u[t * r + i] * bji;
                    dbAbs[j] += Math.Abs(dy * lambdaD[i] * bji) * uAbs[t * r + i];
                    dd[i] += dy * lambdaB[j] * bji * u[t * r + i];
                    ddAbs[i] += Math.Abs(dy * lambdaB[j] * bji) * uAbs[t * r + i];
                }
            }
        Expect.NotVacuous("dλ_b", db);
        Expect.Close("tape dλ_d", layer.LambdaD.Grad!.ToArray(), dd, Tolerance.Bounds(dd, ddAbs, m + outF + inF + 2, DType.F32));
        Expect.Close("tape dλ_b", layer.LambdaB.Grad!.ToArray(), db, Tolerance.Bounds(db, dbAbs, m + r + inF + 2, DType.F32));

        using Tensor before = layer.Forward(x);
        layer.Training = false;
        layer.Merge();
        using Tensor merged = layer.Forward(x);
        layer.Unmerge();
        using Tensor after = layer.Forward(x);
        double[] reference = Array.ConvertAll(before.ToArray(), v => (double)v);
        double[] abs = new double[m * outF];
        for (int t = 0; t < m; t++)
            for (int j = 0; j < outF; j++)
                for (int k = 0; k < inF; k++)
                {
                    double delta = 0;
                    for (int i = 0; i < r; i++) delta += Math.Abs((double)lambdaB[j] * b[j * r + i] * lambdaD[i] * a[i * maxIn + k]);
                    abs[t * outF + j] += Math.Abs(xValues[t * inF + k]) * (Math.Abs(w0Values[j * inF + k]) + delta);
                }
        // Both sides carry their own fp32 error, so twice the one-sided bound.
        double[] bound = Array.ConvertAll(Tolerance.Bounds(reference, abs, inF + r + 2, DType.F32), v => 2 * v);
        Expect.Close("merged forward", merged.ToArray(), reference, bound);
        Expect.Close("unmerged forward", after.ToArray(), reference, bound);
    }

    /// <summary>The GPU path's temporaries (B', A_l's dense copy, du, G) are all freed.</summary>
    [Test]
    public void SimtOpsLeaveNoAllocations_M17_in33_out20_r8_maxin40()
    {
        long before = Device.Simt.LiveAllocations;
        var c = new VeraCase(17, 33, 20, 8, 40, 20, 0.2f, DType.BF16);
        Forward(c, Device.Simt, Device.Simt);
        Backward(c, Device.Simt, Device.Simt);
        MergeUnmerge(DType.F32, Device.Simt, Device.Simt);
        Assert.That(Device.Simt.LiveAllocations, Is.EqualTo(before), "live emulator allocations after disposing everything");
    }

    [Test]
    public void RejectsProjectionsSmallerThanTheLayerAndBadVectors()
    {
        Device device = Device.Cpu;
        using Tensor x = Tensor.Zeros(device, DType.F32, 2, 10);
        using Tensor w0 = Tensor.Zeros(device, DType.F32, 6, 10);
        using Tensor a = Tensor.Zeros(device, DType.F32, 3, 9);
        using Tensor aOk = Tensor.Zeros(device, DType.F32, 3, 10);
        using Tensor b = Tensor.Zeros(device, DType.F32, 5, 3);
        using Tensor bOk = Tensor.Zeros(device, DType.F32, 6, 3);
        using Tensor ld = Tensor.Zeros(device, DType.F32, 3);
        using Tensor ldBad = Tensor.Zeros(device, DType.F32, 4);
        using Tensor lb = Tensor.Zeros(device, DType.F32, 6);
        var e = Assert.Throws<ArgumentException>(() => Vera.Forward(x, w0, null, a, bOk, ld, lb));
        Assert.That(e!.ParamName, Is.EqualTo("veraA"));
        Assert.That(e.Message, Does.Contain("in = 10"));
        e = Assert.Throws<ArgumentException>(() => Vera.Merge(w0, aOk, b, ld, lb));
        Assert.That(e!.ParamName, Is.EqualTo("veraB"));
        Assert.That(e.Message, Does.Contain("out = 6"));
        e = Assert.Throws<ArgumentException>(() => Vera.Forward(x, w0, null, aOk, bOk, ldBad, lb));
        Assert.That(e!.ParamName, Is.EqualTo("lambdaD"));
        Assert.Throws<ArgumentOutOfRangeException>(() => Vera.Forward(x, w0, null, aOk, bOk, ld, lb, dropoutP: 1f));

        using var small = VeraProjections.Create(device, 3, 9, 6);
        e = Assert.Throws<ArgumentException>(() => new VeraLinear(device, w0, null, small));
        Assert.That(e!.ParamName, Is.EqualTo("projections"));
        Assert.Throws<ArgumentOutOfRangeException>(() => VeraProjections.Create(device, 0, 9, 6));
    }
}
