namespace LoraKernels.Tests.Nf4;

/// <summary>
/// Linalg.Svd (reconstruction, orthonormal factors, descending S) and LoftQ (REFERENCE.md §4.3): the
/// error ‖W − (deq(Q) + s·B·A)‖_F falls with every iteration and beats the plain QLoRA start
/// ‖W − deq(quant(W))‖_F (B = 0), with s = 1 (PEFT's exact case) and with compensateScaling.
/// On the CPU (LAPACK) and the emulator (its GPU path, with the CPU's LAPACK as cuSOLVER).
/// </summary>
[TestFixture(DeviceKind.Cpu)]
[TestFixture(DeviceKind.Simt)]
public sealed class LoftQTests(DeviceKind kind)
{
    private Device Device => kind == DeviceKind.Cpu ? Device.Cpu : Device.Simt;

    [TestCase(9, 9)]
    [TestCase(40, 13)]
    [TestCase(13, 40)]
    [TestCase(1, 7)]
    public void SvdReconstructsWithOrthonormalFactors(int m, int n) => CheckSvd(Device, m, n);

    /// <summary>U·S·Vt = A, UᵀU = I, Vt·Vtᵀ = I, S descending and non-negative, A untouched.</summary>
    internal static void CheckSvd(Device device, int m, int n)
    {
        float[] values = new TestData(TestData.SeedFor($"svd{m}x{n}")).NonZero(m * n);
        using Tensor a = Tensor.FromArray(device, values, m, n);
        var (u, s, vt) = Ops.Linalg.Svd(a);
        using (u)
        using (s)
        using (vt)
        {
            int k = Math.Min(m, n);
            Assert.That(u.Shape, Is.EqualTo(new long[] { m, k }));
            Assert.That(s.Shape, Is.EqualTo(new long[] { k }));
            Assert.That(vt.Shape, Is.EqualTo(new long[] { k, n }));
            Assert.That(a.ToArray(), Is.EqualTo(values), "a is not modified");
            float[] uv = u.ToArray(), sv = s.ToArray(), vtv = vt.ToArray();
            for (int i = 0; i < k; i++)
            {
                Assert.That(sv[i], Is.GreaterThanOrEqualTo(0f));
                if (i > 0) Assert.That(sv[i], Is.LessThanOrEqualTo(sv[i - 1]), $"S[{i}] descending");
            }
            // Backward-stable SVD: ‖A − U S Vt‖ and ‖UᵀU − I‖ are O(max(m, n)·2⁻²⁴) relative; bound 64·max(m,n)·2⁻²⁴.
            double tolerance = 64 * Math.Max(m, n) * Tolerance.Fp32Unit;
            for (int i = 0; i < m; i++)
                for (int j = 0; j < n; j++)
                {
                    double sum = 0;
                    for (int l = 0; l < k; l++) sum += (double)uv[i * k + l] * sv[l] * vtv[l * n + j];
                    Assert.That(sum, Is.EqualTo(values[i * n + j]).Within(tolerance * sv[0]), $"A[{i},{j}]");
                }
            for (int p = 0; p < k; p++)
                for (int q = 0; q < k; q++)
                {
                    double uu = 0, vv = 0;
                    for (int i = 0; i < m; i++) uu += (double)uv[i * k + p] * uv[i * k + q];
                    for (int j = 0; j < n; j++) vv += (double)vtv[p * n + j] * vtv[q * n + j];
                    Assert.That(uu, Is.EqualTo(p == q ? 1.0 : 0.0).Within(tolerance), $"UᵀU[{p},{q}]");
                    Assert.That(vv, Is.EqualTo(p == q ? 1.0 : 0.0).Within(tolerance), $"Vt·Vtᵀ[{p},{q}]");
                }
        }
    }

    [TestCase(1f, false)]
    [TestCase(2f, true)]
    public void ErrorFallsWithEveryIterationAndBeatsPlainQlora(float scale, bool compensate)
    {
        const int outFeatures = 48, inFeatures = 64, r = 8, blockSize = 32;
        // A low-rank-plus-noise weight, as trained layers are: LoftQ's adapter captures the part 4 bits miss.
        float[] values = Nf4FormatTests.Gaussian(outFeatures * inFeatures, 21);
        float[] left = Nf4FormatTests.Gaussian(outFeatures * 2, 22), right = Nf4FormatTests.Gaussian(2 * inFeatures, 23);
        for (int i = 0; i < outFeatures; i++)
            for (int j = 0; j < inFeatures; j++)
                values[i * inFeatures + j] = 0.1f * values[i * inFeatures + j] + left[i * 2] * right[j] + left[i * 2 + 1] * right[inFeatures + j];
        using Tensor w = Tensor.FromArray(Device, values, outFeatures, inFeatures);

        using QuantizedWeight plain = Ops.Nf4.Quantize(w, QuantType.Nf4, blockSize);
        double previous = LoraKernels.Variants.LoftQ.ApproximationError(w, plain, null, null, scale);
        double plainError = previous;
        Assert.That(plainError, Is.GreaterThan(0));
        for (int iterations = 1; iterations <= 3; iterations++)
        {
            var (q, a, b) = LoraKernels.Variants.LoftQ.Initialize(w, r, iterations, QuantType.Nf4, blockSize, scale, compensate);
            using (q)
            using (a)
            using (b)
            {
                Assert.That(a.Shape, Is.EqualTo(new long[] { r, inFeatures }));
                Assert.That(b.Shape, Is.EqualTo(new long[] { outFeatures, r }));
                double error = LoraKernels.Variants.LoftQ.ApproximationError(w, q, a, b, compensate ? scale : 1f);
                TestContext.Out.WriteLine($"T = {iterations}: ‖W − (deq(Q) + sBA)‖ = {error:F5} (plain QLoRA {plainError:F5})");
                Assert.That(error, Is.LessThan(iterations == 1 ? 0.9 * plainError : previous), $"iteration {iterations}");
                previous = error;
            }
        }
    }
}
