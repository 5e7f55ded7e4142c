// The Tucker adapter (Ops.Tucker, TuckerLinear, TuckerFactors) on the CPU kernels and under the SIMT emulator
// (kernels/tucker.cu's batched product with kernels/lora.cu), against a dense reference in double that forms
// ΔW = s·B·S·A explicitly; the reference's gradients are checked against central differences.
//
// Tolerances: Tolerance.Bounds with K = the longest fp32 chain (in + r_in + r_out for y, out + r_in + r_out for dx,
// M + the fold's and split's lengths for the factors); Σ|terms| from the reference on absolute values. With BF16
// storage the GPU path stores the folded B' = B·S and G = s·dyᵀ·u as bf16 (one more rounding of every adapter term,
// as VeRA's fold: kernels/vera.cu), so 2⁻⁸·Σ|terms| is added.
using LoraKernels.Autograd;
using LoraKernels.Layers;
using LoraKernels.Tests.Conv;

namespace LoraKernels.Tests.TuckerAdapter;

public sealed record TuckerCase(int M, int In, int Out, int RIn, int ROut, DType DType)
{
    public override string ToString() => $"M{M}_in{In}_out{Out}_rin{RIn}_rout{ROut}_{DType}";
}

[TestFixture]
public sealed class TuckerTests
{
    private const float Scale = 0.75f;

    public static IEnumerable<TuckerCase> Cases()
    {
        foreach (DType dtype in new[] { DType.F32, DType.BF16 })
        {
            yield return new TuckerCase(1, 7, 5, 3, 2, dtype);
            yield return new TuckerCase(17, 33, 20, 8, 5, dtype);
            yield return new TuckerCase(6, 70, 67, 1, 13, dtype);
        }
    }

    private sealed class TuckerData
    {
        public readonly TuckerCase C;
        public readonly float[] X, W0, Bias, A, S, B, Dy;

        public TuckerData(TuckerCase c)
        {
            C = c;
            var data = new TestData(TestData.SeedFor(c.ToString()));
            X = data.NonZero(c.M * c.In, 1f, c.DType);
            W0 = data.NonZero(c.Out * c.In, 1f, c.DType);
            Bias = data.NonZero(c.Out, 1f, c.DType);
            A = data.NonZero(c.RIn * c.In, 1f, c.DType);
            S = data.NonZero(c.ROut * c.RIn, 1f, c.DType);
            B = data.NonZero(c.Out * c.ROut, 1f, c.DType);
            Dy = data.NonZero(c.M * c.Out, 1f, c.DType);
        }

        /// <summary>y, dx and the factor gradients with ΔW = s·B·S·A formed; dΔW = dyᵀx, dA = s·(BS)ᵀdΔW, dS = s·BᵀdΔW·Aᵀ, dB = s·dΔW·(SA)ᵀ.</summary>
        public (double[] Y, double[] Dx, double[] DA, double[] DS, double[] DB) Reference(Func<float[], double[]> read, double scale,
                                                                                          double[]? a = null, double[]? s = null, double[]? b = null)
        {
            var c = C;
            a ??= read(A);
            s ??= read(S);
            b ??= read(B);
            double[] bs = DenseReference.Matmul(b, s, c.Out, c.RIn, c.ROut), sa = DenseReference.Matmul(s, a, c.ROut, c.In, c.RIn);
            double[] delta = DenseReference.Matmul(bs, a, c.Out, c.In, c.RIn);
            double[] w = read(W0).Select((v, i) => v + scale * delta[i]).ToArray();
            double[] y = DenseReference.Linear(read(X), w, read(Bias), c.M, c.In, c.Out);
            double[] dx = DenseReference.Matmul(read(Dy), w, c.M, c.In, c.Out);
            double[] dDelta = DenseReference.Matmul(read(Dy), read(X), c.Out, c.In, c.M, transA: true);
            double[] da = Array.ConvertAll(DenseReference.Matmul(bs, dDelta, c.RIn, c.In, c.Out, transA: true), v => scale * v);
            double[] dsLeft = DenseReference.Matmul(b, dDelta, c.ROut, c.In, c.Out, transA: true);
            double[] ds = Array.ConvertAll(DenseReference.Matmul(dsLeft, a, c.ROut, c.RIn, c.In, transB: true), v => scale * v);
            double[] db = Array.ConvertAll(DenseReference.Matmul(dDelta, sa, c.Out, c.ROut, c.In, transB: true), v => scale * v);
            return (y, dx, da, ds, db);
        }
    }

    [TestCaseSource(nameof(Cases))]
    public void ForwardAndBackwardMatchTheDenseReferenceOnCpuAndSimt(TuckerCase c)
    {
        var data = new TuckerData(c);
        var exact = data.Reference(DenseReference.Double, Scale);
        var abs = data.Reference(DenseReference.Abs, Scale);
        Expect.NotVacuous("y", exact.Y);
        Expect.NotVacuous("dS", exact.DS);
        double extra = c.DType == DType.BF16 ? Tolerance.Bf16Rounding : 0;
        double[] Bound(double[] reference, double[] terms, int k) =>
            Tolerance.Bounds(reference, terms, k, c.DType).Select((b, i) => b + extra * terms[i]).ToArray();
        int chain = c.RIn + c.ROut + 4;
        var results = new List<float[]>();
        foreach (Device device in new[] { Device.Cpu, Device.Simt })
        {
            using Tensor x = Tensor.FromArray(device, data.X, c.DType, c.M, c.In);
            using Tensor w0 = Tensor.FromArray(device, data.W0, c.DType, c.Out, c.In);
            using Tensor bias = Tensor.FromArray(device, data.Bias, c.DType, c.Out);
            using Tensor a = Tensor.FromArray(device, data.A, c.DType, c.RIn, c.In);
            using Tensor s = Tensor.FromArray(device, data.S, c.DType, c.ROut, c.RIn);
            using Tensor b = Tensor.FromArray(device, data.B, c.DType, c.Out, c.ROut);
            using Tensor dy = Tensor.FromArray(device, data.Dy, c.DType, c.M, c.Out);
            var (y, u) = Tucker.Forward(x, w0, bias, a, s, b, Scale);
            var (dx, dA, dS, dB) = Tucker.Backward(x, w0, a, s, b, u, dy, Scale);
            using (y)
            using (u)
            using (dx)
            using (dA)
            using (dS)
            using (dB)
            {
                float[] yValues = y.ToArray();
                Expect.Close($"{device} y", yValues, exact.Y, Bound(exact.Y, abs.Y, c.In + chain));
                Expect.Close($"{device} dx", dx!.ToArray(), exact.Dx, Bound(exact.Dx, abs.Dx, c.Out + chain));
                Expect.Close($"{device} dA", dA!.ToArray(), exact.DA, Bound(exact.DA, abs.DA, c.M + c.Out + chain));
                Expect.Close($"{device} dS", dS!.ToArray(), exact.DS, Bound(exact.DS, abs.DS, c.M + c.Out + c.In + chain));
                Expect.Close($"{device} dB", dB!.ToArray(), exact.DB, Bound(exact.DB, abs.DB, c.M + c.In + chain));
                results.Add(yValues);
            }
        }
        Expect.Agree("cpu vs simt y", results[0], results[1], Bound(exact.Y, abs.Y, c.In + chain));
    }

    [Test]
    public void ReferenceGradientsMatchCentralDifferences()
    {
        var data = new TuckerData(new TuckerCase(3, 5, 4, 2, 3, DType.F32));
        double[] a = DenseReference.Double(data.A), s = DenseReference.Double(data.S), b = DenseReference.Double(data.B);
        double Loss() => DenseReference.Dot(DenseReference.Double(data.Dy), data.Reference(DenseReference.Double, Scale, a, s, b).Y);
        var chain = data.Reference(DenseReference.Double, Scale, a, s, b);
        // The loss is linear in each of A, S and B, so the central difference is exact up to double rounding.
        static double[] Bound(double[] g) => Array.ConvertAll(g, v => 1e-6 * (1 + Math.Abs(v)));
        Expect.Close("dA", Array.ConvertAll(DenseReference.CentralDifferences(a, Loss), v => (float)v), chain.DA, Bound(chain.DA));
        Expect.Close("dS", Array.ConvertAll(DenseReference.CentralDifferences(s, Loss), v => (float)v), chain.DS, Bound(chain.DS));
        Expect.Close("dB", Array.ConvertAll(DenseReference.CentralDifferences(b, Loss), v => (float)v), chain.DB, Bound(chain.DB));
    }

    /// <summary>X ×_mode U for every mode of a 4-D tensor: Y[.., j, ..] = Σ_i U[j, i]·X[.., i, ..].</summary>
    [TestCase(DType.F32)]
    [TestCase(DType.BF16)]
    public void ModeProductsMatchTheReferenceOnCpuAndSimt(DType dtype)
    {
        int[] dims = [3, 5, 2, 7];
        var data = new TestData(53);
        float[] x = data.NonZero(dims.Aggregate(1, (p, d) => p * d), 1f, dtype);
        for (int mode = 0; mode < dims.Length; mode++)
        {
            int j = 4 + mode, i = dims[mode];
            float[] u = data.NonZero(j * i, 1f, dtype);
            int before = dims.Take(mode).Aggregate(1, (p, d) => p * d), after = dims.Skip(mode + 1).Aggregate(1, (p, d) => p * d);
            var reference = new double[before * j * after];
            var terms = new double[reference.Length];
            for (int b = 0; b < before; b++)
                for (int jj = 0; jj < j; jj++)
                    for (int t = 0; t < after; t++)
                        for (int ii = 0; ii < i; ii++)
                        {
                            double term = (double)u[jj * i + ii] * x[(b * i + ii) * after + t];
                            reference[(b * j + jj) * after + t] += term;
                            terms[(b * j + jj) * after + t] += Math.Abs(term);
                        }
            foreach (Device device in new[] { Device.Cpu, Device.Simt })
            {
                using Tensor xt = Tensor.FromArray(device, x, dtype, dims.Select(d => (long)d).ToArray());
                using Tensor ut = Tensor.FromArray(device, u, dtype, j, i);
                using Tensor y = Tucker.ModeProduct(xt, ut, mode);
                long[] shape = dims.Select(d => (long)d).ToArray();
                shape[mode] = j;
                Assert.That(y.Shape, Is.EqualTo(shape), $"mode {mode} shape");
                Expect.Close($"{device} mode {mode}", y.ToArray(), reference, Tolerance.Bounds(reference, terms, i, dtype));
            }
        }
    }

    [TestCase(DType.F32)]
    [TestCase(DType.BF16)]
    public void MergeAndUnmergeRoundTripOnLinearAndConvolutionWeights(DType dtype)
    {
        foreach (bool conv in new[] { false, true })
        {
            if (conv && dtype == DType.BF16) continue;  // convolution weights are F32
            const int o = 6, c = 5, rIn = 2, rOut = 3, kh = 2, kw = 3;
            int taps = conv ? kh * kw : 1;
            var data = new TestData(59);
            float[] w0 = data.NonZero(o * c * taps, 1f, dtype), a = data.NonZero(rIn * c, 1f, dtype),
                    s = data.NonZero(rOut * rIn * taps, 1f, dtype), b = data.NonZero(o * rOut, 1f, dtype);
            var merged = new double[w0.Length];
            var terms = new double[w0.Length];
            for (int oo = 0; oo < o; oo++)
                for (int cc = 0; cc < c; cc++)
                    for (int t = 0; t < taps; t++)
                    {
                        int at = (oo * c + cc) * taps + t;
                        merged[at] = w0[at];
                        terms[at] = Math.Abs(w0[at]);
                        for (int p = 0; p < rOut; p++)
                            for (int q = 0; q < rIn; q++)
                            {
                                double term = Scale * b[oo * rOut + p] * s[(p * rIn + q) * taps + t] * a[q * c + cc];
                                merged[at] += term;
                                terms[at] += Math.Abs(term);
                            }
                    }
            double[] bound = Tolerance.Bounds(merged, terms, rIn + rOut + 3, dtype).Select((v, i) => v + Tolerance.OutputRounding(dtype) * terms[i]).ToArray();
            foreach (Device device in new[] { Device.Cpu, Device.Simt })
            {
                using Tensor w = Tensor.FromArray(device, w0, dtype, conv ? [o, c, kh, kw] : [o, c]);
                using Tensor at = Tensor.FromArray(device, a, dtype, rIn, c);
                using Tensor st = Tensor.FromArray(device, s, dtype, conv ? [rOut, rIn, kh, kw] : [rOut, rIn]);
                using Tensor bt = Tensor.FromArray(device, b, dtype, o, rOut);
                Tucker.Merge(w, at, st, bt, Scale);
                Expect.Close($"{device} merged (conv {conv})", w.ToArray(), merged, bound);
                Tucker.Unmerge(w, at, st, bt, Scale);
                Expect.Close($"{device} unmerged (conv {conv})", w.ToArray(), DenseReference.Double(w0), bound.Select(v => 2 * v).ToArray());
            }
        }
    }

    /// <summary>
    /// A FLoRA layer starts as the base layer (S = 0); its first backward gives S a gradient and A, B none (they meet S = 0);
    /// two LoTR layers over shared factors sum their contributions into the shared A and B, which equal the two layers' own.
    /// </summary>
    [TestCase(DeviceKind.Cpu)]
    [TestCase(DeviceKind.Simt)]
    public void LayersStartAtTheBaseAndSharedFactorsSumTheirGradients(DeviceKind kind)
    {
        Device device = kind == DeviceKind.Cpu ? Device.Cpu : Device.Simt;
        const int inFeatures = 12, outFeatures = 10, m = 4;
        var data = new TestData(61);
        using Tensor w0 = Tensor.FromArray(device, data.NonZero(outFeatures * inFeatures), outFeatures, inFeatures);
        using Tensor w1 = Tensor.FromArray(device, data.NonZero(outFeatures * inFeatures), outFeatures, inFeatures);
        using Tensor x = Tensor.FromArray(device, data.NonZero(m * inFeatures), m, inFeatures);
        using Tensor dy = Tensor.FromArray(device, data.NonZero(m * outFeatures), m, outFeatures);
        using var flora = new TuckerLinear(device, w0, null, 3, 2, 4f, seed: 1);
        double[] baseY = DenseReference.Linear(DenseReference.Double(x.ToArray()), DenseReference.Double(w0.ToArray()), null, m, inFeatures, outFeatures);
        using (Tensor y = flora.Forward(x)) Expect.Close("y = base at init", y.ToArray(), baseY, Array.ConvertAll(baseY, v => 1e-5 * (1 + Math.Abs(v))));
        using (var tape = new Tape())
        {
            Variable output = flora.Forward(tape, new Variable(x));
            tape.Backward(output, dy);
            Assert.That(flora.Core.Grad!.ToArray().Any(v => v != 0f), Is.True, "S gets a gradient");
            Assert.That(flora.A.Grad!.ToArray().All(v => v == 0f) && flora.B.Grad!.ToArray().All(v => v == 0f), Is.True, "A and B meet S = 0");
        }

        using var factors = TuckerFactors.Create(device, inFeatures, outFeatures, 3, 2, seed: 2);
        using var first = new TuckerLinear(device, w0, null, factors, 4f);
        using var second = new TuckerLinear(device, w1, null, factors, 4f);
        foreach (TuckerLinear layer in new[] { first, second }) layer.Core.Value.CopyFrom(data.NonZero(2 * 3));
        Assert.That(first.Parameters().Concat(second.Parameters()).Distinct().Count(), Is.EqualTo(4), "A and B shared, one core each");
        Assert.That(() => new LoraKernels.Optim.AdamW(first.Parameters().Concat(second.Parameters())),
                    Throws.ArgumentException.With.Message.Contains("more than once"), "an optimizer takes the distinct set");
        float[] Gradient(Parameter p) => p.Grad!.ToArray();
        float[][] alone = new float[2][];
        foreach (TuckerLinear layer in new[] { first, second })
        {
            using var tape = new Tape();
            tape.Backward(layer.Forward(tape, new Variable(x)), dy);
            alone[layer == first ? 0 : 1] = Gradient(factors.A);
            factors.A.ZeroGrad();
            factors.B.ZeroGrad();
        }
        foreach (TuckerLinear layer in new[] { first, second })  // parameters sum gradients across backward passes
        {
            using var tape = new Tape();
            tape.Backward(layer.Forward(tape, new Variable(x)), dy);
        }
        double[] sum = alone[0].Select((v, i) => (double)v + alone[1][i]).ToArray();
        Expect.NotVacuous("dA", sum);
        Expect.Close("shared dA = the layers' sum", Gradient(factors.A), sum, Array.ConvertAll(sum, v => 1e-5 * (1 + Math.Abs(v))));
    }

    [Test]
    public void RanksAboveTheirDimensionAndMismatchedFactorsAreRefused()
    {
        var data = new TestData(67);
        using Tensor w0 = Tensor.FromArray(Device.Cpu, data.NonZero(6 * 5), 6, 5);
        using Tensor x = Tensor.FromArray(Device.Cpu, data.NonZero(2 * 5), 2, 5);
        using Tensor a = Tensor.FromArray(Device.Cpu, data.NonZero(6 * 5), 6, 5);
        using Tensor s = Tensor.FromArray(Device.Cpu, data.NonZero(2 * 6), 2, 6);
        using Tensor b = Tensor.FromArray(Device.Cpu, data.NonZero(6 * 2), 6, 2);
        using Tensor a2 = Tensor.FromArray(Device.Cpu, data.NonZero(3 * 5), 3, 5);
        using Tensor sBad = Tensor.FromArray(Device.Cpu, data.NonZero(3 * 3), 3, 3);
        long before = Device.Cpu.LiveAllocations;
        Assert.That(() => Tucker.Forward(x, w0, null, a, s, b, 1f),
                    Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("r_in = 6").And.Message.Contains("[1, in] = [1, 5]"));
        Assert.That(() => Tucker.Forward(x, w0, null, a2, sBad, b, 1f),
                    Throws.ArgumentException.With.Property("ParamName").EqualTo("core").And.Message.Contains("[r_out, r_in] = [2, 3]"));
        Assert.That(() => new TuckerLinear(Device.Cpu, w0, null, 2, 7, 1f),
                    Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("r_out = 7"));
        Assert.That(() => Tucker.ModeProduct(x, a2, 2), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Property("ParamName").EqualTo("mode"));
        Assert.That(() => Tucker.ModeProduct(x, s, 1), Throws.ArgumentException.With.Property("ParamName").EqualTo("u"));
        using var factors = TuckerFactors.Create(Device.Cpu, 4, 6, 2, 2);
        Assert.That(() => new TuckerLinear(Device.Cpu, w0, null, factors, 1f), Throws.ArgumentException.With.Message.Contains("shared factors"));
        Assert.That(Device.Cpu.LiveAllocations, Is.EqualTo(before + 2), "nothing allocated by refused calls (the factors made here are 2 tensors)");
    }
}
