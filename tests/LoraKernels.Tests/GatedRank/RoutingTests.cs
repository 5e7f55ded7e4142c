// The router's ops (Ops.Routing) and the mixture of rank-1 experts (RankOneMixtureLinear) on the CPU and under the
// emulator: softmax, top-k with renormalisation and the load-balancing loss against references written here, and the
// router's gradient through the whole layer against central differences of a double-precision forward.
using LoraKernels.Autograd;
using LoraKernels.Layers;

namespace LoraKernels.Tests.GatedRank;

[TestFixture]
public sealed class RoutingTests
{
    private const int M = 9, E = 37, K = 3;

    private static double[] SoftmaxReference(float[] logits, int rows, int experts)
    {
        var p = new double[logits.Length];
        for (int m = 0; m < rows; m++)
        {
            double top = double.NegativeInfinity, sum = 0;
            for (int j = 0; j < experts; j++) top = Math.Max(top, logits[m * experts + j]);
            for (int j = 0; j < experts; j++) sum += Math.Exp(logits[m * experts + j] - top);
            for (int j = 0; j < experts; j++) p[m * experts + j] = Math.Exp(logits[m * experts + j] - top) / sum;
        }
        return p;
    }

    /// <summary>The k largest of each row, larger first, equal values by the lower index.</summary>
    private static int[] TopKReference(float[] probs, int rows, int experts, int k)
    {
        var picked = new int[rows * k];
        for (int m = 0; m < rows; m++)
        {
            int[] order = Enumerable.Range(0, experts).OrderByDescending(j => probs[m * experts + j]).ThenBy(j => j).ToArray();
            for (int t = 0; t < k; t++) picked[m * k + t] = order[t];
        }
        return picked;
    }

    [TestCase(DeviceKind.Cpu)]
    [TestCase(DeviceKind.Simt)]
    public void SoftmaxTopKAndBalanceMatchReferences_M9_E37_k3(DeviceKind kind)
    {
        Device device = kind == DeviceKind.Cpu ? Device.Cpu : Device.Simt;
        var data = new TestData(61);
        float[] logits = data.NonZero(M * E, 4f);
        logits[5] = logits[6];  // a tie inside row 0
        double[] pRef = SoftmaxReference(logits, M, E);
        using Tensor l = Tensor.FromArray(device, logits, M, E);
        using Tensor probs = Routing.Softmax(l);
        float[] p = probs.ToArray();
        // GPU: fp32 exp and sums over E; CPU: double, rounded once. 8·E ulps of a probability ≤ 1.
        Expect.Close("probs", p, pRef, Array.ConvertAll(pRef, v => 1e-7 + 8.0 * E * Tolerance.Fp32Unit * v));
        Assert.That(Enumerable.Range(0, M).Select(m => p.Skip(m * E).Take(E).Sum()), Is.All.EqualTo(1f).Within(1e-5f), "rows sum to 1");

        int[] picked = TopKReference(p, M, E, K);
        foreach (bool renormalize in new[] { false, true })
        {
            var (weight, expert) = Routing.TopK(probs, K, renormalize);
            using (weight)
            using (expert)
            {
                Assert.That(expert.ToArray(), Is.EqualTo(picked.Select(v => (float)v).ToArray()), "the same experts, in order");
                float[] w = weight.ToArray();
                for (int m = 0; m < M; m++)
                {
                    double sum = Enumerable.Range(0, K).Sum(t => (double)p[m * E + picked[m * K + t]]);
                    for (int t = 0; t < K; t++)
                    {
                        double want = p[m * E + picked[m * K + t]] / (renormalize ? sum : 1.0);
                        Assert.That(w[m * K + t], Is.EqualTo(want).Within(4e-7 * want + 1e-9), $"weight[{m}, {t}]");
                    }
                }
                // The load-balancing loss: E·Σ_j (count_j/M)·(Σ_m p_mj / M).
                var (loss, stats) = Routing.BalanceLoss(probs, expert);
                using (stats)
                {
                    double want = 0;
                    for (int j = 0; j < E; j++)
                        want += picked.Count(v => v == j) / (double)M * (Enumerable.Range(0, M).Sum(m => (double)p[m * E + j]) / M);
                    want *= E;
                    Assert.That(loss, Is.EqualTo(want).Within(1e-5 * want), "balance loss");
                    using Tensor dBalance = Routing.BalanceLossBackward(stats, M, 0.5f);
                    float[] d = dBalance.ToArray();
                    for (int j = 0; j < E; j++)
                        Assert.That(d[j], Is.EqualTo(0.5 * E * picked.Count(v => v == j) / (double)(M * M)).Within(1e-7), $"d balance / d p[0, {j}]");
                }
            }
        }
    }

    /// <summary>
    /// The softmax and top-k backwards against central differences of their double forwards (the selection fixed: the
    /// step h = 1e-6 moves no probability past another here), for L = Σ dweight ⊙ weight(logits).
    /// </summary>
    [TestCase(DeviceKind.Cpu, true)]
    [TestCase(DeviceKind.Cpu, false)]
    [TestCase(DeviceKind.Simt, true)]
    public void SoftmaxAndTopKBackwardsMatchCentralDifferences_M4_E7_k3(DeviceKind kind, bool renormalize)
    {
        Device device = kind == DeviceKind.Cpu ? Device.Cpu : Device.Simt;
        const int rows = 4, experts = 7, k = 3;
        var data = new TestData(62);
        float[] logits = data.NonZero(rows * experts, 2f);
        float[] dweight = data.NonZero(rows * k);
        int[] picked = TopKReference(Array.ConvertAll(SoftmaxReference(logits, rows, experts), v => (float)v), rows, experts, k);
        double Loss(double[] l)
        {
            double total = 0;
            for (int m = 0; m < rows; m++)
            {
                double top = Enumerable.Range(0, experts).Max(j => l[m * experts + j]);
                double sum = Enumerable.Range(0, experts).Sum(j => Math.Exp(l[m * experts + j] - top));
                double P(int j) => Math.Exp(l[m * experts + j] - top) / sum;
                double s = renormalize ? Enumerable.Range(0, k).Sum(t => P(picked[m * k + t])) : 1.0;
                for (int t = 0; t < k; t++) total += dweight[m * k + t] * P(picked[m * k + t]) / s;
            }
            return total;
        }
        double[] values = Array.ConvertAll(logits, v => (double)v);
        double[] fd = CentralDifference.Of(() => Loss(values), values, h: 1e-6);
        using Tensor l = Tensor.FromArray(device, logits, rows, experts);
        using Tensor probs = Routing.Softmax(l);
        var (weight, expert) = Routing.TopK(probs, k, renormalize);
        using (weight)
        using (expert)
        {
            Assert.That(expert.ToArray(), Is.EqualTo(picked.Select(v => (float)v).ToArray()));
            using Tensor dw = Tensor.FromArray(device, dweight, rows, k);
            using Tensor dProbs = Routing.TopKBackward(probs, expert, weight, dw, renormalize);
            using Tensor dLogits = Routing.SoftmaxBackward(probs, dProbs);
            // fp32 chains of a few terms of size ≤ Σ|dweight|; the central difference errs by ~h² and 1e-10/h.
            double scale = dweight.Sum(v => Math.Abs(v));
            Expect.Close("dlogits", dLogits.ToArray(), fd, Array.ConvertAll(fd, _ => 1e-5 * scale));
            Expect.NotVacuous("dlogits", fd.Where(v => v != 0).ToArray());
        }
    }

    /// <summary>
    /// The mixture layer's router weight gradient (through logits, softmax, top-k with renormalisation and the experts)
    /// and the pool's, from the tape, against central differences of a double-precision forward of the whole layer for
    /// L = Σ dy ⊙ y (balance loss off; its own gradient is checked above). The selection does not change within ±h.
    /// Tolerance: the device runs fp32 chains of length ≤ in + out + k through values of size ≤ Σ|terms|; 1e-4 relative
    /// to the gradient's largest element is far above that and far below a missing or wrong term (O(1) of it).
    /// </summary>
    [TestCase(DeviceKind.Cpu, false)]
    [TestCase(DeviceKind.Simt, false)]
    [TestCase(DeviceKind.Cpu, true)]
    public void MixtureRouterAndPoolGradientsMatchCentralDifferences_M6_in8_out5_E6_k2(DeviceKind kind, bool dense)
    {
        Device device = kind == DeviceKind.Cpu ? Device.Cpu : Device.Simt;
        const int m = 6, inF = 8, outF = 5, experts = 6, k = 2;
        var data = new TestData(63);
        float[] x = data.NonZero(m * inF), w0 = data.NonZero(outF * inF, 0.5f), dy = data.NonZero(m * outF);
        using Tensor w0Tensor = Tensor.FromArray(device, w0, outF, inF);
        using var layer = new RankOneMixtureLinear(device, w0Tensor, null, pool: null, experts, k, alpha: 2f, denseRouting: dense,
                                                   balanceCoefficient: 0f, seed: 5);
        float[] router = data.NonZero(experts * inF, 1.5f), a = data.NonZero(experts * inF), b = data.NonZero(outF * experts);
        layer.Router.Value.CopyFrom(router);
        layer.Pool.A.Value.CopyFrom(a);
        layer.Pool.B.Value.CopyFrom(b);
        float scale = layer.Scale;

        double Loss(double[] wr, double[] pa, double[] pb)
        {
            double total = 0;
            for (int t = 0; t < m; t++)
            {
                double[] logits = new double[experts];
                for (int j = 0; j < experts; j++)
                    for (int c = 0; c < inF; c++) logits[j] += x[t * inF + c] * wr[j * inF + c];
                double top = logits.Max(), sum = logits.Sum(v => Math.Exp(v - top));
                double[] p = logits.Select(v => Math.Exp(v - top) / sum).ToArray();
                double[] gate = new double[experts];
                if (dense) gate = p;
                else
                {
                    int[] order = Enumerable.Range(0, experts).OrderByDescending(j => p[j]).ThenBy(j => j).Take(k).ToArray();
                    double s = order.Sum(j => p[j]);
                    foreach (int j in order) gate[j] = p[j] / s;
                }
                for (int n = 0; n < outF; n++)
                {
                    double y = 0;
                    for (int c = 0; c < inF; c++) y += x[t * inF + c] * w0[n * inF + c];
                    for (int j = 0; j < experts; j++)
                    {
                        if (gate[j] == 0) continue;
                        double h = 0;
                        for (int c = 0; c < inF; c++) h += x[t * inF + c] * pa[j * inF + c];
                        y += scale * gate[j] * h * pb[n * experts + j];
                    }
                    total += dy[t * outF + n] * y;
                }
            }
            return total;
        }
        double[] wrD = Array.ConvertAll(router, v => (double)v), aD = Array.ConvertAll(a, v => (double)v), bD = Array.ConvertAll(b, v => (double)v);
        double[] Fd(double[] values) => CentralDifference.Of(() => Loss(wrD, aD, bD), values, h: 1e-5);
        double[] dRouter = Fd(wrD), dA = Fd(aD), dB = Fd(bD);

        using Tensor xTensor = Tensor.FromArray(device, x, m, inF);
        using Tensor dyTensor = Tensor.FromArray(device, dy, m, outF);
        using var tape = new Tape();
        Variable output = layer.Forward(tape, new Variable(xTensor));
        tape.Backward(output, dyTensor);
        foreach (var (name, parameter, want) in new[] { ("router", layer.Router, dRouter), ("pool A", layer.Pool.A, dA), ("pool B", layer.Pool.B, dB) })
        {
            double largest = want.Max(Math.Abs);
            Assert.That(largest, Is.GreaterThan(1e-3), $"{name}: a non-vacuous gradient");
            Expect.Close($"{device} d{name}", parameter.Grad!.ToArray(), want, Array.ConvertAll(want, _ => 1e-4 * largest));
        }
    }

    [Test]
    public void RouterRefusesNaNLogitsAndTooManyExperts_Cpu()
    {
        using Tensor logits = Tensor.FromArray(Device.Cpu, new float[] { 0.5f, 1f, float.NaN, 2f, 0f, 1f }, 2, 3);
        Assert.That(() => Routing.Softmax(logits),
                    Throws.ArgumentException.With.Message.Contains("logits must be finite").And.Message.Contains("row 0, column 2"));
        using Tensor fine = Tensor.FromArray(Device.Cpu, new float[] { 0.5f, 1f, 3f, 2f, 0f, 1f }, 2, 3);
        using Tensor probs = Routing.Softmax(fine);
        Assert.That(() => Routing.TopK(probs, 4), Throws.TypeOf<ArgumentOutOfRangeException>().With.Message.Contains("k = 4").And.Message.Contains("E = 3"));
        Assert.That(() => Routing.TopK(probs, 0), Throws.TypeOf<ArgumentOutOfRangeException>());

        // Through the layer: a NaN in the router's weight reaches the logits and is named there.
        using Tensor w0 = Tensor.FromArray(Device.Cpu, new TestData(7).NonZero(4 * 3), 4, 3);
        using var layer = new RankOneMixtureLinear(Device.Cpu, w0, null, null, experts: 4, k: 2, alpha: 1f);
        float[] router = layer.Router.Value.ToArray();
        router[1] = float.NaN;
        layer.Router.Value.CopyFrom(router);
        using Tensor x = Tensor.FromArray(Device.Cpu, new TestData(8).NonZero(2 * 3), 2, 3);
        Assert.That(() => layer.Forward(x).Dispose(), Throws.ArgumentException.With.Message.Contains("Routing.Softmax: logits must be finite"));
        Assert.That(() => new RankOneMixtureLinear(Device.Cpu, w0, null, null, experts: 4, k: 5, alpha: 1f),
                    Throws.TypeOf<ArgumentOutOfRangeException>().With.Message.Contains("k = 5").And.Message.Contains("E = 4"));
    }
}
