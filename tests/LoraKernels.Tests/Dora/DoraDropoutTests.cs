using LoraKernels.Autograd;
using LoraKernels.Layers;

namespace LoraKernels.Tests.Dora;

/// <summary>
/// DoRA with dropout p &gt; 0 in training (PEFT's formula, REFERENCE.md §2.2 step 6) over a dense and an
/// NF4 base, on each host device: Ops.Dora.ForwardWithDropout/BackwardWithDropout against
/// <see cref="Step"/>, a double reference written directly from PEFT's formula with the kernels'
/// hashed mask (<see cref="Reference.DropoutFactors"/>), not from the library's rewrite; gradients of a
/// loss by central finite differences with a fixed seed; the layer on the tape against the same
/// reference with the layer's own seed; Cpu-vs-Simt agreement.
/// Tolerances: <see cref="Tolerance.Bounds"/> with K the longest fp32 chain and Σ|terms| from the
/// reference run on absolute values (the rewrite's (x − x_d) term counted as |x| + |x_d|).
/// </summary>
[TestFixture(DeviceKind.Cpu)]
[TestFixture(DeviceKind.Simt)]
public sealed class DoraDropoutTests(DeviceKind kind)
{
    private Device Device => kind == DeviceKind.Cpu ? Device.Cpu : Device.Simt;

    private sealed record StepResult(double[] Y, double[] Dx, double[] DA, double[] DB, double[] DM);

    /// <summary>
    /// y = x Wᵀ + b + (g − 1) ⊙ (x_d Wᵀ) + g ⊙ s·(x_d Aᵀ) Bᵀ and its gradients (n detached):
    /// dm_j = Σ_t dy·(x_d Wᵀ + s·u Bᵀ)/n_j, dz = dy ⊙ g, dA = s·(dz B)ᵀ x_d, dB = s·dzᵀ u,
    /// dx = dy W + mask ⊙ ((dy ⊙ (g − 1)) W + s·(dz B) A). With <paramref name="abs"/>, Σ|terms|.
    /// </summary>
    private static StepResult Step(int m, int inFeatures, int outFeatures, int r, float[] x, float[] w, float[]? bias, float[] a,
                                   float[] b, double s, float[] magnitude, float[] norm, double[] mask, double[] dy, bool abs = false)
    {
        double V(double v) => abs ? Math.Abs(v) : v;
        var xd = new double[m * inFeatures];
        for (int i = 0; i < xd.Length; i++) xd[i] = mask[i] * V(x[i]);
        var u = new double[m * r];
        for (int t = 0; t < m; t++)
            for (int j = 0; j < r; j++)
                for (int k = 0; k < inFeatures; k++) u[t * r + j] += xd[t * inFeatures + k] * V(a[j * inFeatures + k]);
        var y = new double[m * outFeatures];
        var dz = new double[m * outFeatures];
        var dm = new double[outFeatures];
        var dx = new double[m * inFeatures];
        for (int t = 0; t < m; t++)
            for (int o = 0; o < outFeatures; o++)
            {
                double zb = 0, zd = 0, l = 0;
                for (int k = 0; k < inFeatures; k++)
                {
                    zb += V(x[t * inFeatures + k]) * V(w[o * inFeatures + k]);
                    zd += xd[t * inFeatures + k] * V(w[o * inFeatures + k]);
                }
                for (int j = 0; j < r; j++) l += s * u[t * r + j] * V(b[o * r + j]);
                double g = magnitude[o] / (double)norm[o];
                double gm1 = abs ? Math.Abs(g) + 1 : g - 1;
                int e = t * outFeatures + o;
                // abs: the rewrite (x − x_d) Wᵀ + g ⊙ (x_d Wᵀ + l) adds Σ|x_d||w| once more.
                y[e] = zb + (bias is null ? 0 : V(bias[o])) + gm1 * zd + V(g) * l + (abs ? zd : 0);
                dm[o] += V(dy[e]) * (zd + l) / norm[o];
                dz[e] = V(dy[e]) * V(g);
                for (int k = 0; k < inFeatures; k++)
                {
                    double wv = V(w[o * inFeatures + k]);
                    dx[t * inFeatures + k] += V(dy[e]) * wv + mask[t * inFeatures + k] * V(dy[e]) * gm1 * wv
                                              + (abs ? mask[t * inFeatures + k] * V(dy[e]) * wv : 0);
                }
            }
        var du = new double[m * r];
        for (int t = 0; t < m; t++)
            for (int j = 0; j < r; j++)
            {
                for (int o = 0; o < outFeatures; o++) du[t * r + j] += dz[t * outFeatures + o] * V(b[o * r + j]);
                du[t * r + j] *= s;
            }
        for (int t = 0; t < m; t++)
            for (int k = 0; k < inFeatures; k++)
                for (int j = 0; j < r; j++) dx[t * inFeatures + k] += mask[t * inFeatures + k] * du[t * r + j] * V(a[j * inFeatures + k]);
        var dA = new double[r * inFeatures];
        for (int j = 0; j < r; j++)
            for (int k = 0; k < inFeatures; k++)
                for (int t = 0; t < m; t++) dA[j * inFeatures + k] += du[t * r + j] * xd[t * inFeatures + k];
        var dB = new double[outFeatures * r];
        for (int o = 0; o < outFeatures; o++)
            for (int j = 0; j < r; j++)
            {
                for (int t = 0; t < m; t++) dB[o * r + j] += dz[t * outFeatures + o] * u[t * r + j];
                dB[o * r + j] *= s;
            }
        return new StepResult(y, dx, dA, dB, dm);
    }

    private sealed record Inputs(float[] X, float[] W, float[] Bias, float[] A, float[] B, float[] Magnitude, float[] Norm, float[] Dy);

    private static Inputs MakeInputs(string name, int m, int inFeatures, int outFeatures, int r)
    {
        var data = new TestData(TestData.SeedFor(name));
        return new Inputs(data.NonZero(m * inFeatures), data.NonZero(outFeatures * inFeatures), data.NonZero(outFeatures),
                          data.NonZero(r * inFeatures), data.NonZero(outFeatures * r),
                          Array.ConvertAll(data.NonZero(outFeatures), v => Math.Abs(v) + 0.5f),
                          Array.ConvertAll(data.NonZero(outFeatures), v => Math.Abs(v) + 0.5f), data.NonZero(m * outFeatures));
    }

    /// <summary>Runs the ops on <paramref name="device"/>; returns y, dx, dA, dB, dm and the base weight the device used.</summary>
    private static (float[][] Results, float[] W) RunOps(Device device, Inputs input, bool quantized, int m, int inFeatures, int outFeatures,
                                                         int r, float scale, float p, ulong seed)
    {
        using Tensor w = Tensor.FromArray(device, input.W, outFeatures, inFeatures);
        using QuantizedWeight? q = quantized ? Ops.Nf4.Quantize(w) : null;
        float[] wUsed;
        if (q is null) wUsed = input.W;
        else using (Tensor deq = Ops.Nf4.Dequantize(q)) wUsed = deq.ToArray();
        using Tensor x = Tensor.FromArray(device, input.X, m, inFeatures), bias = Tensor.FromArray(device, input.Bias, outFeatures);
        using Tensor a = Tensor.FromArray(device, input.A, r, inFeatures), b = Tensor.FromArray(device, input.B, outFeatures, r);
        using Tensor mag = Tensor.FromArray(device, input.Magnitude, outFeatures), norm = Tensor.FromArray(device, input.Norm, outFeatures);
        using Tensor dy = Tensor.FromArray(device, input.Dy, m, outFeatures);
        Tensor? dense = q is null ? w : null;
        var (y, state) = Ops.Dora.ForwardWithDropout(x, dense, q, bias, a, b, mag, norm, scale, p, seed);
        using (y)
        using (state)
        {
            var (dx, dA, dB, dm) = Ops.Dora.BackwardWithDropout(x, dense, q, a, b, mag, norm, state, dy, scale, p, seed);
            using (dx)
            using (dA)
            using (dB)
            using (dm)
                return ([y.ToArray(), dx!.ToArray(), dA!.ToArray(), dB!.ToArray(), dm!.ToArray()], wUsed);
        }
    }

    [TestCase(false, 1, 1, 1, 1)]
    [TestCase(false, 7, 33, 13, 4)]
    [TestCase(false, 20, 67, 70, 8)]
    [TestCase(true, 7, 33, 13, 4)]
    [TestCase(true, 20, 67, 70, 8)]
    public void ForwardAndBackwardMatchPeftFormulaWithTheHashedMask(bool quantized, int m, int inFeatures, int outFeatures, int r)
    {
        const float scale = 0.75f, p = 0.3f;
        const ulong seed = 0xD0DA;
        Inputs input = MakeInputs($"dora-dropout{quantized}{m}x{inFeatures}x{outFeatures}x{r}", m, inFeatures, outFeatures, r);
        var (got, w) = RunOps(Device, input, quantized, m, inFeatures, outFeatures, r, scale, p, seed);
        double[] mask = Reference.DropoutFactors(m, inFeatures, p, seed);
        double[] dy = Array.ConvertAll(input.Dy, v => (double)v);
        var reference = Step(m, inFeatures, outFeatures, r, input.X, w, input.Bias, input.A, input.B, scale, input.Magnitude, input.Norm, mask, dy);
        var abs = Step(m, inFeatures, outFeatures, r, input.X, w, input.Bias, input.A, input.B, scale, input.Magnitude, input.Norm, mask, dy, abs: true);
        if (m * inFeatures > 1) Assert.That(mask.Count(f => f == 0), Is.GreaterThan(0), "some elements are dropped");
        Expect.NotVacuous("y", reference.Y);
        Expect.NotVacuous("dx", reference.Dx);
        int chain = inFeatures + outFeatures + r + m + 4;
        Expect.Close("y", got[0], reference.Y, Tolerance.Bounds(reference.Y, abs.Y, chain, DType.F32));
        Expect.Close("dx", got[1], reference.Dx, Tolerance.Bounds(reference.Dx, abs.Dx, chain, DType.F32));
        Expect.Close("dA", got[2], reference.DA, Tolerance.Bounds(reference.DA, abs.DA, chain, DType.F32));
        Expect.Close("dB", got[3], reference.DB, Tolerance.Bounds(reference.DB, abs.DB, chain, DType.F32));
        Expect.Close("dm", got[4], reference.DM, Tolerance.Bounds(reference.DM, abs.DM, chain, DType.F32));
    }

    [Test]
    public void DropoutIsTheKernelsHashedMask_m5_in37()
    {
        const int m = 5, inFeatures = 37;
        float[] xValues = new TestData(TestData.SeedFor("dora-dropout-mask")).NonZero(m * inFeatures);
        using Tensor x = Tensor.FromArray(Device, xValues, m, inFeatures);
        using Tensor xd = Ops.Dora.Dropout(x, 0.25f, 77);
        double[] mask = Reference.DropoutFactors(m, inFeatures, 0.25f, 77);
        Expect.Exact("dropout(x)", xd.ToArray(), xValues.Select((v, i) => v * (float)mask[i]).ToArray());
    }

    [TestCase(false, 6, 19, 11, 3)]
    [TestCase(true, 6, 19, 11, 3)]
    public void LayerOnTheTapeMatchesTheReferenceAndFiniteDifferences(bool quantized, int m, int inFeatures, int outFeatures, int r)
    {
        const float p = 0.25f;
        var data = new TestData(TestData.SeedFor($"dora-dropout-layer{quantized}{m}x{inFeatures}x{outFeatures}x{r}"));
        float[] w0 = data.NonZero(outFeatures * inFeatures, 1f / MathF.Sqrt(inFeatures));
        float[] biasValues = data.NonZero(outFeatures, 0.5f), xValues = data.NonZero(m * inFeatures), target = data.NonZero(m * outFeatures);
        float[] bValues = data.NonZero(outFeatures * r, 1f / MathF.Sqrt(r));
        float[] mValues = Array.ConvertAll(data.NonZero(outFeatures), v => Math.Abs(v) + 0.5f);

        DoraLinear Make()
        {
            using Tensor w = Tensor.FromArray(Device, w0, outFeatures, inFeatures);
            using Tensor bias = Tensor.FromArray(Device, biasValues, outFeatures);
            return quantized
                ? new DoraLinear(Device, Ops.Nf4.Quantize(w), bias, r, alpha: 2f * r, dropout: p, seed: 5)
                : new DoraLinear(Device, w, bias, r, alpha: 2f * r, dropout: p, seed: 5);
        }
        using DoraLinear layer = Make();
        // A twin layer with the same seed draws the seed the first layer's forward uses.
        ulong seed;
        using (DoraLinear twin = Make()) seed = twin.NextDropoutSeed();
        float[] w0Used;
        if (quantized) using (Tensor deq = Ops.Nf4.Dequantize(layer.QuantizedW0!)) w0Used = deq.ToArray();
        else w0Used = w0;
        layer.B.Value.CopyFrom(bValues);
        layer.Magnitude.Value.CopyFrom(mValues);
        float[] aValues = layer.A.Value.ToArray();
        double scale = layer.Scale;
        float[] norm0;
        using (Tensor n = layer.WeightNorm()) norm0 = n.ToArray();

        using Tensor x = Tensor.FromArray(Device, xValues, m, inFeatures);
        using Tensor targetTensor = Tensor.FromArray(Device, target, m, outFeatures);
        using var tape = new Tape();
        var input = new Variable(x, requiresGrad: true);
        float loss = tape.MseLoss(layer.Forward(tape, input), targetTensor);
        tape.Backward();

        double[] mask = Reference.DropoutFactors(m, inFeatures, p, seed);
        double[] xd = Array.ConvertAll(xValues, v => (double)v), ad = Array.ConvertAll(aValues, v => (double)v);
        double[] bd = Array.ConvertAll(bValues, v => (double)v), md = Array.ConvertAll(mValues, v => (double)v);

        // PEFT's formula in double with the mask fixed (the seed is fixed) and the norm detached.
        double Loss()
        {
            double sum = 0;
            for (int t = 0; t < m; t++)
            {
                var u = new double[r];
                for (int j = 0; j < r; j++)
                    for (int k = 0; k < inFeatures; k++) u[j] += mask[t * inFeatures + k] * xd[t * inFeatures + k] * ad[j * inFeatures + k];
                for (int o = 0; o < outFeatures; o++)
                {
                    double zb = 0, zd = 0, l = 0;
                    for (int k = 0; k < inFeatures; k++)
                    {
                        zb += xd[t * inFeatures + k] * w0Used[o * inFeatures + k];
                        zd += mask[t * inFeatures + k] * xd[t * inFeatures + k] * w0Used[o * inFeatures + k];
                    }
                    for (int j = 0; j < r; j++) l += scale * u[j] * bd[o * r + j];
                    double g = md[o] / norm0[o];
                    double d = zb + biasValues[o] + (g - 1) * zd + g * l - target[t * outFeatures + o];
                    sum += d * d;
                }
            }
            return sum / (m * outFeatures);
        }

        double exactLoss = Loss();
        Assert.That(loss, Is.EqualTo(exactLoss).Within(1e-5 * Math.Abs(exactLoss) + 1e-6), "loss (the layer used the seed its stream gives)");

        // As DoraTests: quadratic in each parameter, so the central difference is exact up to O(ε_double·L/h);
        // the bound is the fp32 kernels' own, 1e-6 + 2K·2⁻²⁴·8·max|g|.
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

    [TestCase(false)]
    [TestCase(true)]
    public void CpuAndSimtAgree_m9_in70_out31_r5(bool quantized) => CpuAndDeviceAgree(quantized, Device.Simt);

    /// <summary>The dropout path's outputs on the CPU and on <paramref name="other"/> (the emulator, or a GPU) agree.</summary>
    internal static void CpuAndDeviceAgree(bool quantized, Device other)
    {
        const int m = 9, inFeatures = 70, outFeatures = 31, r = 5;
        const float scale = 1.5f, p = 0.4f;
        const ulong seed = 1234;
        Inputs input = MakeInputs($"dora-dropout-agree{quantized}", m, inFeatures, outFeatures, r);
        var (cpu, w) = RunOps(Device.Cpu, input, quantized, m, inFeatures, outFeatures, r, scale, p, seed);
        var (simt, _) = RunOps(other, input, quantized, m, inFeatures, outFeatures, r, scale, p, seed);
        double[] mask = Reference.DropoutFactors(m, inFeatures, p, seed);
        var abs = Step(m, inFeatures, outFeatures, r, input.X, w, input.Bias, input.A, input.B, scale, input.Magnitude, input.Norm, mask,
                       Array.ConvertAll(input.Dy, v => (double)v), abs: true);
        int chain = inFeatures + outFeatures + r + m + 4;
        double[][] absTerms = [abs.Y, abs.Dx, abs.DA, abs.DB, abs.DM];
        string[] names = ["y", "dx", "dA", "dB", "dm"];
        for (int i = 0; i < names.Length; i++)
            Expect.Agree(names[i], cpu[i], simt[i], Tolerance.Bounds(absTerms[i], absTerms[i], chain, DType.F32));
    }
}
