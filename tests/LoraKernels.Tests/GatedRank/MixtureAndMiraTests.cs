// The mixture of rank-1 experts as layers sharing one pool, and MiRA's search: its mirror step keeps a distribution,
// and on a task where one rank is clearly best it chooses that rank and returns a trained adapter with a full log.
using LoraKernels.Autograd;
using LoraKernels.Layers;
using LoraKernels.Optim;
using LoraKernels.Variants;

namespace LoraKernels.Tests.GatedRank;

[TestFixture]
public sealed class MixtureAndMiraTests
{
    /// <summary>
    /// Two modules of one width share a pool: neither lists it among its parameters (the pool trains once), both read it,
    /// and one backward through both accumulates the pool's gradient from both (the sum of each module's alone). Each
    /// module's recording adds its load-balancing loss E·Σ_j f_j·P_j to the tape's loss.
    /// </summary>
    [TestCase(DeviceKind.Cpu)]
    [TestCase(DeviceKind.Simt)]
    public void ModulesOfOneWidthShareOnePool_in10_out10_E6_k2(DeviceKind kind)
    {
        Device device = kind == DeviceKind.Cpu ? Device.Cpu : Device.Simt;
        var data = new TestData(41);
        using var pool = RankOneExpertPool.Create(device, 6, 10, 10, seed: 3);
        pool.B.Value.CopyFrom(data.NonZero(10 * 6));
        using Tensor w1 = Tensor.FromArray(device, data.NonZero(100, 0.3f), 10, 10), w2 = Tensor.FromArray(device, data.NonZero(100, 0.3f), 10, 10);
        using var first = new RankOneMixtureLinear(device, w1, null, pool, 6, 2, alpha: 2f, seed: 1);
        using var second = new RankOneMixtureLinear(device, w2, null, pool, 6, 2, alpha: 2f, seed: 2);
        Assert.That(first.Parameters(), Is.EqualTo(new[] { first.Router }), "a shared pool is not the module's to train");
        Assert.That(first.Pool, Is.SameAs(second.Pool));
        using var optimizer = new AdamW(pool.Parameters().Concat(first.Parameters()).Concat(second.Parameters()), lr: 1e-3f);

        using Tensor x = Tensor.FromArray(device, data.NonZero(5 * 10), 5, 10);
        using Tensor dy = Tensor.FromArray(device, data.NonZero(5 * 10), 5, 10);
        float[] Gradient(params RankOneMixtureLinear[] modules)
        {
            pool.A.ZeroGrad();
            using var tape = new Tape();
            Variable h = new(x);
            foreach (RankOneMixtureLinear module in modules) h = module.Forward(tape, h);
            tape.Backward(h, dy);
            return pool.A.Grad!.ToArray();
        }
        // Through the first module alone, then the first feeding the second: the pool's gradient is the sum of both uses.
        float[] alone = Gradient(first);
        Assert.That(first.LastBalanceLoss, Is.GreaterThan(0f).And.LessThanOrEqualTo(6f * 2f), "0 < E·Σ_j f_j·P_j ≤ E·k (Σ f = k, Σ P = 1)");
        float[] both = Gradient(first, second);
        Assert.That(both.Zip(alone).Any(p => Math.Abs(p.First - p.Second) > 1e-6f), Is.True, "the second module adds to the pool's gradient");
        Assert.That(optimizer.Step(), Is.True);
    }

    [Test]
    public void MirrorStepKeepsAProbabilityDistribution()
    {
        var data = new TestData(42);
        double[] p = [0.1, 0.2, 0.3, 0.4];
        for (int trial = 0; trial < 200; trial++)
        {
            double scale = trial % 3 == 0 ? 1e6 : 1.0;  // huge gradients too: the log-sum-exp keeps them finite
            double[] g = data.NonZero(4).Select(v => v * scale).ToArray();
            double[] next = MiraSearch.MirrorStep(p, g, 0.7);
            Assert.That(next.All(v => v >= 0 && double.IsFinite(v)), Is.True, $"trial {trial}: [{string.Join(", ", next)}]");
            Assert.That(next.Sum(), Is.EqualTo(1.0).Within(1e-12), $"trial {trial}");
            if (scale == 1.0)
            {
                double z = p.Zip(g).Sum(x => x.First * Math.Exp(-0.7 * x.Second));
                for (int c = 0; c < 4; c++) Assert.That(next[c], Is.EqualTo(p[c] * Math.Exp(-0.7 * g[c]) / z).Within(1e-12), "p·exp(−ηg)/Z");
            }
            p = next.Select(v => 0.9 * v + 0.025).ToArray();  // keep every candidate alive for the next trial
        }
        Assert.That(MiraSearch.MirrorStep([0.5, 0.5], [3.0, -1.0], 0), Is.EqualTo(new[] { 0.5, 0.5 }), "η = 0 moves nothing");
        double[] moved = MiraSearch.MirrorStep([0.5, 0.5], [3.0, -1.0], 1);
        Assert.That(moved[1], Is.GreaterThan(moved[0]), "the candidate with the lower loss gains");
        Assert.That(() => MiraSearch.MirrorStep([0.5, 0.6], [0.0, 0.0], 1), Throws.ArgumentException.With.Message.Contains("not a probability distribution"));
        Assert.That(() => MiraSearch.MirrorStep([0.5, 0.5], [double.NaN, 0.0], 1), Throws.ArgumentException.With.Message.Contains("not finite"));
    }

    /// <summary>
    /// A task where rank 4 is clearly best: the training targets add to W0 a rank-4 change (singular values 3) and a
    /// spurious rank-4 change in other directions (singular values 1.2) that the validation targets lack. An adapter of
    /// rank 1 or 2 misses part of the real change, rank 8 also learns the spurious one; only rank 4 fits validation. MiRA
    /// over {1, 2, 4, 8} must put most of its probability on 4, log every outer step with a valid distribution, and return
    /// a rank-4 LoraLinear whose validation loss is far below the base's.
    /// </summary>
    [Test]
    public void MiraFindsTheRankThatIsClearlyBest_Cpu_in16_out16()
    {
        const int n = 16, batch = 64;
        Device device = Device.Cpu;
        var data = new TestData(43);
        float[] w0 = data.NonZero(n * n, 0.1f);
        // Orthonormal directions from a random matrix (Gram–Schmidt): columns 0-3 real, 4-7 spurious.
        double[][] basis = Orthonormal(data, n, 8), inputs = Orthonormal(data, n, 8);
        float[] real = new float[n * n], spurious = new float[n * n];
        for (int i = 0; i < 8; i++)
            for (int o = 0; o < n; o++)
                for (int c = 0; c < n; c++)
                {
                    double v = basis[i][o] * inputs[i][c];
                    if (i < 4) real[o * n + c] += (float)(3.0 * v);
                    else spurious[o * n + c] += (float)(1.2 * v);
                }
        float[] trainW = w0.Select((v, i) => v + real[i] + spurious[i]).ToArray(), validW = w0.Select((v, i) => v + real[i]).ToArray();
        using Tensor w0Tensor = Tensor.FromArray(device, w0, n, n), trainTensor = Tensor.FromArray(device, trainW, n, n),
                     validTensor = Tensor.FromArray(device, validW, n, n);
        using var trainTeacher = new LoraLinear(device, trainTensor, null, 1, 1f) { Training = false };
        using var validTeacher = new LoraLinear(device, validTensor, null, 1, 1f) { Training = false };
        var trainBatches = new TestData(44);
        var validBatches = new TestData(45);
        float Loss(Tape tape, IReadOnlyList<IAdapterLayer> layers, MiraSplit split, int step)
        {
            TestData source = split == MiraSplit.Train ? trainBatches : validBatches;
            using Tensor x = Tensor.FromArray(device, source.NonZero(batch * n, 1.7f), batch, n);
            using Tensor target = (split == MiraSplit.Train ? trainTeacher : validTeacher).Forward(x);
            float loss = tape.MseLoss(layers[0].Forward(tape, new Variable(x)), target);
            tape.Backward();
            return loss;
        }
        var options = new MiraOptions { CandidateRanks = [1, 2, 4, 8], InitialAlpha = 8f, OuterSteps = 6, InnerSteps = 80, FinalSteps = 60, Seed = 7 };
        using MiraResult result = MiraSearch.Run(device, [(w0Tensor, null)], Loss, options);

        Assert.That(result.Log, Has.Count.EqualTo(options.OuterSteps));
        foreach (MiraOuterStep step in result.Log)
        {
            var probabilities = step.Layers[0].RankProbabilities;
            Assert.That(probabilities.Sum(), Is.EqualTo(1.0).Within(1e-12), $"outer step {step.Step}");
            Assert.That(probabilities.All(v => v >= 0), Is.True);
            Assert.That(step.Layers[0].CandidateLosses, Has.Count.EqualTo(4));
            Assert.That(float.IsFinite(step.Layers[0].Alpha) && step.Layers[0].Alpha > 0, Is.True);
        }
        var last = result.Log[^1].Layers[0];
        TestContext.Out.WriteLine($"π = [{string.Join(", ", last.RankProbabilities.Select(v => v.ToString("F3")))}], " +
                                  $"α = {result.Alphas[0]:F2}, last candidate losses [{string.Join(", ", last.CandidateLosses.Select(v => v.ToString("E2")))}]");
        Assert.That(result.Ranks[0], Is.EqualTo(4), "rank 4 is the one that fits validation");
        Assert.That(last.RankProbabilities[2], Is.GreaterThan(0.5), "most of the probability is on rank 4");
        Assert.That(last.CandidateLosses[2], Is.LessThan(last.CandidateLosses.Where((_, c) => c != 2).Min()), "rank 4's validation loss is the lowest");
        Assert.That(result.TrainLosses, Has.Count.EqualTo((options.OuterSteps + 1) * options.InnerSteps + options.FinalSteps), "warm-up, inner and final steps");

        LoraLinear adapter = result.Adapters[0];
        Assert.That((adapter.Rank, adapter.Alpha), Is.EqualTo((4, result.Alphas[0])));
        adapter.Training = false;
        using var baseOnly = new LoraLinear(device, w0Tensor, null, 1, 1f) { Training = false };
        using Tensor probe = Tensor.FromArray(device, validBatches.NonZero(256 * n, 1.7f), 256, n);
        float Validation(IAdapterLayer layer)
        {
            using Tensor want = validTeacher.Forward(probe), got = layer.Forward(probe);
            return Ops.Losses.Mse(got, want, wantGradient: false).Loss;
        }
        Assert.That(Validation(adapter), Is.LessThan(0.05f * Validation(baseOnly)), "the returned adapter is trained");
    }

    /// <summary>Gram–Schmidt on <paramref name="count"/> random vectors of length <paramref name="length"/>.</summary>
    private static double[][] Orthonormal(TestData data, int length, int count)
    {
        var vectors = new double[count][];
        for (int i = 0; i < count; i++)
        {
            double[] v = data.NonZero(length).Select(x => (double)x).ToArray();
            for (int j = 0; j < i; j++)
            {
                double dot = v.Zip(vectors[j]).Sum(p => p.First * p.Second);
                for (int k = 0; k < length; k++) v[k] -= dot * vectors[j][k];
            }
            double norm = Math.Sqrt(v.Sum(x => x * x));
            vectors[i] = v.Select(x => x / norm).ToArray();
        }
        return vectors;
    }
}
