// The Kronecker adapter (Ops.Kron, LokrLinear) on the CPU kernels and on kernels/kron.cu (+ lora.cu's base
// product) under the SIMT emulator, against a dense reference in double that forms ΔW = s·kron(w1, w2) explicitly
// (the kernels never do). The reference's factor gradients are checked against central differences.
//
// Tolerances: Tolerance.Bounds (Atol + 2·K·2⁻²⁴·Σ|terms| + εout·|reference|) with K = the base reduction plus the
// chain's two (in + in_m + in_n for y; out + out_l + out_k for dx; M·out_k + in_n and M·in_m + out_l for the
// factors); Σ|terms| is the reference on absolute values. With BF16 storage the GPU path rounds y and dx twice (the
// base is stored before the Kronecker term is added), so 2⁻⁸·Σ|terms| is added for them.
using LoraKernels.Autograd;
using LoraKernels.Layers;
using LoraKernels.Tests.Conv;

namespace LoraKernels.Tests.KronAdapter;

public sealed record KronCase(int M, int OutL, int OutK, int InM, int InN, DType DType)
{
    public int In => InM * InN;
    public int Out => OutL * OutK;
    public override string ToString() => $"M{M}_w1_{OutL}x{InM}_w2_{OutK}x{InN}_{DType}";
}

[TestFixture]
public sealed class KronTests
{
    private const float Scale = 0.625f;

    public static IEnumerable<KronCase> Cases()
    {
        // Tokens 1 and 7 (the decode base on the GPU) and 20 (tiled); factors square, prime, a 1 (kron with a vector),
        // w1 larger than w2, and factors past one 64 tile of the fused kernels.
        int[][] factors = [[4, 4, 4, 4], [3, 5, 7, 11], [1, 13, 5, 1], [11, 2, 6, 3], [2, 66, 65, 2]];
        foreach (DType dtype in new[] { DType.F32, DType.BF16 })
            foreach (int m in new[] { 1, 7, 20 })
                foreach (int[] f in factors)
                    yield return new KronCase(m, f[0], f[1], f[2], f[3], dtype);
    }

    private sealed class KronData
    {
        public readonly KronCase C;
        public readonly float[] X, W0, Bias, W1, W2, Dy;

        public KronData(KronCase c)
        {
            C = c;
            var data = new TestData(TestData.SeedFor(c.ToString()));
            X = data.NonZero(c.M * c.In, 1f, c.DType);
            W0 = data.NonZero(c.Out * c.In, 1f, c.DType);
            Bias = data.NonZero(c.Out, 1f, c.DType);
            W1 = data.NonZero(c.OutL * c.InM, 1f, c.DType);
            W2 = data.NonZero(c.OutK * c.InN, 1f, c.DType);
            Dy = data.NonZero(c.M * c.Out, 1f, c.DType);
        }

        public (double[] Y, double[] Dx, double[] Dw1, double[] Dw2) Reference(Func<float[], double[]> read, double scale)
        {
            double[] kron = DenseReference.Kron(read(W1), C.OutL, C.InM, read(W2), C.OutK, C.InN);
            double[] w = read(W0).Select((v, i) => v + scale * kron[i]).ToArray();
            double[] y = DenseReference.Linear(read(X), w, read(Bias), C.M, C.In, C.Out);
            double[] dx = DenseReference.Matmul(read(Dy), w, C.M, C.In, C.Out);
            double[] dDelta = DenseReference.Matmul(read(Dy), read(X), C.Out, C.In, C.M, transA: true);
            var (dw1, dw2) = DenseReference.KronGradients(dDelta, read(W1), C.OutL, C.InM, read(W2), C.OutK, C.InN, scale);
            return (y, dx, dw1, dw2);
        }
    }

    [TestCaseSource(nameof(Cases))]
    public void ForwardAndBackwardMatchTheDenseReferenceOnCpuAndSimt(KronCase c)
    {
        var data = new KronData(c);
        var exact = data.Reference(DenseReference.Double, Scale);
        var abs = data.Reference(DenseReference.Abs, Math.Abs(Scale));
        Expect.NotVacuous("y", exact.Y);
        Expect.NotVacuous("dw2", exact.Dw2);
        double twice = c.DType == DType.BF16 ? Tolerance.Bf16Rounding : 0;
        double[] Bound(double[] reference, double[] terms, int k, double extra) =>
            Tolerance.Bounds(reference, terms, k, c.DType).Select((b, i) => b + extra * terms[i]).ToArray();
        double[] yBound = Bound(exact.Y, abs.Y, c.In + c.InM + c.InN + 2, twice);
        double[] dxBound = Bound(exact.Dx, abs.Dx, c.Out + c.OutL + c.OutK + 2, twice);
        double[] dw1Bound = Bound(exact.Dw1, abs.Dw1, c.M * c.OutK + c.InN + 2, 0);
        double[] dw2Bound = Bound(exact.Dw2, abs.Dw2, c.M * c.InM + c.OutL + 2, 0);
        var results = new List<float[]>();
        foreach (Device device in new[] { Device.Cpu, Device.Simt })
        {
            using Tensor x = Tensor.FromArray(device, data.X, c.DType, c.M, c.In);
            using Tensor w0 = Tensor.FromArray(device, data.W0, c.DType, c.Out, c.In);
            using Tensor bias = Tensor.FromArray(device, data.Bias, c.DType, c.Out);
            using Tensor w1 = Tensor.FromArray(device, data.W1, c.DType, c.OutL, c.InM);
            using Tensor w2 = Tensor.FromArray(device, data.W2, c.DType, c.OutK, c.InN);
            using Tensor dy = Tensor.FromArray(device, data.Dy, c.DType, c.M, c.Out);
            using Tensor y = Kron.Forward(x, w0, bias, w1, w2, Scale);
            var (dx, dw1, dw2) = Kron.Backward(x, w0, w1, w2, dy, Scale);
            using (dx)
            using (dw1)
            using (dw2)
            {
                float[] yValues = y.ToArray();
                Expect.Close($"{device} y", yValues, exact.Y, yBound);
                Expect.Close($"{device} dx", dx!.ToArray(), exact.Dx, dxBound);
                Expect.Close($"{device} dw1", dw1!.ToArray(), exact.Dw1, dw1Bound);
                Expect.Close($"{device} dw2", dw2!.ToArray(), exact.Dw2, dw2Bound);
                results.Add(yValues);
            }
        }
        Expect.Agree("cpu vs simt y", results[0], results[1], yBound);
    }

    [Test]
    public void ReferenceFactorGradientsMatchCentralDifferences()
    {
        var data = new KronData(new KronCase(3, 2, 3, 3, 2, DType.F32));
        var c = data.C;
        double[] w1 = DenseReference.Double(data.W1), w2 = DenseReference.Double(data.W2);
        double Loss()
        {
            double[] kron = DenseReference.Kron(w1, c.OutL, c.InM, w2, c.OutK, c.InN);
            double[] w = DenseReference.Double(data.W0).Select((v, i) => v + Scale * kron[i]).ToArray();
            return DenseReference.Dot(DenseReference.Double(data.Dy), DenseReference.Linear(DenseReference.Double(data.X), w, null, c.M, c.In, c.Out));
        }
        var chain = data.Reference(DenseReference.Double, Scale);
        // The loss is bilinear in (w1, w2), so the central difference is exact up to double rounding.
        Expect.Close("dw1", Array.ConvertAll(DenseReference.CentralDifferences(w1, Loss), v => (float)v), chain.Dw1, Array.ConvertAll(chain.Dw1, v => 1e-6 * (1 + Math.Abs(v))));
        Expect.Close("dw2", Array.ConvertAll(DenseReference.CentralDifferences(w2, Loss), v => (float)v), chain.Dw2, Array.ConvertAll(chain.Dw2, v => 1e-6 * (1 + Math.Abs(v))));
    }

    [TestCase(DType.F32)]
    [TestCase(DType.BF16)]
    public void MergeAndUnmergeRoundTripOnLinearAndConvolutionWeights(DType dtype)
    {
        var data = new TestData(31);
        const int outL = 3, outK = 2, inM = 5, inN = 2, taps = 6;
        foreach (bool conv in new[] { false, true })
        {
            int spatial = conv ? taps : 1;
            float[] w0 = data.NonZero(outL * outK * inM * inN * spatial, 1f, dtype), w1 = data.NonZero(outL * inM, 1f, dtype),
                    w2 = data.NonZero(outK * inN * spatial, 1f, dtype);
            double[] kron = DenseReference.Kron(DenseReference.Double(w1), outL, inM, DenseReference.Double(w2), outK, inN, spatial);
            double[] merged = w0.Select((v, i) => v + Scale * kron[i]).ToArray();
            double[] bound = w0.Select((v, i) => 1e-6 + 4 * Tolerance.Fp32Unit * (Math.Abs(v) + Math.Abs(Scale * kron[i])) + Tolerance.OutputRounding(dtype) * Math.Abs(merged[i])).ToArray();
            foreach (Device device in new[] { Device.Cpu, Device.Simt })
            {
                long[] shape = conv ? [outL * outK, inM * inN, 2, 3] : [outL * outK, inM * inN];
                using Tensor w = Tensor.FromArray(device, w0, dtype, shape);
                using Tensor t1 = Tensor.FromArray(device, w1, dtype, outL, inM);
                using Tensor t2 = Tensor.FromArray(device, w2, dtype, conv ? [outK, inN, 2, 3] : [outK, inN]);
                Kron.Merge(w, t1, t2, Scale);
                Expect.Close($"{device} merged (conv {conv})", w.ToArray(), merged, bound);
                Kron.Unmerge(w, t1, t2, Scale);
                Expect.Close($"{device} unmerged (conv {conv})", w.ToArray(), DenseReference.Double(w0), bound.Select(b => 2 * b).ToArray());
            }
        }
    }

    // REFERENCE.md §5.2's examples, and PEFT's code where it differs from its docstring: a factor f > 0 that divides d
    // gives (f, d/f) in that order, even when f > d/f; f = 0 (or another value <= 0 but -1) leaves (1, d).
    [TestCase(4096, -1, 64, 64)]
    [TestCase(3072, -1, 48, 64)]
    [TestCase(11008, -1, 86, 128)]
    [TestCase(14336, -1, 112, 128)]
    [TestCase(768, -1, 24, 32)]
    [TestCase(127, -1, 1, 127)]
    [TestCase(12, -1, 3, 4)]
    [TestCase(4096, 4, 4, 1024)]
    [TestCase(127, 4, 1, 127)]
    [TestCase(4096, 8, 8, 512)]
    [TestCase(4096, 128, 128, 32)]
    [TestCase(96, 5, 4, 24)]
    [TestCase(12, 0, 1, 12)]
    [TestCase(1, -1, 1, 1)]
    public void FactorizationFollowsPeft(int dimension, int factor, int m, int n) =>
        Assert.That(Kron.Factorization(dimension, factor), Is.EqualTo(((long)m, (long)n)));

    /// <summary>
    /// PEFT's parameter layout (REFERENCE.md §5.3) for several r, decompose_factor and decompose_both: the names and shapes
    /// of the layer's parameters, and the catalogue's count equal to their total.
    /// </summary>
    [TestCase(96, 40, 4, -1, false, "lokr_w1[5,8] lokr_w2_a[8,4] lokr_w2_b[4,12]")]
    [TestCase(96, 40, 2, -1, true, "lokr_w1_a[5,2] lokr_w1_b[2,8] lokr_w2_a[8,2] lokr_w2_b[2,12]")]
    [TestCase(96, 40, 4, -1, true, "lokr_w1[5,8] lokr_w2_a[8,4] lokr_w2_b[4,12]")]
    [TestCase(96, 40, 6, -1, false, "lokr_w1[5,8] lokr_w2[8,12]")]
    [TestCase(96, 40, 2, 4, false, "lokr_w1[4,4] lokr_w2_a[10,2] lokr_w2_b[2,24]")]
    [TestCase(97, 31, 2, -1, false, "lokr_w1[1,1] lokr_w2_a[31,2] lokr_w2_b[2,97]")]
    public void ParametersFollowPeftsLayout(int inFeatures, int outFeatures, int r, int factor, bool both, string expected)
    {
        var data = new TestData(37);
        using Tensor w0 = Tensor.FromArray(Device.Cpu, data.NonZero(outFeatures * inFeatures), outFeatures, inFeatures);
        using var layer = new LokrLinear(Device.Cpu, w0, null, r, 8f, factor, both);
        string layout = string.Join(" ", layer.Parameters().Select(p => $"{p.Name}[{string.Join(",", p.Value.Shape)}]"));
        Assert.That(layout, Is.EqualTo(expected));
        var options = new LoraKernels.Variants.AdapterOptions { Rank = r, LoKrFactor = factor, LoKrDecomposeBoth = both };
        Assert.That(LoraKernels.Variants.Catalogue.Get("lokr").TrainableParameters(inFeatures, outFeatures, options),
                    Is.EqualTo(layer.Parameters().Sum(p => p.Value.ElementCount)));
        Assert.That(layer.Scale, Is.EqualTo(8f / r), "s = alpha/r, full factors or not");
    }

    [TestCase(LokrInit.Default, "lokr_w1")]
    [TestCase(LokrInit.Lycoris, "lokr_w2_b")]
    public void PeftsInitialisationsStartFromTheBaseLayer(LokrInit init, string zero)
    {
        var data = new TestData(41);
        using Tensor w0 = Tensor.FromArray(Device.Cpu, data.NonZero(40 * 96), 40, 96);
        using Tensor bias = Tensor.FromArray(Device.Cpu, data.NonZero(40), 40);
        using Tensor x = Tensor.FromArray(Device.Cpu, data.NonZero(3 * 96), 3, 96);
        using var layer = new LokrLinear(Device.Cpu, w0, bias, 2, 8f, init: init, seed: 3);
        foreach (Parameter p in layer.Parameters())
        {
            float[] values = p.Value.ToArray();
            if (p.Name == zero) Assert.That(values.All(v => v == 0f), Is.True, $"{p.Name} starts at zero");
            else
            {
                // kaiming_uniform(a = √5): U(±1/√fan_in), fan_in = the second dimension.
                double bound = 1 / Math.Sqrt(p.Value.Shape[1]);
                Assert.That(values.All(v => Math.Abs(v) <= bound) && values.Any(v => Math.Abs(v) > bound / 2), Is.True, $"{p.Name} ~ U(±{bound})");
            }
        }
        double[] baseY = DenseReference.Linear(DenseReference.Double(x.ToArray()), DenseReference.Double(w0.ToArray()), DenseReference.Double(bias.ToArray()), 3, 96, 40);
        using Tensor y = layer.Forward(x);
        Expect.Close("y = base", y.ToArray(), baseY, Array.ConvertAll(baseY, v => 1e-4 + 1e-5 * Math.Abs(v)));
    }

    /// <summary>
    /// The layer on both devices with low-rank w1 and w2 (decompose_both): the tape's gradients of w1_a, w1_b, w2_a, w2_b
    /// follow from the dense factor gradients by dA = dW·bᵀ, dB = aᵀ·dW; merged and unmerged forwards agree.
    /// </summary>
    [TestCase(DeviceKind.Cpu)]
    [TestCase(DeviceKind.Simt)]
    public void LowRankFactorGradientsAndMergeFollowTheChainRule(DeviceKind kind)
    {
        Device device = kind == DeviceKind.Cpu ? Device.Cpu : Device.Simt;
        const int inFeatures = 96, outFeatures = 40, r = 2, m = 5;
        var data = new TestData(43);
        float[] x = data.NonZero(m * inFeatures), w0 = data.NonZero(outFeatures * inFeatures, 0.5f), dy = data.NonZero(m * outFeatures);
        using Tensor w0t = Tensor.FromArray(device, w0, outFeatures, inFeatures);
        using var layer = new LokrLinear(device, w0t, null, r, 8f, decomposeBoth: true, init: LokrInit.Random, seed: 5);
        var (outL, outK, inM, inN) = layer.Factors;
        double[] P(Parameter p) => DenseReference.Double(p.Value.ToArray());
        double[] w1 = DenseReference.Matmul(P(layer.W1A!), P(layer.W1B!), outL, inM, r);
        double[] w2 = DenseReference.Matmul(P(layer.W2A!), P(layer.W2B!), outK, inN, r);
        double[] kron = DenseReference.Kron(w1, outL, inM, w2, outK, inN);
        double[] w = DenseReference.Double(w0).Select((v, i) => v + layer.Scale * kron[i]).ToArray();
        double[] y = DenseReference.Linear(DenseReference.Double(x), w, null, m, inFeatures, outFeatures);
        double[] dDelta = DenseReference.Matmul(DenseReference.Double(dy), DenseReference.Double(x), outFeatures, inFeatures, m, transA: true);
        var (dw1, dw2) = DenseReference.KronGradients(dDelta, w1, outL, inM, w2, outK, inN, layer.Scale);
        double[][] expected =
        [
            DenseReference.Matmul(dw1, P(layer.W1B!), outL, r, inM, transB: true), DenseReference.Matmul(P(layer.W1A!), dw1, r, inM, outL, transA: true),
            DenseReference.Matmul(dw2, P(layer.W2B!), outK, r, inN, transB: true), DenseReference.Matmul(P(layer.W2A!), dw2, r, inN, outK, transA: true),
        ];
        // Relative 1e-4 of each element's scale: the chain adds a handful of fp32 roundings over sums of a few hundred terms.
        static double[] Loose(double[] reference) => Array.ConvertAll(reference, v => 1e-4 * (1 + Math.Abs(v)));
        using Tensor xt = Tensor.FromArray(device, x, m, inFeatures);
        using Tensor dyt = Tensor.FromArray(device, dy, m, outFeatures);
        using (var tape = new Tape())
        {
            Variable output = layer.Forward(tape, new Variable(xt));
            Expect.Close("y", output.Value.ToArray(), y, Loose(y));
            tape.Backward(output, dyt);
            Parameter[] parameters = [.. layer.Parameters()];
            Assert.That(parameters.Select(p => p.Name), Is.EqualTo(new[] { "lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b" }));
            for (int i = 0; i < parameters.Length; i++)
            {
                Expect.NotVacuous(parameters[i].Name, expected[i]);
                Expect.Close($"d{parameters[i].Name}", parameters[i].Grad!.ToArray(), expected[i], Loose(expected[i]));
            }
        }
        layer.Merge();
        Assert.That(layer.Merged, Is.True);
        using (Tensor merged = layer.Forward(xt)) Expect.Close("merged y", merged.ToArray(), y, Loose(y));
        Assert.That(() => layer.Forward(new Tape(), new Variable(xt)), Throws.InvalidOperationException.With.Message.Contains("Unmerge"));
        layer.Unmerge();
        Expect.Close("W0 after unmerge", layer.W0.ToArray(), DenseReference.Double(w0), Loose(DenseReference.Double(w0)));
    }

    [TestCase(DeviceKind.Cpu)]
    [TestCase(DeviceKind.Simt)]
    public void FactorsThatDoNotTileTheWeightAreRefusedBeforeAnyLaunch(DeviceKind kind)
    {
        Device device = kind == DeviceKind.Cpu ? Device.Cpu : Device.Simt;
        var data = new TestData(47);
        using Tensor x = Tensor.FromArray(device, data.NonZero(2 * 28), 2, 28);
        using Tensor w0 = Tensor.FromArray(device, data.NonZero(16 * 28), 16, 28);
        using Tensor w1 = Tensor.FromArray(device, data.NonZero(3 * 4), 3, 4);
        using Tensor w1Good = Tensor.FromArray(device, data.NonZero(4 * 4), 4, 4);
        using Tensor w2 = Tensor.FromArray(device, data.NonZero(4 * 7), 4, 7);
        using Tensor w2Bad = Tensor.FromArray(device, data.NonZero(4 * 6), 4, 6);
        using Tensor w2Bf16 = Tensor.FromArray(device, data.NonZero(4 * 7), DType.BF16, 4, 7);
        using Tensor dyBad = Tensor.FromArray(device, data.NonZero(2 * 15), 2, 15);
        long before = device.LiveAllocations;
        Assert.That(() => Kron.Forward(x, w0, null, w1, w2, 1f),
                    Throws.ArgumentException.With.Message.Contains("[12, 28]").And.Message.Contains("divide").And.Property("ParamName").EqualTo("w1"));
        Assert.That(() => Kron.Forward(x, w0, null, w1Good, w2Bad, 1f),
                    Throws.ArgumentException.With.Message.Contains("in = in_m·in_n = 28").And.Property("ParamName").EqualTo("w2"));
        Assert.That(() => Kron.Forward(x, w0, null, w1Good, w2Bf16, 1f), Throws.ArgumentException.With.Property("ParamName").EqualTo("w2"));
        Assert.That(() => Kron.Backward(x, w0, w1Good, w2, dyBad, 1f), Throws.ArgumentException.With.Property("ParamName").EqualTo("dy"));
        Assert.That(() => Kron.Forward(x, w0, null, w1Good, w2, float.NaN), Throws.InstanceOf<ArgumentOutOfRangeException>());
        Assert.That(() => Kron.Merge(w0, w1, w2, 1f), Throws.ArgumentException.With.Property("ParamName").EqualTo("w1"));
        Assert.That(() => new LokrLinear(device, w0, null, 0, 8f), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("r must be >= 1"));
        Assert.That(() => new LokrLinear(device, w0, null, 4, 8f, decomposeFactor: 0), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Property("ParamName").EqualTo("decomposeFactor"));
        Assert.That(device.LiveAllocations, Is.EqualTo(before), "nothing allocated by a refused call");
    }
}
