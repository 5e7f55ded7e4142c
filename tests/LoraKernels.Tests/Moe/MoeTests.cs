// MoeLoraLayer (linear and SwiGLU experts, router frozen or trained) on the CPU kernels and under the SIMT
// emulator, against MoeReference (a double-precision loop over each token's chosen experts), whose own
// gradients are checked by central differences; CPU against SIMT; only the chosen experts' adapters get
// gradients.
//
// Tolerances: Tracked.Bounds (Atol + 2·K·2⁻²⁴·M, M each value's first-order magnitude) with K the longest
// fp32 chain: forward 2·in + H + 2·r + 8 (router logits, the expert's projections with their LoRA, the
// weighted sum); backward the forward's plus 2·out (dy through the down projection and the gates' dot
// products). Routing flips are excluded by construction: every case's k-th and (k+1)-th logits differ by more
// than 1e-3, over a hundred times what fp32 logits can err by here.
using LoraKernels.Autograd;
using LoraKernels.Layers;

namespace LoraKernels.Tests.MixtureOfExperts;

[TestFixture]
public sealed class MoeTests
{
    public sealed record MoeCase(MoeExpertKind Kind, int T, int Experts, int TopK, bool TrainRouter)
    {
        public override string ToString() => $"{Kind}_T{T}_E{Experts}_k{TopK}{(TrainRouter ? "_trained-router" : "")}";
    }

    public static IEnumerable<MoeCase> Cases()
    {
        foreach (MoeExpertKind kind in new[] { MoeExpertKind.Linear, MoeExpertKind.SwiGlu })
        {
            yield return new MoeCase(kind, 11, 4, 2, false);
            yield return new MoeCase(kind, 11, 4, 2, true);
            yield return new MoeCase(kind, 2, 6, 1, true);  // at most two experts chosen: the others get no gradient
        }
    }

    private const int InFeatures = 9, Hidden = 7, OutFeatures = 6, Rank = 3;
    private const float Alpha = 6f;

    /// <summary>The case's model: random experts, router and bias; the layer's own A tables and random B tables (so the adapters act).</summary>
    private static MoeModel Model(MoeCase c, out float[] dy)
    {
        var data = new TestData(TestData.SeedFor(c.ToString()));
        bool linear = c.Kind == MoeExpertKind.Linear;
        var tables = linear
            ? new Dictionary<string, float[]> { ["weight"] = data.NonZero(c.Experts * OutFeatures * InFeatures, 0.5f) }
            : new Dictionary<string, float[]>
            {
                ["gate_proj"] = data.NonZero(c.Experts * Hidden * InFeatures, 0.5f),
                ["up_proj"] = data.NonZero(c.Experts * Hidden * InFeatures, 0.5f),
                ["down_proj"] = data.NonZero(c.Experts * OutFeatures * Hidden, 0.5f),
            };
        var model = new MoeModel
        {
            Kind = c.Kind, T = c.T, In = InFeatures, Hidden = linear ? 0 : Hidden, Out = OutFeatures, Experts = c.Experts, TopK = c.TopK,
            Rank = Rank, Scale = Alpha / Rank, X = data.NonZero(c.T * InFeatures), Router = data.NonZero(c.Experts * InFeatures),
            Bias = data.NonZero(OutFeatures, 0.5f), Tables = tables,
        };
        // Redraw the router until every token's choice is clear of a tie (see the file comment).
        while (MoeReference.Forward(model).MinimumMargin <= 1e-3) model.Router = data.NonZero(c.Experts * InFeatures);
        dy = data.NonZero(c.T * OutFeatures);
        return model;
    }

    private static MoeLoraLayer Layer(Device device, MoeCase c, MoeModel model, ulong seed)
    {
        MoeExperts experts;
        if (c.Kind == MoeExpertKind.Linear)
        {
            using Tensor w = Tensor.FromArray(device, model.Tables["weight"], c.Experts, OutFeatures, InFeatures);
            using Tensor b = Tensor.FromArray(device, model.Bias!, OutFeatures);
            experts = MoeExperts.Linear(device, w, b);
        }
        else
        {
            using Tensor g = Tensor.FromArray(device, model.Tables["gate_proj"], c.Experts, Hidden, InFeatures);
            using Tensor u = Tensor.FromArray(device, model.Tables["up_proj"], c.Experts, Hidden, InFeatures);
            using Tensor d = Tensor.FromArray(device, model.Tables["down_proj"], c.Experts, OutFeatures, Hidden);
            using Tensor b = Tensor.FromArray(device, model.Bias!, OutFeatures);
            experts = MoeExperts.SwiGlu(device, g, u, d, b);
        }
        using Tensor router = Tensor.FromArray(device, model.Router, c.Experts, InFeatures);
        var layer = new MoeLoraLayer(experts, router, c.TopK, Rank, Alpha, trainRouter: c.TrainRouter, seed: seed);
        var data = new TestData(seed);
        foreach (var (projection, (a, b)) in layer.Adapters)
        {
            b.Value.CopyFrom(data.NonZero((int)b.Value.ElementCount, 0.5f));
            model.Lora[projection] = (a.Value.ToArray(), b.Value.ToArray());
        }
        return layer;
    }

    private int Chain(MoeCase c) => 2 * InFeatures + (c.Kind == MoeExpertKind.SwiGlu ? Hidden : 0) + 2 * Rank + 8;

    [TestCaseSource(nameof(Cases))]
    public void ForwardAndBackwardMatchTheDenseReference(MoeCase c)
    {
        var results = new List<Dictionary<string, float[]>>();
        var bounds = new Dictionary<string, double[]>();
        foreach (Device device in new[] { Device.Cpu, Device.Simt })
        {
            MoeModel model = Model(c, out float[] dy);
            using MoeLoraLayer layer = Layer(device, c, model, seed: 77);
            var forward = MoeReference.Forward(model);
            var backward = MoeReference.Backward(model, dy);
            Expect.NotVacuous("y", Tracked.Values(forward.Y));
            int backwardChain = Chain(c) + 2 * OutFeatures;
            var got = new Dictionary<string, float[]>();
            void Compare(string what, float[] values, Tracked[] expected, int chain)
            {
                bounds[what] = Tracked.Bounds(expected, chain);
                Expect.Close($"{device} {what}", values, Tracked.Values(expected), bounds[what]);
                got[what] = values;
            }

            using var tape = new Tape();
            using Tensor x = Tensor.FromArray(device, model.X, c.T, InFeatures);
            var input = new Variable(x, requiresGrad: true);
            Variable y = layer.Forward(tape, input);
            Compare("y", y.Value.ToArray(), forward.Y, Chain(c));
            using (Tensor inference = layer.Forward(x))
                Expect.Exact($"{device} inference forward = recorded forward", inference.ToArray(), got["y"]);
            int[] counts = new int[c.Experts];
            foreach (int e in forward.Choice) counts[e]++;
            Assert.That(layer.LastExpertCounts, Is.EqualTo(counts), "rows per expert, as the reference routes them");

            using Tensor dyTensor = Tensor.FromArray(device, dy, c.T, OutFeatures);
            tape.Backward(y, dyTensor);
            Compare("dx", input.Grad!.ToArray(), backward.Dx, backwardChain);
            if (c.TrainRouter)
                Compare("d router", layer.Router.Grad!.ToArray(), backward.DRouter, backwardChain);
            else
                Assert.That(layer.Router.Grad, Is.Null, "a frozen router gets no gradient");
            foreach (var (projection, (a, b)) in layer.Adapters)
            {
                var (dA, dB) = backward.Lora[projection];
                Compare($"{projection} dA", a.Grad!.ToArray(), dA, backwardChain);
                Compare($"{projection} dB", b.Grad!.ToArray(), dB, backwardChain);
                ExpectUnchosenExpertsUntouched(projection, counts, got[$"{projection} dA"], got[$"{projection} dB"], model);
            }
            results.Add(got);
        }
        foreach (string what in results[0].Keys) Expect.Agree($"cpu vs simt {what}", results[0][what], results[1][what], bounds[what]);
    }

    /// <summary>An expert no token chose is not computed: its adapter's gradients are exactly zero.</summary>
    private static void ExpectUnchosenExpertsUntouched(string projection, int[] counts, float[] dA, float[] dB, MoeModel model)
    {
        var (inP, outP) = model.Dims(projection);
        for (int e = 0; e < counts.Length; e++)
        {
            if (counts[e] > 0) continue;
            Assert.That(dA[(e * Rank * inP)..((e + 1) * Rank * inP)].All(v => v == 0f), Is.True, $"{projection}: expert {e} (unchosen) dA");
            Assert.That(dB[(e * outP * Rank)..((e + 1) * outP * Rank)].All(v => v == 0f), Is.True, $"{projection}: expert {e} (unchosen) dB");
        }
    }

    /// <summary>
    /// The reference's chain-rule gradients against central differences of its own double forward, for
    /// L = Σ dy ⊙ y, with h = 2⁻¹²: L is linear in each LoRA element of a linear expert and smooth elsewhere
    /// (SiLU, the softmax over fixed choices; every routing margin is above 1e-3, far beyond h·|x|), so the
    /// truncation h²/6·|L'''| stays near 1e-8·M; storing the quotient as float adds 2⁻²⁴·M. Bound: 1e-9 + 3e-7·M.
    /// </summary>
    [TestCase(MoeExpertKind.Linear)]
    [TestCase(MoeExpertKind.SwiGlu)]
    public void ReferenceGradientsMatchCentralDifferences(MoeExpertKind kind)
    {
        var c = new MoeCase(kind, 5, 4, 2, true);
        MoeModel model = Model(c, out float[] dy);
        var data = new TestData(5);
        foreach (string projection in model.Tables.Keys)
        {
            var (inP, outP) = model.Dims(projection);
            model.Lora[projection] = (data.NonZero(c.Experts * Rank * inP, 0.5f), data.NonZero(c.Experts * outP * Rank, 0.5f));
        }
        var chain = MoeReference.Backward(model, dy);
        void Check(string what, float[] values, Tracked[] expected)
        {
            float[] central = Array.ConvertAll(CentralDifferences.Of(values, () => MoeReference.Loss(model, dy), 1f / 4096), v => (float)v);
            Expect.Close(what, central, Tracked.Values(expected), Array.ConvertAll(Tracked.Magnitudes(expected), m => 1e-9 + 3e-7 * m));
        }
        Check("dx", model.X, chain.Dx);
        Check("d router", model.Router, chain.DRouter);
        foreach (var (projection, (a, b)) in model.Lora)
        {
            Check($"{projection} dA", a, chain.Lora[projection].DA);
            Check($"{projection} dB", b, chain.Lora[projection].DB);
        }
        Assert.That(Tracked.Values(chain.DRouter).Count(v => v != 0), Is.GreaterThanOrEqualTo(InFeatures), "the chosen experts' router rows have gradients");
    }

    [Test]
    public void BadArgumentsAreRefused()
    {
        using Tensor w = Tensor.Zeros(Device.Cpu, DType.F32, 3, 4, 5);
        using MoeExperts experts = MoeExperts.Linear(Device.Cpu, w);
        using Tensor router = Tensor.Zeros(Device.Cpu, DType.F32, 3, 5);
        using Tensor wrongRouter = Tensor.Zeros(Device.Cpu, DType.F32, 3, 6);
        Assert.That(() => new MoeLoraLayer(experts, wrongRouter, 2, 2, 4f), Throws.ArgumentException.With.Message.Contains("router must be [E, in] = [3, 5]"));
        Assert.That(() => new MoeLoraLayer(experts, router, 4, 2, 4f), Throws.TypeOf<ArgumentOutOfRangeException>().With.Message.Contains("topK must be in [1, 3]"));
        Assert.That(() => new MoeLoraLayer(experts, router, 2, 2, 4f, targets: ["up_proj"]),
                    Throws.ArgumentException.With.Message.Contains("'up_proj' is not a projection of the Linear experts"));
        using Tensor nan = Tensor.FromArray(Device.Cpu, Enumerable.Repeat(float.NaN, 60).ToArray(), 3, 4, 5);
        Assert.That(() => MoeExperts.Linear(Device.Cpu, nan), Throws.ArgumentException.With.Message.Contains("weight must be finite"));
        using Tensor gate = Tensor.Zeros(Device.Cpu, DType.F32, 3, 7, 5), down = Tensor.Zeros(Device.Cpu, DType.F32, 3, 4, 6);
        Assert.That(() => MoeExperts.SwiGlu(Device.Cpu, gate, gate, down), Throws.ArgumentException.With.Message.Contains("down must be [E, out, H] = [3, out, 7]"));
    }
}
