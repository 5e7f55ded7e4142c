// SoRA (GatedRankLinear, SoraGates, Ops.Gated.SoftThreshold): the proximal step on a hand-computed case on both
// devices, the λ schedules against SparseAdamW's numpy formulas, the sparsity loss and its gradient, pruning that
// preserves the output exactly, and a short training run that prunes the ranks a task does not need.
using LoraKernels.Autograd;
using LoraKernels.Layers;
using LoraKernels.Optim;
using LoraKernels.Variants;

namespace LoraKernels.Tests.GatedRank;

[TestFixture]
public sealed class SoraTests
{
    /// <summary>
    /// λ = 0.25 (exact in binary). SparseAdamW runs g &gt; λ: g −= λ; then g &lt; −λ: g += λ; then |g| &lt; λ: g = 0, each mask
    /// on the values the previous one left: 1 → 0.75; 0.4 → 0.15 → 0 (between λ and 2λ the third test sees the shrunk
    /// value); 0.5 → 0.25, kept (not &lt; λ); 0.25 → kept (not &gt; λ, not &lt; λ); 0.1 → 0; negatives mirror; 0 stays 0.
    /// </summary>
    [TestCase(DeviceKind.Cpu)]
    [TestCase(DeviceKind.Simt)]
    public void ProximalStepFollowsSorasThreeMaskedAssignments(DeviceKind kind)
    {
        Device device = kind == DeviceKind.Cpu ? Device.Cpu : Device.Simt;
        using Tensor gate = Tensor.FromArray(device, [1f, 0.4f, 0.5f, 0.25f, 0.1f, 0f, -1f, -0.4f, -0.5f, -0.25f, -0.1f], 11);
        Ops.Gated.SoftThreshold(gate, 0.25f);
        Expect.Exact("gate", gate.ToArray().Select(v => v + 0f).ToArray(), [0.75f, 0f, 0.25f, 0.25f, 0f, 0f, -0.75f, 0f, -0.25f, -0.25f, 0f]);
    }

    [Test]
    public void LambdaSchedulesAreSparseAdamWsNumpyFormulas()
    {
        double[] linear = SoraGates.LambdaValues(1e-3f, SoraLambdaSchedule.Linear, 10f, 4);
        double[] logLinear = SoraGates.LambdaValues(1e-3f, SoraLambdaSchedule.LogLinear, 10f, 4);
        double[] expLinear = SoraGates.LambdaValues(1e-3f, SoraLambdaSchedule.ExpLinear, 10f, 4);
        double l0 = 1e-3f;  // λ₀ as the float the optimizer holds
        for (int i = 0; i < 4; i++)
        {
            double t = i / 3.0;
            Assert.That(linear[i], Is.EqualTo(l0 + (10 - l0) * t).Within(1e-12), $"linspace[{i}]");
            Assert.That(logLinear[i], Is.EqualTo(Math.Log(Math.Exp(l0) + (Math.Exp(10) - Math.Exp(l0)) * t)).Within(1e-12), $"log(linspace(exp))[{i}]");
            Assert.That(expLinear[i], Is.EqualTo(Math.Exp(Math.Log(l0) + (Math.Log(10) - Math.Log(l0)) * t)).Within(1e-12), $"exp(linspace(log))[{i}]");
        }
        Assert.That(SoraGates.LambdaValues(1e-3f, SoraLambdaSchedule.None), Is.EqualTo(new[] { (double)1e-3f }));
        Assert.That(() => SoraGates.LambdaValues(0f, SoraLambdaSchedule.ExpLinear), Throws.TypeOf<ArgumentOutOfRangeException>());

        using Tensor w0 = Tensor.FromArray(Device.Cpu, new TestData(1).NonZero(12), 4, 3);
        using var layer = new GatedRankLinear(Device.Cpu, w0, null, 2, 4f);
        var gates = new SoraGates([layer], 1e-3f, SoraLambdaSchedule.Linear, 10f, 3);
        Assert.That(gates.Lambda, Is.EqualTo(1e-3f));
        Assert.That(gates.StepLambda(), Is.True);
        Assert.That(gates.Lambda, Is.EqualTo((float)(l0 + (10 - l0) / 2)));
        Assert.That(gates.StepLambda(), Is.True);
        Assert.That(gates.StepLambda(), Is.False, "the schedule's end keeps its last λ (step_lambda)");
        Assert.That(gates.Lambda, Is.EqualTo(10f));
    }

    /// <summary>The sparsity loss is sparse_lambda·Σ|g|/numel over all gates, its gradient sparse_lambda·sign(g)/numel (0 at 0).</summary>
    [Test]
    public void SparsityLossAndItsGradient_Cpu()
    {
        using Tensor w0 = Tensor.FromArray(Device.Cpu, new TestData(2).NonZero(20), 4, 5);
        using var first = new GatedRankLinear(Device.Cpu, w0, null, 3, 6f, initialGate: [0.5f, -2f, 0f]);
        using var second = new GatedRankLinear(Device.Cpu, w0, null, 2, 4f, initialGate: [1f, -0.25f]);
        var gates = new SoraGates([first, second]);
        using var tape = new Tape();
        float value = gates.AddSparsityLoss(tape, 0.1f);
        Assert.That(value, Is.EqualTo(0.1f * 3.75f / 5).Within(1e-7f));
        tape.Backward();
        Expect.Exact("first gate's gradient", first.Gate.Grad!.ToArray(), [0.02f, -0.02f, 0f]);
        Expect.Exact("second gate's gradient", second.Gate.Grad!.ToArray(), [0.02f, -0.02f]);
        Assert.That(first.A.Grad, Is.Null, "only the gates carry the penalty");
    }

    /// <summary>
    /// Pruning drops the zero-gated ranks and keeps s: the pruned layer's output is the gated layer's bit for bit on both
    /// devices (a rank with g = 0 adds exactly 0 to every sum here: in + r fits one CPU K block and the GPU's adapter sum
    /// runs over the ranks in order), and its backward runs.
    /// </summary>
    [TestCase(DeviceKind.Cpu, DType.F32)]
    [TestCase(DeviceKind.Simt, DType.F32)]
    [TestCase(DeviceKind.Cpu, DType.BF16)]
    public void PruningRemovesZeroGatedRanksAndPreservesTheOutputExactly_M17_in33_out20_r6(DeviceKind kind, DType dtype)
    {
        Device device = kind == DeviceKind.Cpu ? Device.Cpu : Device.Simt;
        var data = new TestData(3);
        using Tensor w0 = Tensor.FromArray(device, data.NonZero(20 * 33), 20, 33);
        using Tensor bias = Tensor.FromArray(device, data.NonZero(20), 20);
        using var layer = new GatedRankLinear(device, w0, bias, 6, 12f, dtype: dtype, initialGate: [0.5f, 0f, -1.25f, 0f, 0f, 2f]);
        layer.B.Value.CopyFrom(data.NonZero(20 * 6));  // a trained-looking B
        layer.Training = false;
        using GatedRankLinear pruned = layer.Prune();
        Assert.That((pruned.Rank, layer.SurvivingRank, pruned.Scale), Is.EqualTo((3, 3, layer.Scale)));
        Assert.That(pruned.Gate.Value.ToArray(), Is.EqualTo(new[] { 0.5f, -1.25f, 2f }));
        Assert.That(pruned.Parameters().Sum(p => p.Value.ElementCount), Is.EqualTo(3 * (33 + 20) + 3), "a smaller adapter");
        foreach (int m in new[] { 1, 17 })  // the decode and the tiled paths
        {
            using Tensor x = Tensor.FromArray(device, data.NonZero(m * 33), dtype, m, 33);
            using Tensor y = layer.Forward(x), yPruned = pruned.Forward(x);
            Expect.NotVacuous("y", Array.ConvertAll(y.ToArray(), v => (double)v));
            Expect.Exact($"M = {m}: pruned vs gated", yPruned.ToArray(), y.ToArray());
        }
        using var tape = new Tape();
        using Tensor xs = Tensor.FromArray(device, data.NonZero(5 * 33), dtype, 5, 33);
        using Tensor dy = Tensor.FromArray(device, data.NonZero(5 * 20), dtype, 5, 20);
        pruned.Training = true;
        tape.Backward(pruned.Forward(tape, new Variable(xs)), dy);
        Assert.That(pruned.Gate.Grad!.ToArray(), Has.All.Not.EqualTo(0f), "the surviving gates train on");
    }

    [Test]
    public void PruningRefusesALayerWithNoSurvivingRank()
    {
        using Tensor w0 = Tensor.FromArray(Device.Cpu, new TestData(4).NonZero(12), 4, 3);
        using var layer = new GatedRankLinear(Device.Cpu, w0, null, 2, 4f, initialGate: [0f, 0f]);
        Assert.That(() => layer.Prune(), Throws.InvalidOperationException.With.Message.Contains("all 2 gates").And.Message.Contains("W0"));
        Assert.That(() => new GatedRankLinear(Device.Cpu, w0, null, 2, 4f, initialGate: [1f]),
                    Throws.ArgumentException.With.Message.Contains("initialGate has 1 values"));
    }

    /// <summary>
    /// SoRA on a layer whose target adds a rank-2 change to W0: r = 6, AdamW (lr 1e-2, no decay) and the proximal step with
    /// λ = the learning rate. The gates the change does not need go to zero; at least the two it needs survive; the
    /// pruned adapter still fits the change (its loss within a factor 2 of the unpruned's, both far below the base's).
    /// </summary>
    [Test]
    public void TrainingPrunesTheRanksTheTaskDoesNotNeed_Cpu_in24_out16_r6()
    {
        const int inF = 24, outF = 16, r = 6, batch = 32;
        Device device = Device.Cpu;
        var data = new TestData(5);
        float[] w0 = data.NonZero(outF * inF, 0.2f);
        float[] u1 = data.NonZero(outF), v1 = data.NonZero(inF), u2 = data.NonZero(outF), v2 = data.NonZero(inF);
        float[] target = (float[])w0.Clone();
        for (int n = 0; n < outF; n++)
            for (int c = 0; c < inF; c++) target[n * inF + c] += 0.6f * u1[n] * v1[c] + 0.4f * u2[n] * v2[c];
        using Tensor w0Tensor = Tensor.FromArray(device, w0, outF, inF), targetTensor = Tensor.FromArray(device, target, outF, inF);
        using var teacher = new LoraLinear(device, targetTensor, null, 1, 1f) { Training = false };  // B = 0: x·targetᵀ exactly
        using var layer = new GatedRankLinear(device, w0Tensor, null, r, 2f * r, seed: 11);
        var gates = new SoraGates([layer], lambda: 1f);
        using var optimizer = new AdamW(layer.Parameters(), lr: 1e-2f, weightDecay: 0f);
        using var tape = new Tape();
        float Loss(IAdapterLayer model, Tensor x)
        {
            using Tensor want = teacher.Forward(x);
            using Tensor got = model.Forward(x);
            return Ops.Losses.Mse(got, want, wantGradient: false).Loss;
        }
        var batches = new TestData(6);
        for (int step = 0; step < 400; step++)
        {
            using Tensor x = Tensor.FromArray(device, batches.NonZero(batch * inF), batch, inF);
            using Tensor want = teacher.Forward(x);
            tape.Reset();
            tape.MseLoss(layer.Forward(tape, new Variable(x)), want);
            gates.AddSparsityLoss(tape);
            tape.Backward();
            optimizer.Step();
            gates.ProximalStep(optimizer.LearningRate);
            optimizer.ZeroGrad();
        }
        Assert.That(layer.SurvivingRank, Is.InRange(2, r - 1), $"gates {string.Join(", ", layer.Gate.Value.ToArray())}");
        using Tensor probe = Tensor.FromArray(device, batches.NonZero(64 * inF), 64, inF);
        using var w0Only = new LoraLinear(device, w0Tensor, null, 1, 1f) { Training = false };
        layer.Training = false;
        using GatedRankLinear pruned = layer.Prune();
        float baseLoss = Loss(w0Only, probe), trained = Loss(layer, probe), prunedLoss = Loss(pruned, probe);
        Assert.That(trained, Is.LessThan(0.05f * baseLoss), "SoRA fits the change");
        Assert.That(prunedLoss, Is.LessThan(2f * trained + 1e-6f), "pruning keeps the fit");
    }
}
