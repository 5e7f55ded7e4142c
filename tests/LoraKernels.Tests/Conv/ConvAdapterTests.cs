// The convolution layers with adapters (LoraConv2d, LokrConv2d, TuckerConv2d) on the CPU and under the SIMT
// emulator, against a dense reference in double that forms ΔW explicitly from the layer's own parameter values
// (s·B·A; s·kron(w1, w2); s·Σ B·S·A per tap) and runs the seven-loop convolution with W0 + ΔW. The tape's
// gradients are checked against the chain rule through ΔW, whose formulas are themselves checked against central
// differences of the reference (exact up to double rounding: the loss Σ dy ⊙ y is multilinear in the parameters).
// Also: inference Forward (formed or applied, by cost) equals the training forward, and merge/unmerge round trips.
//
// Tolerances: Tolerance.Bounds(reference, Σ|terms|, K), K = 2·(C·kh·kw + rank chain) + 8: the applied path chains
// up to four fp32 sums (1×1 stage, kh×kw stage, 1×1 stage, base), each at most C·kh·kw long; Σ|terms| is the same
// reference on absolute values, so any wrong index or missing term (O(|terms|)) fails.
using LoraKernels.Autograd;
using LoraKernels.Layers;

namespace LoraKernels.Tests.Conv;

[TestFixture]
public sealed class ConvAdapterTests
{
    /// <summary>A layer kind: how to build it, ΔW from its parameters (by name), and the parameters' gradients from dΔW.</summary>
    public sealed record AdapterKind(string Name, Func<Device, Tensor, Tensor?, ConvCase, IAdapterLayer> Create,
                                     Func<Func<string, double[]>, ConvCase, double[]> Delta,
                                     Func<Func<string, double[]>, double[], ConvCase, double[][]> Gradients)
    {
        public override string ToString() => Name;
    }

    private const int Rank = 2;
    private const float Alpha = 3f;
    private const double Scale = Alpha / Rank;

    // LoRA: ΔW = s·B [O, r]·A [r, C·kh·kw]; dA = s·Bᵀ·dΔW, dB = s·dΔW·Aᵀ.
    private static readonly AdapterKind Lora = new("lora",
        (device, w0, bias, c) => WithRandomParameters(new LoraConv2d(device, w0, bias, Rank, Alpha, c.G, seed: 3)),
        (p, c) => Scaled(DenseReference.Matmul(p("lora_B"), p("lora_A"), c.O, Patch(c), Rank)),
        (p, d, c) =>
        [
            Scaled(DenseReference.Matmul(p("lora_B"), d, Rank, Patch(c), c.O, transA: true)),
            Scaled(DenseReference.Matmul(d, p("lora_A"), c.O, Rank, Patch(c), transB: true)),
        ]);

    // LoKr: ΔW = s·kron(w1, w2), w2 full [out_k, in_n, kh, kw] or w2_a·w2_b; the gradients split as in KronFactor.
    private static AdapterKind Lokr(int rank) => new($"lokr_r{rank}",
        (device, w0, bias, c) => new LokrConv2d(device, w0, bias, rank, Alpha, c.G, init: LokrInit.Random, seed: 5),
        (p, c) =>
        {
            var (outL, outK, inM, inN) = LokrFactors(c);
            return Scaled(DenseReference.Kron(p("lokr_w1"), outL, inM, W2(p, c, rank), outK, inN, c.KH * c.KW), Alpha / rank / Scale);
        },
        (p, d, c) =>
        {
            var (outL, outK, inM, inN) = LokrFactors(c);
            int block = inN * c.KH * c.KW;
            var (dw1, dw2) = DenseReference.KronGradients(d, p("lokr_w1"), outL, inM, W2(p, c, rank), outK, inN, Alpha / rank, c.KH * c.KW);
            if (p("lokr_w2_a") is not { Length: > 0 } a) return [dw1, dw2];
            return [dw1, DenseReference.Matmul(dw2, p("lokr_w2_b"), outK, rank, block, transB: true),
                    DenseReference.Matmul(a, dw2, rank, block, outK, transA: true)];
        });

    // Tucker: ΔW[o, c, t] = s·Σ_{p,q} B[o, p]·S[p, q, t]·A[q, c]; each gradient sums dΔW against the other two.
    private static readonly AdapterKind Tucker = new("tucker",
        (device, w0, bias, c) => WithRandomParameters(new TuckerConv2d(device, w0, bias, Rank, Rank + 1, Alpha, c.G, seed: 7)),
        (p, c) => Scaled(TuckerDelta(p("tucker_A"), p("tucker_core"), p("tucker_B"), c)),
        (p, d, c) => TuckerGradients(p("tucker_A"), p("tucker_core"), p("tucker_B"), d, c));

    public static IEnumerable<TestCaseData> Cases()
    {
        ConvCase[] shapes =
        [
            new(2, 6, 5, 6, 4, 3, 3, Conv2dGeometry.Square(2, 1)),          // strided and padded
            new(1, 12, 7, 5, 10, 3, 2, new Conv2dGeometry(1, 1, 2, 1, 2, 1)),  // dilated, rectangular kernel
            new(3, 4, 4, 4, 6, 1, 1, new Conv2dGeometry()),                   // pointwise
        ];
        foreach (ConvCase shape in shapes)
            foreach (AdapterKind kind in new[] { Lora, Lokr(8), Lokr(1), Tucker })
                yield return new TestCaseData(kind, shape).SetName($"{kind}_{shape}");
    }

    [TestCaseSource(nameof(Cases))]
    public void ForwardBackwardAndMergeMatchTheDenseReferenceOnCpuAndSimt(AdapterKind kind, ConvCase c)
    {
        var data = new TestData(TestData.SeedFor($"{kind}{c}"));
        float[] x = data.NonZero(c.XCount), w0 = data.NonZero(c.WCount, 0.5f), bias = data.NonZero(c.O), dy = data.NonZero(c.YCount);
        int k = 2 * (c.C * c.KH * c.KW + 2 * Rank + 2) + 8;
        var outputs = new List<float[]>();
        double[] agreeBound = [];
        foreach (Device device in new[] { Device.Cpu, Device.Simt })
        {
            using Tensor w0t = Tensor.FromArray(device, w0, c.O, c.C, c.KH, c.KW);
            using Tensor biast = Tensor.FromArray(device, bias, c.O);
            using IAdapterLayer layer = kind.Create(device, w0t, biast, c);
            var values = layer.Parameters().ToDictionary(p => p.Name, p => DenseReference.Double(p.Value.ToArray()));
            var abs = values.ToDictionary(pair => pair.Key, pair => DenseReference.Abs(pair.Value));
            double[] Get(Dictionary<string, double[]> from, string name) => from.TryGetValue(name, out double[]? v) ? v : [];
            double[] delta = kind.Delta(name => Get(values, name), c), deltaAbs = kind.Delta(name => Get(abs, name), c);
            double[] w = Sum(DenseReference.Double(w0), delta), wAbs = Sum(DenseReference.Abs(w0), deltaAbs);
            double[] y = DenseReference.ConvForward(c, DenseReference.Double(x), w, DenseReference.Double(bias));
            double[] yBound = Tolerance.Bounds(y, DenseReference.ConvForward(c, DenseReference.Abs(x), wAbs, DenseReference.Abs(bias)), k, DType.F32);
            double[] dx = DenseReference.ConvBackwardData(c, DenseReference.Double(dy), w);
            double[] dxBound = Tolerance.Bounds(dx, DenseReference.ConvBackwardData(c, DenseReference.Abs(dy), wAbs), k, DType.F32);
            double[] dDelta = DenseReference.ConvBackwardWeight(c, DenseReference.Double(x), DenseReference.Double(dy));
            double[] dDeltaAbs = DenseReference.ConvBackwardWeight(c, DenseReference.Abs(x), DenseReference.Abs(dy));
            double[][] grads = kind.Gradients(name => Get(values, name), dDelta, c);
            double[][] gradAbs = kind.Gradients(name => Get(abs, name), dDeltaAbs, c);
            Expect.NotVacuous("y", y);
            agreeBound = yBound;

            using Tensor xt = Tensor.FromArray(device, x, c.N, c.C, c.H, c.W);
            using Tensor dyt = Tensor.FromArray(device, dy, c.N, c.O, c.HO, c.WO);
            using (var tape = new Tape())
            {
                var input = new Variable(xt, requiresGrad: true);
                Variable output = layer.Forward(tape, input);
                float[] applied = output.Value.ToArray();
                Expect.Close($"{device} y (applied)", applied, y, yBound);
                outputs.Add(applied);
                tape.Backward(output, dyt);
                Expect.Close($"{device} dx", input.Grad!.ToArray(), dx, dxBound);
                Parameter[] parameters = [.. layer.Parameters()];
                for (int i = 0; i < parameters.Length; i++)
                {
                    Expect.NotVacuous($"d{parameters[i].Name}", grads[i]);
                    Expect.Close($"{device} d{parameters[i].Name}", parameters[i].Grad!.ToArray(), grads[i],
                                 Tolerance.Bounds(grads[i], gradAbs[i], k + c.N * c.HO * c.WO, DType.F32));
                    parameters[i].ZeroGrad();
                }
            }
            using (Tensor inference = layer.Forward(xt))
                Expect.Close($"{device} y (inference)", inference.ToArray(), y, yBound);
            Merge(layer, merge: true);
            using (Tensor merged = layer.Forward(xt))
                Expect.Close($"{device} y (merged)", merged.ToArray(), y, yBound);
            Merge(layer, merge: false);
            Expect.Close($"{device} W0 after unmerge", BaseWeight(layer).ToArray(), DenseReference.Double(w0),
                         Tolerance.Bounds(DenseReference.Double(w0), wAbs, 4, DType.F32));
        }
        Expect.Agree("cpu vs simt y", outputs[0], outputs[1], agreeBound);
    }

    /// <summary>The chain-rule gradients of every kind against central differences of Σ dy ⊙ conv(x, W0 + ΔW).</summary>
    [TestCaseSource(nameof(Kinds))]
    public void ReferenceGradientsMatchCentralDifferences(AdapterKind kind)
    {
        var c = new ConvCase(1, 6, 4, 4, 4, 3, 3, Conv2dGeometry.Square(1, 1));
        var data = new TestData(TestData.SeedFor(kind.Name));
        double[] x = DenseReference.Double(data.NonZero(c.XCount)), w0 = DenseReference.Double(data.NonZero(c.WCount));
        double[] dy = DenseReference.Double(data.NonZero(c.YCount));
        using Tensor w0t = Tensor.FromArray(Device.Cpu, Array.ConvertAll(w0, v => (float)v), c.O, c.C, c.KH, c.KW);
        using IAdapterLayer layer = kind.Create(Device.Cpu, w0t, null, c);
        var values = layer.Parameters().ToDictionary(p => p.Name, p => DenseReference.Double(p.Value.ToArray()));
        double[] Get(string name) => values.TryGetValue(name, out double[]? v) ? v : [];
        double Loss() => DenseReference.Dot(dy, DenseReference.ConvForward(c, x, Sum(w0, kind.Delta(Get, c)), null));
        double[][] chain = kind.Gradients(Get, DenseReference.ConvBackwardWeight(c, x, dy), c);
        int i = 0;
        foreach (string name in layer.Parameters().Select(p => p.Name))
        {
            double[] central = DenseReference.CentralDifferences(values[name], Loss);
            Expect.Close($"d{name}", Array.ConvertAll(central, v => (float)v), chain[i], Array.ConvertAll(chain[i], g => 1e-6 + 1e-6 * Math.Abs(g)));
            Expect.NotVacuous($"d{name}", chain[i++]);
        }
    }

    public static IEnumerable<AdapterKind> Kinds() => [Lora, Lokr(8), Lokr(1), Tucker];

    [Test]
    public void InferenceFormsDeltaWhenCheaperAndAppliesItOtherwise()
    {
        // One image of 2x2 pixels against a 32x32x3x3 weight: applying costs less than forming ΔW; 64 images of 16x16
        // cost far more, so the layer forms ΔW. Both paths give the same output (checked above); here the choice.
        var data = new TestData(17);
        using Tensor w0 = Tensor.FromArray(Device.Cpu, data.NonZero(32 * 32 * 9), 32, 32, 3, 3);
        using var layer = new TuckerConv2d(Device.Cpu, w0, null, 4, 4, 4f, Conv2dGeometry.Square(1, 1));
        Assert.That(layer.FormIsCheaper(new(1, 32, 2, 2, 32, 3, 3, 2, 2, Conv2dGeometry.Square(1, 1))), Is.False, "a tiny batch applies the stages");
        Assert.That(layer.FormIsCheaper(new(64, 32, 16, 16, 32, 3, 3, 16, 16, Conv2dGeometry.Square(1, 1))), Is.True, "a large batch forms ΔW");
    }

    [Test]
    public void BadRanksAndShapesAreRefusedBeforeAnyAllocation()
    {
        var data = new TestData(19);
        using Tensor w0 = Tensor.FromArray(Device.Cpu, data.NonZero(6 * 4 * 9), 6, 4, 3, 3);
        using Tensor linear = Tensor.FromArray(Device.Cpu, data.NonZero(24), 6, 4);
        long before = Device.Cpu.LiveAllocations;
        Assert.That(() => new TuckerConv2d(Device.Cpu, w0, null, 5, 2, 1f),
                    Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("r_in = 5").And.Message.Contains("[1, C] = [1, 4]"));
        Assert.That(() => new TuckerConv2d(Device.Cpu, w0, null, 2, 7, 1f),
                    Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("r_out = 7"));
        Assert.That(() => new LoraConv2d(Device.Cpu, linear, null, 2, 1f), Throws.ArgumentException.With.Message.Contains("[O, C, KH, KW]"));
        Assert.That(() => new LokrConv2d(Device.Cpu, w0, null, 0, 1f), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("r must be >= 1"));
        Assert.That(() => new LoraConv2d(Device.Cpu, w0, null, 2, 1f, new Conv2dGeometry(DilationH: 0)),
                    Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("dilation"));
        Assert.That(Device.Cpu.LiveAllocations, Is.EqualTo(before), "nothing allocated by a refused layer");
        using var layer = new LoraConv2d(Device.Cpu, w0, null, 2, 1f);
        using Tensor small = Tensor.FromArray(Device.Cpu, data.NonZero(4 * 2 * 2), 1, 4, 2, 2);
        Assert.That(() => layer.Forward(small), Throws.ArgumentException.With.Message.Contains("does not fit"));
    }

    private static IAdapterLayer WithRandomParameters(IAdapterLayer layer)
    {
        var data = new TestData(23);
        foreach (Parameter p in layer.Parameters()) p.Value.CopyFrom(data.NonZero((int)p.Value.ElementCount, 0.5f));
        return layer;
    }

    private static void Merge(IAdapterLayer layer, bool merge)
    {
        switch (layer)
        {
            case MergeableLinear<FrozenConv2d> mergeable when merge: mergeable.Merge(); break;
            case MergeableLinear<FrozenConv2d> mergeable: mergeable.Unmerge(); break;
        }
    }

    private static Tensor BaseWeight(IAdapterLayer layer) => ((AdaptedLinear<FrozenConv2d>)layer).Base.Weight;

    private static int Patch(ConvCase c) => c.C * c.KH * c.KW;

    private static double[] Scaled(double[] values, double factor = 1) => Array.ConvertAll(values, v => v * Scale * factor);

    private static double[] Sum(double[] a, double[] b) => a.Select((v, i) => v + b[i]).ToArray();

    private static (int OutL, int OutK, int InM, int InN) LokrFactors(ConvCase c)
    {
        var (inM, inN) = Kron.Factorization(c.C);
        var (outL, outK) = Kron.Factorization(c.O);
        return ((int)outL, (int)outK, (int)inM, (int)inN);
    }

    /// <summary>w2 dense [out_k, in_n·kh·kw]: lokr_w2, or lokr_w2_a·lokr_w2_b.</summary>
    private static double[] W2(Func<string, double[]> p, ConvCase c, int rank)
    {
        var (_, outK, _, inN) = LokrFactors(c);
        return p("lokr_w2") is { Length: > 0 } full ? full : DenseReference.Matmul(p("lokr_w2_a"), p("lokr_w2_b"), outK, inN * c.KH * c.KW, rank);
    }

    private static double[] TuckerDelta(double[] a, double[] s, double[] b, ConvCase c)
    {
        int rIn = Rank, rOut = Rank + 1, taps = c.KH * c.KW;
        var delta = new double[c.O * c.C * taps];
        for (int o = 0; o < c.O; o++)
            for (int ch = 0; ch < c.C; ch++)
                for (int t = 0; t < taps; t++)
                    for (int p = 0; p < rOut; p++)
                        for (int q = 0; q < rIn; q++)
                            delta[(o * c.C + ch) * taps + t] += b[o * rOut + p] * s[(p * rIn + q) * taps + t] * a[q * c.C + ch];
        return delta;
    }

    private static double[][] TuckerGradients(double[] a, double[] s, double[] b, double[] d, ConvCase c)
    {
        int rIn = Rank, rOut = Rank + 1, taps = c.KH * c.KW;
        double[] da = new double[a.Length], ds = new double[s.Length], db = new double[b.Length];
        for (int o = 0; o < c.O; o++)
            for (int ch = 0; ch < c.C; ch++)
                for (int t = 0; t < taps; t++)
                {
                    double g = Scale * d[(o * c.C + ch) * taps + t];
                    for (int p = 0; p < rOut; p++)
                        for (int q = 0; q < rIn; q++)
                        {
                            double bv = b[o * rOut + p], sv = s[(p * rIn + q) * taps + t], av = a[q * c.C + ch];
                            da[q * c.C + ch] += g * bv * sv;
                            ds[(p * rIn + q) * taps + t] += g * bv * av;
                            db[o * rOut + p] += g * sv * av;
                        }
                }
        return [da, ds, db];
    }
}
