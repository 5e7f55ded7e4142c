using LoraKernels.Autograd;
using LoraKernels.Layers;

namespace LoraKernels.Tests.Dora;

/// <summary>
/// Ops.Dora and DoraLinear on each host device against <see cref="DoraReference"/>: the weight norm
/// against the materialised double norm (random and near-cancelling rows, F32 and BF16), the forward
/// and backward, gradients of a loss through the layer by central finite differences (norm
/// detached in the reference too), merge/unmerge, and bad input.
/// Tolerances: <see cref="Tolerance.Bounds"/> with K the longest fp32 chain, plus for BF16 one
/// 2⁻⁸·Σ|terms| for the intermediate the emulated GPU path stores in bf16 (z before the column
/// scale, dz before the LoRA backward) where the CPU path keeps fp32; the norm's formula is
/// <see cref="DoraReference.NormBounds"/>.
/// </summary>
[TestFixture(DeviceKind.Cpu)]
[TestFixture(DeviceKind.Simt)]
public sealed class DoraTests(DeviceKind kind)
{
    private Device Device => kind == DeviceKind.Cpu ? Device.Cpu : Device.Simt;

    internal static double[] Bounds(double[] reference, double[] abs, int chain, DType dtype, bool bf16Intermediate)
    {
        double[] bounds = Tolerance.Bounds(reference, abs, chain, dtype);
        if (dtype == DType.BF16 && bf16Intermediate)
            for (int i = 0; i < bounds.Length; i++) bounds[i] += Tolerance.Bf16Rounding * abs[i];
        return bounds;
    }

    [TestCase(DType.F32, 1, 1, 1)]
    [TestCase(DType.F32, 13, 67, 5)]
    [TestCase(DType.F32, 40, 130, 16)]
    [TestCase(DType.BF16, 13, 67, 5)]
    [TestCase(DType.BF16, 40, 130, 16)]
    public void WeightNormMatchesMaterialisedNorm(DType dtype, int outFeatures, int inFeatures, int r)
    {
        var data = new TestData(TestData.SeedFor($"dora-norm{dtype}{outFeatures}x{inFeatures}x{r}"));
        const float scale = 1.25f;
        float[] a = data.NonZero(r * inFeatures, 1f, dtype), b = data.NonZero(outFeatures * r, 1f, dtype);
        float[] w0 = data.NonZero(outFeatures * inFeatures, 1f);
        float[] noise = data.NonZero(outFeatures * inFeatures, 1f);
        foreach (bool cancel in new[] { false, true })
        {
            // Rows 0 (mod 3): W0 = -s·B·A·(1 + δ·noise), δ = 0 on row 0 (cancels up to W0's rounding), 1 % elsewhere.
            if (cancel)
                for (int i = 0; i < outFeatures; i += 3)
                    for (int k = 0; k < inFeatures; k++)
                    {
                        double ba = 0;
                        for (int t = 0; t < r; t++) ba += (double)b[i * r + t] * a[t * inFeatures + k];
                        w0[i * inFeatures + k] = (float)(-scale * ba * (1 + (i == 0 ? 0 : 0.01) * noise[i * inFeatures + k]));
                    }
            float[] w0Rounded = Reference.RoundTo(dtype, w0);
            using Tensor w0Tensor = Tensor.FromArray(Device, w0Rounded, dtype, outFeatures, inFeatures);
            using Tensor aTensor = Tensor.FromArray(Device, a, dtype, r, inFeatures);
            using Tensor bTensor = Tensor.FromArray(Device, b, dtype, outFeatures, r);
            using Tensor norm = Ops.Dora.WeightNorm(w0Tensor, aTensor, bTensor, scale);
            using Tensor sqnorm = Ops.Dora.RowSquaredNorm(w0Tensor);
            using Tensor normFromCache = Ops.Dora.WeightNorm(w0Tensor, aTensor, bTensor, scale, sqnorm);

            var (reference, magnitude) = DoraReference.WeightNorm(outFeatures, inFeatures, r, w0Rounded, a, b, scale);
            Assert.That(norm.DType, Is.EqualTo(DType.F32));
            float[] got = norm.ToArray();
            Assert.That(got.All(v => float.IsFinite(v) && v > 0f), Is.True, "norms are finite and positive");
            Expect.Close($"norm{(cancel ? " (cancelling rows)" : "")}", got, reference, DoraReference.NormBounds(reference, magnitude, r));
            Expect.Exact("norm from the cached ‖W0‖²", normFromCache.ToArray(), got);
            if (!cancel) Expect.NotVacuous("norm", reference);
        }
    }

    /// <summary>
    /// Issue 14: rows 0 (mod 2) of a 10 x 1030 W0 cancel s·B·A to <paramref name="depth"/> of ‖W0_i‖ (see
    /// <see cref="DoraReference.CancellingRows"/>; r = 16 and 5). Every row's norm is within
    /// <see cref="DoraReference.NormBounds"/> of the double norm of the same rounded inputs, the cancelling
    /// rows within the issue's bar (relative error ≤ 1e-3) and sent to the direct path, and the forward on
    /// these norms (m = ‖W0_i‖, as a new layer has) stays finite. Exactly cancelling rows are refused
    /// (m/n undefined), naming them.
    /// </summary>
    [TestCase(DType.F32, 1e-3)]
    [TestCase(DType.F32, 1e-5)]
    [TestCase(DType.F32, 1e-7)]
    [TestCase(DType.F32, 0.0)]
    [TestCase(DType.BF16, 1e-3)]
    [TestCase(DType.BF16, 1e-5)]
    [TestCase(DType.BF16, 1e-7)]
    [TestCase(DType.BF16, 0.0)]
    public void WeightNormIsAccurateOnCancellingRows(DType dtype, double depth)
    {
        const int outFeatures = 10, inFeatures = 1030, m = 3;
        foreach (int r in new[] { 16, 5 })
            foreach (bool structured in dtype == DType.F32 ? new[] { false, true } : new[] { true })
            {
                string name = $"{dtype} depth {depth} r {r} {(structured ? "structured" : "generic")}";
                var (w0, a, b, scale) = DoraReference.CancellingRows(dtype, depth, outFeatures, inFeatures, r, structured);
                using Tensor w0T = Tensor.FromArray(Device, w0, dtype, outFeatures, inFeatures);
                using Tensor aT = Tensor.FromArray(Device, a, dtype, r, inFeatures), bT = Tensor.FromArray(Device, b, dtype, outFeatures, r);
                var (reference, magnitude) = DoraReference.WeightNorm(outFeatures, inFeatures, r, w0, a, b, scale);
                if (depth == 0 && structured)
                {
                    Assert.That(Enumerable.Range(0, outFeatures).Where(i => reference[i] == 0), Is.EqualTo(new[] { 0, 2, 4, 6, 8 }), name);
                    long before = Device.LiveAllocations;
                    var e = Assert.Throws<ArithmeticException>(() => Ops.Dora.WeightNorm(w0T, aT, bT, scale))!;
                    Assert.That(e.Message, Does.Contain("5 row(s) (first: 0, 2, 4, 6, 8)"), name);
                    Assert.That(Device.LiveAllocations, Is.EqualTo(before), $"{name}: nothing left allocated by the refusal");
                    continue;
                }
                using Tensor norm = Ops.Dora.WeightNorm(w0T, aT, bT, scale, null, out var report);
                float[] got = norm.ToArray();
                Expect.Close($"norm ({name})", got, reference, DoraReference.NormBounds(reference, magnitude, r));
                double worst = 0, reached = 0;
                for (int i = 0; i < outFeatures; i += 2)
                {
                    Assert.That(reference[i], Is.GreaterThan(0), $"{name}: row {i}");
                    worst = Math.Max(worst, Math.Abs(got[i] - reference[i]) / reference[i]);
                    double w2 = 0;
                    for (int k = 0; k < inFeatures; k++) w2 += (double)w0[i * inFeatures + k] * w0[i * inFeatures + k];
                    reached = Math.Max(reached, reference[i] / Math.Sqrt(w2));
                }
                Assert.That(worst, Is.LessThanOrEqualTo(1e-3), $"{name}: the issue's bar");
                Assert.That(reached, Is.LessThanOrEqualTo(depth > 0 ? (structured ? 1.01 * depth : depth + 1e-7) : 1e-7), $"{name}: depth reached");
                Assert.That(report.RecomputedRows, Is.GreaterThanOrEqualTo(outFeatures / 2), $"{name}: the cancelling rows take the direct path");
                TestContext.Out.WriteLine($"{kind} {name}: worst relative error {worst:E2} on rows with n/‖W0_i‖ <= {reached:E2}");

                // The forward with m = ‖W0_i‖: g = m/n is large on the cancelling rows, never infinite.
                var data = new TestData(TestData.SeedFor(name));
                float[] mValues = Reference.RoundTo(dtype, Enumerable.Range(0, outFeatures).Select(i =>
                    (float)Math.Sqrt(Enumerable.Range(0, inFeatures).Sum(k => (double)w0[i * inFeatures + k] * w0[i * inFeatures + k]))).ToArray());
                using Tensor mT = Tensor.FromArray(Device, mValues, dtype, outFeatures);
                using Tensor x = Tensor.FromArray(Device, data.NonZero(m * inFeatures, 1f, dtype), dtype, m, inFeatures);
                using (Tensor y = Ops.Dora.Infer(x, w0T, null, aT, bT, mT, norm, scale))
                    Assert.That(y.ToArray().All(float.IsFinite), Is.True, $"{name}: the forward output is finite");
            }
    }

    /// <summary>
    /// Merge and unmerge on rows cancelling to 1e-5 (generic, F32; structured, BF16), where m/n ≈ 1e5 would
    /// amplify an fp32-formed W0 + s·B·A's rounding (~2⁻²⁴·|W0|) to a relative error of order 1. Merged
    /// element = g·v_k (g = m/n, v_k = w_k + s·(B·A)_k) formed in double: |W − g·v| ≤ εout·|g·v| + g·(r + 2)·2⁻⁵¹·μ_k
    /// (μ_k = |w_k| + s·Σ|B||A|; εout = 2⁻²⁴ for F32, 2⁻⁸ for BF16, the store's rounding). The merged row's norm
    /// is then |m_i| within the norm's τ. Unmerged: W·(n/m) carries W's rounding scaled back (εout·|v_k|), minus
    /// s·B·A in double, one more store: |W0' − W0| ≤ εout·(|W0| + |v_k|) + (r + 3)·2⁻⁵¹·μ_k.
    /// </summary>
    [TestCase(DType.F32)]
    [TestCase(DType.BF16)]
    public void MergeAndUnmergeAreAccurateOnCancellingRows(DType dtype)
    {
        const int outFeatures = 10, inFeatures = 1030, r = 5;
        var (w0, a, b, scale) = DoraReference.CancellingRows(dtype, 1e-5, outFeatures, inFeatures, r, structured: dtype == DType.BF16);
        using Tensor w0T = Tensor.FromArray(Device, w0, dtype, outFeatures, inFeatures);
        using Tensor aT = Tensor.FromArray(Device, a, dtype, r, inFeatures), bT = Tensor.FromArray(Device, b, dtype, outFeatures, r);
        using Tensor norm = Ops.Dora.WeightNorm(w0T, aT, bT, scale);
        float[] n = norm.ToArray();
        float[] mValues = Reference.RoundTo(dtype, Enumerable.Range(0, outFeatures).Select(i => i % 3 == 0 ? -1.5f : 0.75f).ToArray());
        using Tensor mT = Tensor.FromArray(Device, mValues, dtype, outFeatures);
        double outRounding = dtype == DType.BF16 ? Tolerance.Bf16Rounding : Tolerance.Fp32Unit;
        var merged = new double[outFeatures * inFeatures];
        var mergedBounds = new double[merged.Length];
        var unmergedBounds = new double[merged.Length];
        for (int i = 0; i < outFeatures; i++)
        {
            double g = mValues[i] / (double)n[i];
            for (int k = 0; k < inFeatures; k++)
            {
                double v = w0[i * inFeatures + k], mu = Math.Abs(v);
                for (int t = 0; t < r; t++)
                {
                    v += (double)scale * b[i * r + t] * a[t * inFeatures + k];
                    mu += Math.Abs((double)scale * b[i * r + t] * a[t * inFeatures + k]);
                }
                int e = i * inFeatures + k;
                merged[e] = g * v;
                mergedBounds[e] = outRounding * Math.Abs(g * v) + Math.Abs(g) * (r + 2) * Math.ScaleB(1.0, -51) * mu;
                unmergedBounds[e] = outRounding * (Math.Abs(w0[e]) + Math.Abs(v)) + (r + 3) * Math.ScaleB(1.0, -51) * mu;
            }
        }
        Ops.Dora.Merge(w0T, aT, bT, mT, norm, scale);
        float[] got = w0T.ToArray();
        Expect.Close("merged", got, merged, mergedBounds);
        for (int i = 0; i < outFeatures; i++)
        {
            double rowNorm = Math.Sqrt(Enumerable.Range(0, inFeatures).Sum(k => (double)got[i * inFeatures + k] * got[i * inFeatures + k]));
            Assert.That(Math.Abs(rowNorm - Math.Abs(mValues[i])), Is.LessThanOrEqualTo((DoraReference.NormTolerance + 2 * outRounding) * Math.Abs(mValues[i])),
                        $"row {i}: the merged row's norm is |m| (the norm's τ, the stores' rounding)");
        }
        Ops.Dora.Unmerge(w0T, aT, bT, mT, norm, scale);
        Expect.Close("unmerged", w0T.ToArray(), Array.ConvertAll(w0, v => (double)v), unmergedBounds);
    }

    /// <summary>
    /// A zero magnitude cannot be unmerged and a zero norm makes m/n undefined: Merge and Unmerge refuse both,
    /// naming the argument and the row, before touching W. A layer over a W0 with an all-zero row (a new
    /// adapter has B = 0, so that row's norm is 0) is refused at construction, leaving nothing allocated.
    /// </summary>
    [Test]
    public void ZeroMagnitudesAndNormsAreRefused()
    {
        const int outFeatures = 4, inFeatures = 6, r = 2;
        var data = new TestData(31);
        float[] w0 = data.NonZero(outFeatures * inFeatures);
        using Tensor w0T = Tensor.FromArray(Device, w0, outFeatures, inFeatures);
        using Tensor aT = Tensor.FromArray(Device, data.NonZero(r * inFeatures), r, inFeatures);
        using Tensor bT = Tensor.FromArray(Device, data.NonZero(outFeatures * r), outFeatures, r);
        using Tensor ones = Tensor.FromArray(Device, [1f, 1f, 1f, 1f], outFeatures);
        using Tensor zeroM = Tensor.FromArray(Device, [1f, 1f, 0f, 1f], outFeatures);
        using Tensor zeroN = Tensor.FromArray(Device, [1f, 0f, 1f, 1f], outFeatures);
        var e = Assert.Throws<ArgumentException>(() => Ops.Dora.Merge(w0T, aT, bT, zeroM, ones, 1f))!;
        Assert.That(e.ParamName, Is.EqualTo("magnitude"));
        Assert.That(e.Message, Does.Contain("magnitude[2] = 0"));
        e = Assert.Throws<ArgumentException>(() => Ops.Dora.Unmerge(w0T, aT, bT, ones, zeroN, 1f))!;
        Assert.That(e.ParamName, Is.EqualTo("norm"));
        Assert.That(e.Message, Does.Contain("norm[1] = 0"));
        Expect.Exact("W untouched", w0T.ToArray(), w0);

        for (int k = 0; k < inFeatures; k++) w0[inFeatures + k] = 0f;  // row 1 pruned
        using Tensor pruned = Tensor.FromArray(Device.Cpu, w0, outFeatures, inFeatures);
        long before = Device.LiveAllocations;
        var refused = Assert.Throws<ArithmeticException>(() => new DoraLinear(Device, pruned, null, r, alpha: 4f))!;
        Assert.That(refused.Message, Does.Contain("1 row(s) (first: 1)"));
        Assert.That(Device.LiveAllocations, Is.EqualTo(before), "nothing left allocated by the refused construction");
    }

    /// <summary>
    /// A non-finite adapter (A or B diverged) gives NaN or Inf in exactly the rows it reaches, as PEFT's
    /// norm would, and the other rows keep their finite, accurate norms: the certified expansion must
    /// neither hang nor spread the NaN across rows, nor report such a row as a zero norm.
    /// </summary>
    [Test]
    public void NonFiniteAdapterRowsGiveNonFiniteNormsOnlyThere()
    {
        const int outFeatures = 5, inFeatures = 9, r = 3;
        const float scale = 0.5f;
        var data = new TestData(47);
        float[] w0 = data.NonZero(outFeatures * inFeatures), a = data.NonZero(r * inFeatures), b = data.NonZero(outFeatures * r);
        double[] expected = DoraReference.WeightNorm(outFeatures, inFeatures, r, w0, a, b, scale).Norm;
        b[2 * r + 1] = float.NaN;              // row 2 only
        b[4 * r] = float.PositiveInfinity;     // row 4 only
        using Tensor w0T = Tensor.FromArray(Device, w0, outFeatures, inFeatures);
        using Tensor aT = Tensor.FromArray(Device, a, r, inFeatures);
        using Tensor bT = Tensor.FromArray(Device, b, outFeatures, r);
        using Tensor norm = Ops.Dora.WeightNorm(w0T, aT, bT, scale);
        float[] got = norm.ToArray();
        Assert.That(float.IsNaN(got[2]), Is.True, $"row 2 (NaN in B_2): {got[2]}");
        Assert.That(float.IsFinite(got[4]), Is.False, $"row 4 (Inf in B_4): {got[4]}");
        foreach (int i in new[] { 0, 1, 3 })
            Assert.That(got[i], Is.EqualTo(expected[i]).Within(1e-5 * expected[i]), $"row {i} keeps its norm");
    }

    [TestCase(DType.F32, 1, 1, 1, 1)]
    [TestCase(DType.F32, 7, 33, 13, 4)]
    [TestCase(DType.F32, 20, 67, 70, 8)]
    [TestCase(DType.BF16, 7, 33, 13, 4)]
    [TestCase(DType.BF16, 20, 67, 70, 8)]
    public void ForwardAndBackwardMatchReference(DType dtype, int m, int inFeatures, int outFeatures, int r)
    {
        var data = new TestData(TestData.SeedFor($"dora-step{dtype}{m}x{inFeatures}x{outFeatures}x{r}"));
        const float scale = 0.75f;
        float[] x = data.NonZero(m * inFeatures, 1f, dtype), w0 = data.NonZero(outFeatures * inFeatures, 1f, dtype);
        float[] bias = data.NonZero(outFeatures, 1f, dtype), a = data.NonZero(r * inFeatures, 1f, dtype);
        float[] b = data.NonZero(outFeatures * r, 1f, dtype), dy = data.NonZero(m * outFeatures, 1f, dtype);
        float[] magnitude = Reference.RoundTo(dtype, Array.ConvertAll(data.NonZero(outFeatures, 1f), v => Math.Abs(v) + 0.5f));
        float[] norm = Array.ConvertAll(data.NonZero(outFeatures, 1f), v => Math.Abs(v) + 0.5f);

        using Tensor xT = Tensor.FromArray(Device, x, dtype, m, inFeatures), w0T = Tensor.FromArray(Device, w0, dtype, outFeatures, inFeatures);
        using Tensor biasT = Tensor.FromArray(Device, bias, dtype, outFeatures), aT = Tensor.FromArray(Device, a, dtype, r, inFeatures);
        using Tensor bT = Tensor.FromArray(Device, b, dtype, outFeatures, r), dyT = Tensor.FromArray(Device, dy, dtype, m, outFeatures);
        using Tensor mT = Tensor.FromArray(Device, magnitude, dtype, outFeatures), nT = Tensor.FromArray(Device, norm, outFeatures);

        var reference = DoraReference.Run(m, inFeatures, outFeatures, r, x, w0, bias, a, b, scale, magnitude, norm, dy);
        var abs = DoraReference.Run(m, inFeatures, outFeatures, r, x, w0, bias, a, b, scale, magnitude, norm, dy, abs: true);

        var (y, u, z) = Ops.Dora.Forward(xT, w0T, biasT, aT, bT, mT, nT, scale);
        using (y)
        using (u)
        using (z)
        {
            Expect.NotVacuous("y", reference.Y);
            Expect.Close("u", u.ToArray(), reference.U, Tolerance.Bounds(reference.U, abs.U, inFeatures, DType.F32));
            Expect.Close("z", z.ToArray(), reference.Z, Tolerance.Bounds(reference.Z, abs.Z, inFeatures + r + 1, dtype));
            Expect.Close("y", y.ToArray(), reference.Y, Bounds(reference.Y, abs.Y, inFeatures + r + 3, dtype, bf16Intermediate: true));

            using (Tensor yOnly = Ops.Dora.Infer(xT, w0T, biasT, aT, bT, mT, nT, scale))
                Expect.Exact("inference y (no u or z kept)", yOnly.ToArray(), y.ToArray());

            // The backward from the reference's own z and u rounded as the device stores them, so it is tested alone.
            using Tensor zIn = Tensor.FromArray(Device, Reference.RoundTo(dtype, Array.ConvertAll(reference.Z, v => (float)v)), dtype, m, outFeatures);
            using Tensor uIn = Tensor.FromArray(Device, Array.ConvertAll(reference.U, v => (float)v), m, r);
            var step = reference;
            double[] dmFromStoredZ = new double[outFeatures];
            float[] zStored = zIn.ToArray();
            for (int t = 0; t < m; t++)
                for (int o = 0; o < outFeatures; o++) dmFromStoredZ[o] += (double)dy[t * outFeatures + o] * zStored[t * outFeatures + o] / norm[o];
            var (dx, dA, dB, dm) = Ops.Dora.Backward(xT, w0T, aT, bT, mT, nT, uIn, zIn, dyT, scale);
            using (dx)
            using (dA)
            using (dB)
            using (dm)
            {
                Expect.NotVacuous("dx", step.Dx);
                Expect.Close("dm", dm!.ToArray(), dmFromStoredZ, Tolerance.Bounds(dmFromStoredZ, abs.DM, m + 1, dtype));
                Expect.Close("dx", dx!.ToArray(), step.Dx, Bounds(step.Dx, abs.Dx, outFeatures + r + 2, dtype, bf16Intermediate: true));
                // dA and dB use u: the fp32-rounded u adds one rounding per term (inside K's margin).
                Expect.Close("dA", dA!.ToArray(), step.DA, Bounds(step.DA, abs.DA, m + outFeatures + 2, dtype, bf16Intermediate: true));
                Expect.Close("dB", dB!.ToArray(), step.DB, Bounds(step.DB, abs.DB, m + inFeatures + 2, dtype, bf16Intermediate: true));
            }
        }
    }

    [TestCase(7, 33, 13, 4)]
    [TestCase(1, 20, 9, 2)]
    public void GradientsMatchFiniteDifferencesWithTheNormDetached(int m, int inFeatures, int outFeatures, int r)
    {
        var data = new TestData(TestData.SeedFor($"dora-grad{m}x{inFeatures}x{outFeatures}x{r}"));
        float[] w0 = data.NonZero(outFeatures * inFeatures, 1f / MathF.Sqrt(inFeatures));
        float[] biasValues = data.NonZero(outFeatures, 0.5f);
        float[] xValues = data.NonZero(m * inFeatures);
        float[] target = data.NonZero(m * outFeatures);
        float[] bValues = data.NonZero(outFeatures * r, 1f / MathF.Sqrt(r));
        float[] mValues = Array.ConvertAll(data.NonZero(outFeatures), v => Math.Abs(v) + 0.5f);

        using Tensor w0Tensor = Tensor.FromArray(Device.Cpu, w0, outFeatures, inFeatures);
        using Tensor biasTensor = Tensor.FromArray(Device.Cpu, biasValues, outFeatures);
        using var layer = new DoraLinear(Device, w0Tensor, biasTensor, r, alpha: 2f * r, seed: 5);
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
        var (norm0, _) = DoraReference.WeightNorm(outFeatures, inFeatures, r, w0, aValues, bValues, scale);

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
                    for (int k = 0; k < inFeatures; k++) zo += xd[row * inFeatures + k] * w0[o * inFeatures + k];
                    for (int j = 0; j < r; j++) zo += scale * u[j] * bd[o * r + j];
                    double d = md[o] / norm0[o] * zo + biasValues[o] - target[row * outFeatures + o];
                    sum += d * d;
                }
            }
            return sum / (m * outFeatures);
        }

        double exactLoss = Loss();
        Assert.That(loss, Is.EqualTo(exactLoss).Within(1e-5 * Math.Abs(exactLoss) + 1e-6), "loss");

        // The loss is quadratic in each single parameter, so a central difference in double is exact up to
        // cancellation, O(ε_double·L/h) ≈ 1e-12. The bound is the fp32 kernels' own, 1e-6 + 2K·2⁻²⁴·Σ|terms|,
        // with Σ|terms| ≤ 8·max|g| for these O(1) inputs; K adds in for the fp32 norm's relative error.
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

    [TestCase(DType.F32)]
    [TestCase(DType.BF16)]
    public void NewLayerIsTheBaseLayerAndMergeUnmergeRoundTrips(DType dtype)
    {
        const int m = 5, inFeatures = 37, outFeatures = 11, r = 3;
        var data = new TestData(TestData.SeedFor($"dora-merge{dtype}"));
        float[] w0 = data.NonZero(outFeatures * inFeatures, 1f, dtype), bias = data.NonZero(outFeatures, 1f, dtype);
        float[] xValues = data.NonZero(m * inFeatures, 1f, dtype);
        using Tensor w0Tensor = Tensor.FromArray(Device.Cpu, w0, dtype, outFeatures, inFeatures);
        using Tensor biasTensor = Tensor.FromArray(Device.Cpu, bias, dtype, outFeatures);
        using var layer = new DoraLinear(Device, w0Tensor, biasTensor, r, alpha: 6f, seed: 3, dtype: dtype);
        using Tensor x = Tensor.FromArray(Device, xValues, dtype, m, inFeatures);

        // m0 = ‖W0‖_row, so with B = 0 the layer is the base layer: y = x W0ᵀ + bias.
        var (norm0, _) = DoraReference.WeightNorm(outFeatures, inFeatures, 0, w0, [], [], 0);
        Expect.Close("m0", layer.Magnitude.Value.ToArray(), norm0,
                     Array.ConvertAll(norm0, n => Tolerance.Atol + 2 * inFeatures * Tolerance.Fp32Unit * n + Tolerance.OutputRounding(dtype) * n));
        var baseRef = DoraReference.Run(m, inFeatures, outFeatures, 1, xValues, w0, bias, new float[inFeatures], new float[outFeatures], 0,
                                        Enumerable.Repeat(1f, outFeatures).ToArray(), Enumerable.Repeat(1f, outFeatures).ToArray(), new float[m * outFeatures]);
        var baseAbs = DoraReference.Run(m, inFeatures, outFeatures, 1, xValues, w0, bias, new float[inFeatures], new float[outFeatures], 0,
                                        Enumerable.Repeat(1f, outFeatures).ToArray(), Enumerable.Repeat(1f, outFeatures).ToArray(), new float[m * outFeatures], abs: true);
        layer.Training = false;
        using (Tensor y0 = layer.Forward(x))
            Expect.Close("new layer = base layer", y0.ToArray(), baseRef.Y,
                         Bounds(baseRef.Y, baseAbs.Y, inFeatures + 3, dtype, bf16Intermediate: true));

        // A trained-looking adapter, then merge: the merged layer computes the same y, and unmerge restores W0.
        float[] bValues = data.NonZero(outFeatures * r, 0.5f, dtype);
        float[] mValues = Reference.RoundTo(dtype, Array.ConvertAll(data.NonZero(outFeatures, 1f), v => Math.Abs(v) + 2f));
        layer.B.Value.CopyFrom(bValues);
        layer.Magnitude.Value.CopyFrom(mValues);
        float[] aValues = layer.A.Value.ToArray();
        var (norm, _) = DoraReference.WeightNorm(outFeatures, inFeatures, r, w0, aValues, bValues, layer.Scale);
        float[] normValues = Array.ConvertAll(norm, v => (float)v);
        var reference = DoraReference.Run(m, inFeatures, outFeatures, r, xValues, w0, bias, aValues, bValues, layer.Scale, mValues,
                                          normValues, new float[m * outFeatures]);
        var abs = DoraReference.Run(m, inFeatures, outFeatures, r, xValues, w0, bias, aValues, bValues, layer.Scale, mValues,
                                    normValues, new float[m * outFeatures], abs: true);
        // K also covers the fp32 norm's relative error (in + 2r); merged, W = (m/n)(W0 + sBA) is stored in
        // the dtype, one more rounding of every term: 2⁻⁸·Σ|terms| for BF16.
        double[] yBounds = Bounds(reference.Y, abs.Y, 2 * inFeatures + 2 * r + 4, dtype, bf16Intermediate: true);
        using (Tensor yUnmerged = layer.Forward(x))
            Expect.Close("unmerged y", yUnmerged.ToArray(), reference.Y, yBounds);
        layer.Merge();
        Assert.That(layer.Merged, Is.True);
        using (Tensor yMerged = layer.Forward(x))
            Expect.Close("merged y", yMerged.ToArray(), reference.Y,
                         Bounds(reference.Y, abs.Y, 2 * inFeatures + 2 * r + 4, dtype, bf16Intermediate: true).Select((v, i) => v + Tolerance.OutputRounding(dtype) * abs.Y[i]).ToArray());
        using (var tape = new Tape())
            Assert.Throws<InvalidOperationException>(() => layer.Forward(tape, new Variable(x)));
        layer.Unmerge();
        Assert.That(layer.Merged, Is.False);
        // Merge then unmerge round W four times (W0 + sBA, ·m/n, ·n/m, - sBA), each by at most
        // (2⁻²⁴·(r + 2) + εout)·(|W0| + s·Σ|B||A|)·max(m/n, n/m) with m/n in [0.5, 2] here.
        var wBounds = new double[outFeatures * inFeatures];
        for (int i = 0; i < outFeatures; i++)
            for (int k = 0; k < inFeatures; k++)
            {
                double terms = Math.Abs(w0[i * inFeatures + k]);
                for (int t = 0; t < r; t++) terms += Math.Abs(layer.Scale * bValues[i * r + t] * aValues[t * inFeatures + k]);
                wBounds[i * inFeatures + k] = Tolerance.Atol + 4 * 2 * (Tolerance.Fp32Unit * (r + 2) + Tolerance.OutputRounding(dtype)) * terms;
            }
        float[] g = mValues.Select((v, i) => v / normValues[i]).ToArray();
        Assert.That(g.All(v => v is > 0.5f and < 2f), Is.True, "m/n in [0.5, 2], as the bound assumes");
        Expect.Close("unmerged W0", layer.W0.ToArray(), Array.ConvertAll(w0, v => (double)v), wBounds);
    }

    [Test]
    public void TrainingStepMergeAndDisposeLeaveNothingAllocated()
    {
        const int m = 4, inFeatures = 24, outFeatures = 10, r = 3;
        var data = new TestData(23);
        Device device = Device;
        long before = device.LiveAllocations;
        using (Tensor w0 = Tensor.FromArray(Device.Cpu, data.NonZero(outFeatures * inFeatures), outFeatures, inFeatures))
        using (Tensor bias = Tensor.FromArray(Device.Cpu, data.NonZero(outFeatures), outFeatures))
        using (Tensor x = Tensor.FromArray(device, data.NonZero(m * inFeatures), m, inFeatures))
        using (Tensor target = Tensor.FromArray(device, data.NonZero(m * outFeatures), m, outFeatures))
        using (var layer = new DoraLinear(device, w0, bias, r, alpha: 8f))
        {
            for (int step = 0; step < 2; step++)
            {
                using var tape = new Tape();
                tape.MseLoss(layer.Forward(tape, new Variable(x, requiresGrad: true)), target);
                tape.Backward();
            }
            Assert.That(layer.Parameters().All(p => p.Grad is not null), Is.True, "A, B and the magnitude received gradients");
            layer.Merge();
            layer.Unmerge();
        }
        Assert.That(device.LiveAllocations, Is.EqualTo(before), "live allocations after disposing the layer and its tensors");
    }

    [Test]
    public void BadInputIsRejected()
    {
        const int m = 3, inFeatures = 8, outFeatures = 5, r = 2;
        var data = new TestData(11);
        using Tensor x = Tensor.FromArray(Device, data.NonZero(m * inFeatures), m, inFeatures);
        using Tensor w0 = Tensor.FromArray(Device, data.NonZero(outFeatures * inFeatures), outFeatures, inFeatures);
        using Tensor a = Tensor.FromArray(Device, data.NonZero(r * inFeatures), r, inFeatures);
        using Tensor b = Tensor.FromArray(Device, data.NonZero(outFeatures * r), outFeatures, r);
        using Tensor magnitude = Tensor.FromArray(Device, data.NonZero(outFeatures), outFeatures);
        using Tensor norm = Tensor.FromArray(Device, data.NonZero(outFeatures), outFeatures);
        using Tensor normBf16 = Tensor.FromArray(Device, data.NonZero(outFeatures), DType.BF16, outFeatures);
        using Tensor shortMagnitude = Tensor.FromArray(Device, data.NonZero(outFeatures - 1), outFeatures - 1);
        using Tensor rankZero = Tensor.Zeros(Device, DType.F32, 0, inFeatures);
        using Tensor bRankZero = Tensor.Zeros(Device, DType.F32, outFeatures, 0);
        long before = Device.LiveAllocations;

        var e = Assert.Throws<ArgumentException>(() => Ops.Dora.Forward(x, w0, null, a, b, magnitude, normBf16, 1f))!;
        Assert.That(e.ParamName, Is.EqualTo("norm"));
        Assert.That(e.Message, Does.Contain("Dora.Forward: norm must be [out] = [5] with dtype F32"));
        e = Assert.Throws<ArgumentException>(() => Ops.Dora.Forward(x, w0, null, a, b, shortMagnitude, norm, 1f))!;
        Assert.That(e.ParamName, Is.EqualTo("magnitude"));
        var range = Assert.Throws<ArgumentOutOfRangeException>(() => Ops.Dora.WeightNorm(w0, rankZero, bRankZero, 1f))!;
        Assert.That(range.ParamName, Is.EqualTo("a"));
        Assert.Throws<ArgumentOutOfRangeException>(() => Ops.Dora.WeightNorm(w0, a, b, float.NaN));
        e = Assert.Throws<ArgumentException>(() => Ops.Dora.Backward(x, w0, a, b, magnitude, norm, norm, norm, norm, 1f))!;
        Assert.That(e.ParamName, Is.EqualTo("u"));
        Assert.That(Device.LiveAllocations, Is.EqualTo(before), "nothing allocated by rejected calls");

        using Tensor w0Host = Tensor.FromArray(Device.Cpu, data.NonZero(outFeatures * inFeatures), outFeatures, inFeatures);
        // Training with dropout runs in F32 only (DoraDropoutTests); a BF16 layer refuses it.
        using var layer = new DoraLinear(Device, w0Host, null, r, alpha: 4f, dropout: 0.1f, dtype: DType.BF16);
        using Tensor xBf16 = Tensor.FromArray(Device, data.NonZero(m * inFeatures), DType.BF16, m, inFeatures);
        var notSupported = Assert.Throws<NotSupportedException>(() => layer.Forward(xBf16))!;
        Assert.That(notSupported.Message, Does.Contain("dropout"));
        using var tape = new Tape();
        Assert.Throws<NotSupportedException>(() => layer.Forward(tape, new Variable(xBf16)));
        layer.Training = false;  // eval ignores dropout, as PEFT
        using Tensor y = layer.Forward(xBf16);
        Assert.That(y.Shape, Is.EqualTo(new long[] { m, outFeatures }));
        Assert.Throws<ArgumentOutOfRangeException>(() => new DoraLinear(Device, w0Host, null, 0, 1f));
    }
}

/// <summary>Every DoRA op gives the same result on the CPU kernels and on kernels/dora.cu under the emulator.</summary>
[TestFixture]
public sealed class DoraCpuSimtParityTests
{
    /// <summary>
    /// The norm of rows cancelling to 1e-3, 1e-5 and 1e-7 of ‖W0_i‖ (<see cref="DoraReference.CancellingRows"/>:
    /// generic for F32, structured for BF16) on the CPU kernels and on kernels/dora.cu under the emulator: each
    /// within <see cref="DoraReference.NormBounds"/> of the double norm, so within twice it of each other.
    /// </summary>
    [TestCase(DType.F32, 1e-3)]
    [TestCase(DType.F32, 1e-5)]
    [TestCase(DType.F32, 1e-7)]
    [TestCase(DType.BF16, 1e-3)]
    [TestCase(DType.BF16, 1e-5)]
    [TestCase(DType.BF16, 1e-7)]
    public void CancellingRowNormsAgree(DType dtype, double depth) => CancellingRowNormsAgree(dtype, depth, Device.Simt);

    /// <summary>The cancelling-row norms on the CPU and on <paramref name="other"/> (the emulator, or a GPU).</summary>
    internal static void CancellingRowNormsAgree(DType dtype, double depth, Device other)
    {
        const int outFeatures = 10, inFeatures = 1030, r = 16;
        var (w0, a, b, scale) = DoraReference.CancellingRows(dtype, depth, outFeatures, inFeatures, r, structured: dtype == DType.BF16);
        var (reference, magnitude) = DoraReference.WeightNorm(outFeatures, inFeatures, r, w0, a, b, scale);
        double[] bounds = DoraReference.NormBounds(reference, magnitude, r);
        var norms = new float[2][];
        Device[] devices = [Device.Cpu, other];
        for (int d = 0; d < 2; d++)
        {
            using Tensor w0T = Tensor.FromArray(devices[d], w0, dtype, outFeatures, inFeatures);
            using Tensor aT = Tensor.FromArray(devices[d], a, dtype, r, inFeatures), bT = Tensor.FromArray(devices[d], b, dtype, outFeatures, r);
            using Tensor norm = Ops.Dora.WeightNorm(w0T, aT, bT, scale);
            norms[d] = norm.ToArray();
            Expect.Close($"norm ({devices[d]})", norms[d], reference, bounds);
        }
        Expect.NotVacuous("norm", reference);
        Expect.Agree($"norm (cpu vs {other})", norms[0], norms[1], bounds);
    }

    [TestCase(DType.F32)]
    [TestCase(DType.BF16)]
    public void EveryOpAgrees(DType dtype) => EveryOpAgrees(dtype, Device.Simt);

    /// <summary>Every DoRA op on the CPU and on <paramref name="other"/> (the emulator, or a GPU), each against the reference.</summary>
    internal static void EveryOpAgrees(DType dtype, Device other)
    {
        const int m = 19, inFeatures = 45, outFeatures = 70, r = 6;
        const float scale = 0.5f;
        var data = new TestData(TestData.SeedFor($"dora-parity{dtype}"));
        float[] x = data.NonZero(m * inFeatures, 1f, dtype), w0 = data.NonZero(outFeatures * inFeatures, 1f, dtype);
        float[] bias = data.NonZero(outFeatures, 1f, dtype), a = data.NonZero(r * inFeatures, 1f, dtype);
        float[] b = data.NonZero(outFeatures * r, 1f, dtype), dy = data.NonZero(m * outFeatures, 1f, dtype);
        float[] magnitude = Reference.RoundTo(dtype, Array.ConvertAll(data.NonZero(outFeatures, 1f), v => Math.Abs(v) + 0.5f));

        var (normRef, normMag) = DoraReference.WeightNorm(outFeatures, inFeatures, r, w0, a, b, scale);
        float[] normValues = Array.ConvertAll(normRef, v => (float)v);
        var reference = DoraReference.Run(m, inFeatures, outFeatures, r, x, w0, bias, a, b, scale, magnitude, normValues, dy);
        var abs = DoraReference.Run(m, inFeatures, outFeatures, r, x, w0, bias, a, b, scale, magnitude, normValues, dy, abs: true);

        var results = new Dictionary<string, float[]>[2];
        Device[] devices = [Device.Cpu, other];
        for (int d = 0; d < 2; d++)
        {
            Device device = devices[d];
            var got = results[d] = new Dictionary<string, float[]>();
            using Tensor xT = Tensor.FromArray(device, x, dtype, m, inFeatures), w0T = Tensor.FromArray(device, w0, dtype, outFeatures, inFeatures);
            using Tensor biasT = Tensor.FromArray(device, bias, dtype, outFeatures), aT = Tensor.FromArray(device, a, dtype, r, inFeatures);
            using Tensor bT = Tensor.FromArray(device, b, dtype, outFeatures, r), dyT = Tensor.FromArray(device, dy, dtype, m, outFeatures);
            using Tensor mT = Tensor.FromArray(device, magnitude, dtype, outFeatures);
            using Tensor sq = Ops.Dora.RowSquaredNorm(w0T);
            using Tensor nT = Ops.Dora.WeightNorm(w0T, aT, bT, scale, sq);
            got["sqnorm"] = sq.ToArray();
            got["norm"] = nT.ToArray();
            // The same norm values on both devices from here on, so the forward and backward compare alone.
            nT.CopyFrom(normValues);
            var (y, u, z) = Ops.Dora.Forward(xT, w0T, biasT, aT, bT, mT, nT, scale);
            using (y)
            using (u)
            using (z)
            {
                got["y"] = y.ToArray();
                using Tensor zIn = Tensor.FromArray(device, Reference.RoundTo(dtype, Array.ConvertAll(reference.Z, v => (float)v)), dtype, m, outFeatures);
                using Tensor uIn = Tensor.FromArray(device, Array.ConvertAll(reference.U, v => (float)v), m, r);
                var (dx, dA, dB, dm) = Ops.Dora.Backward(xT, w0T, aT, bT, mT, nT, uIn, zIn, dyT, scale);
                using (dx) using (dA) using (dB) using (dm)
                {
                    got["dx"] = dx!.ToArray();
                    got["dA"] = dA!.ToArray();
                    got["dB"] = dB!.ToArray();
                    got["dm"] = dm!.ToArray();
                }
            }
            using Tensor merged = Tensor.FromArray(device, w0, dtype, outFeatures, inFeatures);
            Ops.Dora.Merge(merged, aT, bT, mT, nT, scale);
            got["merged"] = merged.ToArray();
        }

        double[] sqRef = new double[outFeatures];
        for (int i = 0; i < outFeatures; i++)
            for (int k = 0; k < inFeatures; k++) sqRef[i] += (double)w0[i * inFeatures + k] * w0[i * inFeatures + k];
        var mergedRef = new double[outFeatures * inFeatures];
        var mergedAbs = new double[outFeatures * inFeatures];
        for (int i = 0; i < outFeatures; i++)
            for (int k = 0; k < inFeatures; k++)
            {
                double w = w0[i * inFeatures + k], wAbs = Math.Abs(w);
                for (int t = 0; t < r; t++)
                {
                    w += scale * b[i * r + t] * a[t * inFeatures + k];
                    wAbs += Math.Abs(scale * b[i * r + t] * a[t * inFeatures + k]);
                }
                double g = magnitude[i] / (double)normValues[i];
                mergedRef[i * inFeatures + k] = g * w;
                mergedAbs[i * inFeatures + k] = g * wAbs;
            }
        var bounds = new Dictionary<string, double[]>
        {
            ["sqnorm"] = Tolerance.Bounds(sqRef, sqRef, inFeatures, DType.F32),
            ["norm"] = DoraReference.NormBounds(normRef, normMag, r),
            ["y"] = DoraTests.Bounds(reference.Y, abs.Y, inFeatures + r + 3, dtype, bf16Intermediate: true),
            ["dx"] = DoraTests.Bounds(reference.Dx, abs.Dx, outFeatures + r + 2, dtype, bf16Intermediate: true),
            ["dA"] = DoraTests.Bounds(reference.DA, abs.DA, m + outFeatures + 2, dtype, bf16Intermediate: true),
            ["dB"] = DoraTests.Bounds(reference.DB, abs.DB, m + inFeatures + 2, dtype, bf16Intermediate: true),
            ["merged"] = DoraTests.Bounds(mergedRef, mergedAbs, r + 2, dtype, bf16Intermediate: true),
        };
        // dm from the z both devices were given (the reference's z rounded to the dtype).
        float[] zStored = Reference.RoundTo(dtype, Array.ConvertAll(reference.Z, v => (float)v));
        var dmRef = new double[outFeatures];
        for (int t = 0; t < m; t++)
            for (int o = 0; o < outFeatures; o++) dmRef[o] += (double)dy[t * outFeatures + o] * zStored[t * outFeatures + o] / normValues[o];
        bounds["dm"] = Tolerance.Bounds(dmRef, abs.DM, m + 1, dtype);
        var references = new Dictionary<string, double[]>
        {
            ["sqnorm"] = sqRef, ["norm"] = normRef, ["y"] = reference.Y, ["dx"] = reference.Dx, ["dA"] = reference.DA,
            ["dB"] = reference.DB, ["dm"] = dmRef, ["merged"] = mergedRef,
        };
        foreach (string op in references.Keys)
        {
            Expect.NotVacuous(op, references[op]);
            Expect.Close($"{op} (cpu)", results[0][op], references[op], bounds[op]);
            Expect.Close($"{op} ({other})", results[1][op], references[op], bounds[op]);
            Expect.Agree($"{op} (cpu vs {other})", results[0][op], results[1][op], bounds[op]);
        }
    }
}
