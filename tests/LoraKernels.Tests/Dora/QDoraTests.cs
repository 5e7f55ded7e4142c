using LoraKernels.Autograd;
using LoraKernels.Layers;
using LoraKernels.Variants;

namespace LoraKernels.Tests.Dora;

/// <summary>
/// QDoRA (DoRA over an NF4 base) on each host device: the quantized Ops.Dora overloads and the
/// quantized DoraLinear against <see cref="DoraReference"/> run in double on deq(W) (read back from
/// Ops.Nf4.Dequantize, so the test checks the DoRA composition, not the quantizer, which Nf4/ tests),
/// gradients by central finite differences with the norm detached, Cpu-vs-Simt agreement, the
/// catalogue's "qdora", and what is refused (merge, BF16).
/// Tolerances: <see cref="Tolerance.Bounds"/> with K the longest fp32 chain (F32 only: QDoRA's norm
/// reads A·deq(W)ᵀ in fp32); the norm's is <see cref="DoraReference.NormBounds"/>.
/// </summary>
[TestFixture(DeviceKind.Cpu)]
[TestFixture(DeviceKind.Simt)]
public sealed class QDoraTests(DeviceKind kind)
{
    private Device Device => kind == DeviceKind.Cpu ? Device.Cpu : Device.Simt;

    [TestCase(1, 1, 1, 1)]
    [TestCase(7, 33, 13, 4)]
    [TestCase(20, 67, 70, 8)]
    public void NormForwardAndBackwardMatchReferenceOnDequantizedWeight(int m, int inFeatures, int outFeatures, int r)
    {
        var data = new TestData(TestData.SeedFor($"qdora-step{m}x{inFeatures}x{outFeatures}x{r}"));
        const float scale = 0.75f;
        float[] x = data.NonZero(m * inFeatures), w0 = data.NonZero(outFeatures * inFeatures);
        float[] bias = data.NonZero(outFeatures), a = data.NonZero(r * inFeatures);
        float[] b = data.NonZero(outFeatures * r), dy = data.NonZero(m * outFeatures);
        float[] magnitude = Array.ConvertAll(data.NonZero(outFeatures, 1f), v => Math.Abs(v) + 0.5f);

        using Tensor w0Dense = Tensor.FromArray(Device, w0, outFeatures, inFeatures);
        using QuantizedWeight q = Ops.Nf4.Quantize(w0Dense, QuantType.Nf4, blockSize: 64, doubleQuant: true);
        float[] wq;
        using (Tensor deq = Ops.Nf4.Dequantize(q)) wq = deq.ToArray();
        using Tensor xT = Tensor.FromArray(Device, x, m, inFeatures), biasT = Tensor.FromArray(Device, bias, outFeatures);
        using Tensor aT = Tensor.FromArray(Device, a, r, inFeatures), bT = Tensor.FromArray(Device, b, outFeatures, r);
        using Tensor dyT = Tensor.FromArray(Device, dy, m, outFeatures), mT = Tensor.FromArray(Device, magnitude, outFeatures);

        // ‖deq(W)‖²_row once, then the norm from A·deq(W)ᵀ, against the materialised double norm of deq(W) + s·B·A.
        using Tensor sqnorm = Ops.Dora.RowSquaredNorm(q);
        using Tensor nT = Ops.Dora.WeightNorm(q, aT, bT, scale, sqnorm);
        var (normRef, normMagnitude) = DoraReference.WeightNorm(outFeatures, inFeatures, r, wq, a, b, scale);
        float[] norm = nT.ToArray();
        Expect.NotVacuous("norm", normRef);
        Expect.Close("norm", norm, normRef, DoraReference.NormBounds(normRef, normMagnitude, r));

        var reference = DoraReference.Run(m, inFeatures, outFeatures, r, x, wq, bias, a, b, scale, magnitude, norm, dy);
        var abs = DoraReference.Run(m, inFeatures, outFeatures, r, x, wq, bias, a, b, scale, magnitude, norm, dy, abs: true);
        var (y, u, z) = Ops.Dora.Forward(xT, q, biasT, aT, bT, mT, nT, scale);
        using (y)
        using (u)
        using (z)
        {
            Expect.NotVacuous("y", reference.Y);
            Expect.Close("u", u.ToArray(), reference.U, Tolerance.Bounds(reference.U, abs.U, inFeatures, DType.F32));
            Expect.Close("z", z.ToArray(), reference.Z, Tolerance.Bounds(reference.Z, abs.Z, inFeatures + r + 1, DType.F32));
            Expect.Close("y", y.ToArray(), reference.Y, Tolerance.Bounds(reference.Y, abs.Y, inFeatures + r + 3, DType.F32));

            using (Tensor yOnly = Ops.Dora.Infer(xT, q, biasT, aT, bT, mT, nT, scale))
                Expect.Exact("inference y (no u or z kept)", yOnly.ToArray(), y.ToArray());

            // The backward from the reference's own z and u (as fp32), so it is tested alone.
            using Tensor zIn = Tensor.FromArray(Device, Array.ConvertAll(reference.Z, v => (float)v), m, outFeatures);
            using Tensor uIn = Tensor.FromArray(Device, Array.ConvertAll(reference.U, v => (float)v), m, r);
            var (dx, dA, dB, dm) = Ops.Dora.Backward(xT, q, aT, bT, mT, nT, uIn, zIn, dyT, scale);
            using (dx)
            using (dA)
            using (dB)
            using (dm)
            {
                Expect.NotVacuous("dx", reference.Dx);
                Expect.Close("dm", dm!.ToArray(), reference.DM, Tolerance.Bounds(reference.DM, abs.DM, m + 2, DType.F32));
                Expect.Close("dx", dx!.ToArray(), reference.Dx, Tolerance.Bounds(reference.Dx, abs.Dx, outFeatures + r + 2, DType.F32));
                Expect.Close("dA", dA!.ToArray(), reference.DA, Tolerance.Bounds(reference.DA, abs.DA, m + outFeatures + 2, DType.F32));
                Expect.Close("dB", dB!.ToArray(), reference.DB, Tolerance.Bounds(reference.DB, abs.DB, m + inFeatures + 2, DType.F32));
            }

            var (noDx, noDA, noDB, dmOnly) = Ops.Dora.Backward(xT, q, aT, bT, mT, nT, uIn, zIn, dyT, scale,
                                                               needDx: false, needDA: false, needDB: false);
            using (dmOnly)
            {
                Assert.That((noDx, noDA, noDB), Is.EqualTo(((Tensor?)null, (Tensor?)null, (Tensor?)null)), "only dm was requested");
                Expect.Close("dm alone", dmOnly!.ToArray(), reference.DM, Tolerance.Bounds(reference.DM, abs.DM, m + 2, DType.F32));
            }
        }
    }

    [TestCase(7, 33, 13, 4)]
    [TestCase(1, 20, 9, 2)]
    public void LayerGradientsMatchFiniteDifferencesWithTheNormDetached(int m, int inFeatures, int outFeatures, int r)
    {
        var data = new TestData(TestData.SeedFor($"qdora-grad{m}x{inFeatures}x{outFeatures}x{r}"));
        float[] w0 = data.NonZero(outFeatures * inFeatures, 1f / MathF.Sqrt(inFeatures));
        float[] biasValues = data.NonZero(outFeatures, 0.5f);
        float[] xValues = data.NonZero(m * inFeatures);
        float[] target = data.NonZero(m * outFeatures);
        float[] bValues = data.NonZero(outFeatures * r, 1f / MathF.Sqrt(r));
        float[] mValues = Array.ConvertAll(data.NonZero(outFeatures), v => Math.Abs(v) + 0.5f);

        using Tensor w0Tensor = Tensor.FromArray(Device, w0, outFeatures, inFeatures);
        using Tensor biasTensor = Tensor.FromArray(Device, biasValues, outFeatures);
        using var layer = new DoraLinear(Device, Ops.Nf4.Quantize(w0Tensor), biasTensor, r, alpha: 2f * r, seed: 5);
        float[] wq;
        using (Tensor deq = Ops.Nf4.Dequantize(layer.QuantizedW0!)) wq = deq.ToArray();
        layer.B.Value.CopyFrom(bValues);
        layer.Magnitude.Value.CopyFrom(mValues);
        float[] aValues = layer.A.Value.ToArray();
        double scale = layer.Scale;

        using Tensor x = Tensor.FromArray(Device, xValues, m, inFeatures);
        using Tensor targetTensor = Tensor.FromArray(Device, target, m, outFeatures);
        using var tape = new Tape();
        var input = new Variable(x, requiresGrad: true);
        float loss = tape.MseLoss(layer.Forward(tape, input), targetTensor);
        tape.Backward();

        double[] xd = Array.ConvertAll(xValues, v => (double)v), ad = Array.ConvertAll(aValues, v => (double)v);
        double[] bd = Array.ConvertAll(bValues, v => (double)v), md = Array.ConvertAll(mValues, v => (double)v);
        // The norm is detached: fixed at the base point's A and B while any parameter moves.
        var (norm0, _) = DoraReference.WeightNorm(outFeatures, inFeatures, r, wq, aValues, bValues, scale);

        double Loss()
        {
            double sum = 0;
            for (int row = 0; row < m; row++)
            {
                var u = new double[r];
                for (int j = 0; j < r; j++)
                    for (int k = 0; k < inFeatures; k++) u[j] += xd[row * inFeatures + k] * ad[j * inFeatures + k];
                for (int o = 0; o < outFeatures; o++)
                {
                    double zo = 0;
                    for (int k = 0; k < inFeatures; k++) zo += xd[row * inFeatures + k] * wq[o * inFeatures + k];
                    for (int j = 0; j < r; j++) zo += scale * u[j] * bd[o * r + j];
                    double d = md[o] / norm0[o] * zo + biasValues[o] - target[row * outFeatures + o];
                    sum += d * d;
                }
            }
            return sum / (m * outFeatures);
        }

        double exactLoss = Loss();
        Assert.That(loss, Is.EqualTo(exactLoss).Within(1e-5 * Math.Abs(exactLoss) + 1e-6), "loss");

        // As DoraTests: the loss is quadratic in each single parameter, so the central difference in double
        // is exact up to O(ε_double·L/h); the bound is the fp32 kernels' own, 1e-6 + 2K·2⁻²⁴·8·max|g|.
        void Check(string what, double[] parameter, float[] gradient, int reduction)
        {
            const double h = 1e-4;
            var numeric = new double[parameter.Length];
            for (int i = 0; i < parameter.Length; i++)
            {
                double saved = parameter[i];
                parameter[i] = saved + h;
                double plus = Loss();
                parameter[i] = saved - h;
                double minus = Loss();
                parameter[i] = saved;
                numeric[i] = (plus - minus) / (2 * h);
            }
            Expect.NotVacuous($"{what} numeric", numeric);
            double bound = 1e-6 + 2 * reduction * Tolerance.Fp32Unit * numeric.Max(Math.Abs) * 8;
            Expect.Close(what, gradient, numeric, Enumerable.Repeat(bound, numeric.Length).ToArray());
        }

        int chain = 2 * (2 * inFeatures + outFeatures + r + m);
        Check("dx", xd, input.Grad!.ToArray(), chain);
        Check("dA", ad, layer.A.Grad!.ToArray(), chain);
        Check("dB", bd, layer.B.Grad!.ToArray(), chain);
        Check("dm", md, layer.Magnitude.Grad!.ToArray(), chain);
    }

    /// <summary>
    /// QDoRA's norm on rows that cancel through A's row space: A_0 = deq(W)_0 and A_1 = deq(W)_2, B_0 = (−1/s, 0, 0)
    /// cancels row 0 exactly and B_2 = (0, −(1 + 2⁻¹²)/s, 0) leaves n_2 = 2⁻¹²·‖deq(W)_2‖ (s a power of two, so
    /// s·B·A is deq(W)'s rows scaled exactly). Row 2 and the random rows within <see cref="DoraReference.NormBounds"/>
    /// of the double norm of deq(W), row 2 sent to the direct path (on the GPU backend from a dequantized
    /// temporary, freed in the same call); with row 0's exact cancellation the op refuses, naming row 0.
    /// in = 96 is not a multiple of the blocksize (64): blocks straddle rows.
    /// </summary>
    [Test]
    public void NormIsAccurateOnCancellingRows_out9_in96_r3()
    {
        const int outFeatures = 9, inFeatures = 96, r = 3;
        const float scale = 2f;
        var data = new TestData(TestData.SeedFor("qdora-cancel"));
        using Tensor w0Dense = Tensor.FromArray(Device, data.NonZero(outFeatures * inFeatures), outFeatures, inFeatures);
        using QuantizedWeight q = Ops.Nf4.Quantize(w0Dense, QuantType.Nf4, blockSize: 64, doubleQuant: true);
        float[] wq;
        using (Tensor deq = Ops.Nf4.Dequantize(q)) wq = deq.ToArray();
        float[] a = data.NonZero(r * inFeatures), b = data.NonZero(outFeatures * r);
        Array.Copy(wq, 0, a, 0, inFeatures);
        Array.Copy(wq, 2 * inFeatures, a, inFeatures, inFeatures);
        b[6] = b[8] = 0f;
        b[7] = -(1f + MathF.ScaleB(1f, -12)) / scale;
        using Tensor sqnorm = Ops.Dora.RowSquaredNorm(q);
        using Tensor aT = Tensor.FromArray(Device, a, r, inFeatures), bT = Tensor.FromArray(Device, b, outFeatures, r);
        long before = Device.LiveAllocations;
        using (Tensor norm = Ops.Dora.WeightNorm(q, aT, bT, scale, sqnorm, out var report))
        {
            var (reference, magnitude) = DoraReference.WeightNorm(outFeatures, inFeatures, r, wq, a, b, scale);
            Expect.NotVacuous("norm", reference);
            Expect.Close("norm", norm.ToArray(), reference, DoraReference.NormBounds(reference, magnitude, r));
            Assert.That(reference[2] / Math.Sqrt(Enumerable.Range(0, inFeatures).Sum(k => (double)wq[2 * inFeatures + k] * wq[2 * inFeatures + k])),
                        Is.EqualTo(Math.ScaleB(1.0, -12)).Within(1e-9), "row 2 cancels to 2⁻¹²");
            Assert.That(report.RecomputedRows, Is.GreaterThanOrEqualTo(1), "row 2 takes the direct path");
        }
        Assert.That(Device.LiveAllocations, Is.EqualTo(before), "the norm's temporaries are freed");
        bT.CopyFrom(b.Select((v, i) => i == 0 ? -1f / scale : i is 1 or 2 ? 0f : v).ToArray());
        var e = Assert.Throws<ArithmeticException>(() => Ops.Dora.WeightNorm(q, aT, bT, scale, sqnorm))!;
        Assert.That(e.Message, Does.Contain("1 row(s) (first: 0)"));
        Assert.That(Device.LiveAllocations, Is.EqualTo(before), "nothing left allocated by the refusal");
    }

    [Test]
    public void NewLayerIsTheQuantizedBaseLayer_m5_in37_out11_r3()
    {
        const int m = 5, inFeatures = 37, outFeatures = 11, r = 3;
        var data = new TestData(TestData.SeedFor("qdora-new-layer"));
        float[] w0 = data.NonZero(outFeatures * inFeatures), bias = data.NonZero(outFeatures), xValues = data.NonZero(m * inFeatures);
        using Tensor w0Tensor = Tensor.FromArray(Device, w0, outFeatures, inFeatures);
        using Tensor biasTensor = Tensor.FromArray(Device, bias, outFeatures);
        QuantizedWeight q = Ops.Nf4.Quantize(w0Tensor);
        float[] wq;
        using (Tensor deq = Ops.Nf4.Dequantize(q)) wq = deq.ToArray();
        using (var layer = new DoraLinear(Device, q, biasTensor, r, alpha: 6f, seed: 3))
        {
            Assert.That(layer.IsQuantized, Is.True);
            Assert.That(() => layer.W0, Throws.InvalidOperationException.With.Message.Contains("QuantizedW0"));
            // m0 = ‖deq(W)‖_row, so with B = 0 the layer is the quantized base layer: y = x deq(W)ᵀ + bias.
            var (norm0, _) = DoraReference.WeightNorm(outFeatures, inFeatures, 0, wq, [], [], 0);
            Expect.Close("m0", layer.Magnitude.Value.ToArray(), norm0,
                         Array.ConvertAll(norm0, n => Tolerance.Atol + 2 * inFeatures * Tolerance.Fp32Unit * n));
            float[] ones = Enumerable.Repeat(1f, outFeatures).ToArray();
            var baseRef = DoraReference.Run(m, inFeatures, outFeatures, 1, xValues, wq, bias, new float[inFeatures], new float[outFeatures], 0,
                                            ones, ones, new float[m * outFeatures]);
            var baseAbs = DoraReference.Run(m, inFeatures, outFeatures, 1, xValues, wq, bias, new float[inFeatures], new float[outFeatures], 0,
                                            ones, ones, new float[m * outFeatures], abs: true);
            using Tensor x = Tensor.FromArray(Device, xValues, m, inFeatures);
            using Tensor y = layer.Forward(x);
            // g = m0/n = 1 up to the two norms' fp32 roundings (one more K-term per element).
            Expect.Close("y of a new layer", y.ToArray(), baseRef.Y, Tolerance.Bounds(baseRef.Y, baseAbs.Y, 3 * inFeatures + 4, DType.F32));

            Assert.That(() => layer.Merge(), Throws.TypeOf<NotSupportedException>().With.Message.Contains("quantized"));
            Assert.That(layer.Merged, Is.False);
        }
        Assert.That(q.IsDisposed, Is.True, "the layer owns its quantized base");
    }

    [Test]
    public void CpuAndSimtAgree_m9_in70_out31_r5() => CpuAndDeviceAgree(Device.Simt);

    /// <summary>A QDoRA layer's training step on the CPU and on <paramref name="other"/> (the emulator, or a GPU) agree.</summary>
    internal static void CpuAndDeviceAgree(Device other)
    {
        const int m = 9, inFeatures = 70, outFeatures = 31, r = 5;
        var data = new TestData(TestData.SeedFor("qdora-agree"));
        float[] w0 = data.NonZero(outFeatures * inFeatures), bias = data.NonZero(outFeatures);
        float[] xValues = data.NonZero(m * inFeatures), bValues = data.NonZero(outFeatures * r), dyValues = data.NonZero(m * outFeatures);
        var results = new List<float[][]>();
        double[]? yAbs = null, dxAbs = null;
        // dy is the MSE loss's gradient (target = dyValues), so dA, dB and dm are bounded relative to their own size.
        foreach (Device device in new[] { Device.Cpu, other })
        {
            using Tensor w0Tensor = Tensor.FromArray(device, w0, outFeatures, inFeatures);
            using Tensor biasTensor = Tensor.FromArray(device, bias, outFeatures);
            using var layer = new DoraLinear(device, Ops.Nf4.Quantize(w0Tensor), biasTensor, r, alpha: 10f, seed: 11);
            layer.B.Value.CopyFrom(bValues);
            using Tensor x = Tensor.FromArray(device, xValues, m, inFeatures);
            using var tape = new Tape();
            var input = new Variable(x, requiresGrad: true);
            Variable y = layer.Forward(tape, input);
            using Tensor target = Tensor.FromArray(device, dyValues, m, outFeatures);
            tape.MseLoss(y, target);
            tape.Backward();
            results.Add([y.Value.ToArray(), input.Grad!.ToArray(), layer.A.Grad!.ToArray(), layer.B.Grad!.ToArray(),
                         layer.Magnitude.Grad!.ToArray()]);
            if (yAbs is null)
            {
                // The MSE loss's dy = 2(y - target)/(M·out), from this device's y, for the bounds' Σ|terms|.
                float[] yValues = y.Value.ToArray();
                float[] dyLoss = new float[yValues.Length];
                for (int i = 0; i < dyLoss.Length; i++) dyLoss[i] = 2f * (yValues[i] - dyValues[i]) / (m * outFeatures);
                using Tensor deq = Ops.Nf4.Dequantize(layer.QuantizedW0!);
                using Tensor norm = layer.WeightNorm();
                var abs = DoraReference.Run(m, inFeatures, outFeatures, r, xValues, deq.ToArray(), bias, layer.A.Value.ToArray(), bValues,
                                            layer.Scale, layer.Magnitude.Value.ToArray(), norm.ToArray(), dyLoss, abs: true);
                (yAbs, dxAbs) = (abs.Y, abs.Dx);
            }
        }
        // Each device is within Tolerance.Bounds of the exact result; Agree allows the sum of both bounds.
        double[] Bound(double[] absTerms, int chain) => Array.ConvertAll(absTerms, v => Tolerance.Atol + Tolerance.Factor * chain * Tolerance.Fp32Unit * v);
        Expect.Agree("y", results[0][0], results[1][0], Bound(yAbs!, 3 * inFeatures + r + 4));
        Expect.Agree("dx", results[0][1], results[1][1], Bound(dxAbs!, 3 * inFeatures + outFeatures + r + 4));
        for (int i = 2; i < 5; i++)
            Expect.Agree(new[] { "", "", "dA", "dB", "dm" }[i], results[0][i], results[1][i],
                         Array.ConvertAll(results[0][i], v => Tolerance.Atol + 4 * (m + inFeatures + outFeatures) * Tolerance.Fp32Unit * (Math.Abs(v) + 1)));
    }

    [Test]
    public void CatalogueCreatesQDora_out24_in16_r4()
    {
        var data = new TestData(TestData.SeedFor("qdora-catalogue"));
        using Tensor w0 = Tensor.FromArray(Device.Cpu, data.NonZero(24 * 16, 0.25f), 24, 16);
        using IAdapterLayer layer = Catalogue.Create("qdora", Device, w0, null, new AdapterOptions { Rank = 4, Alpha = 8f, Seed = 2 });
        Assert.That(layer, Is.TypeOf<DoraLinear>());
        Assert.That(((DoraLinear)layer).IsQuantized, Is.True);
        Assert.That(((DoraLinear)layer).QuantizedW0!.QuantType, Is.EqualTo(QuantType.Nf4));
        Assert.That(() => Catalogue.Create("qdora", Device, w0, null, new AdapterOptions { DType = DType.BF16 }),
                    Throws.TypeOf<NotSupportedException>().With.Message.Contains("F32"));
    }

    [Test]
    public void Bf16BaseAndMismatchedDeviceAreRejected()
    {
        using Tensor w0 = Tensor.FromArray(Device, new TestData(4).NonZero(64), DType.BF16, 8, 8);
        QuantizedWeight q = Ops.Nf4.Quantize(w0);
        Assert.That(() => new DoraLinear(Device, q, null, 2, 4f), Throws.TypeOf<NotSupportedException>().With.Message.Contains("F32"));
        Assert.That(q.IsDisposed, Is.True, "a failed construction disposes the weight it was given");
        Device other = kind == DeviceKind.Cpu ? Device.Simt : Device.Cpu;
        using Tensor w0f = Tensor.FromArray(other, new TestData(5).NonZero(64), 8, 8);
        QuantizedWeight elsewhere = Ops.Nf4.Quantize(w0f);
        Assert.That(() => new DoraLinear(Device, elsewhere, null, 2, 4f), Throws.ArgumentException.With.Message.Contains("device"));
        Assert.That(elsewhere.IsDisposed, Is.True);
    }
}
