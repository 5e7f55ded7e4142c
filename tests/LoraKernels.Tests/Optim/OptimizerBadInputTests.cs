using LoraKernels.Autograd;
using LoraKernels.Optim;
using LoraKernels.Runtime;

namespace LoraKernels.Tests.Optim;

/// <summary>Bad settings and inputs are refused with messages that name them, before anything changes.</summary>
[TestFixture]
public sealed class OptimizerBadInputTests
{
    [Test]
    public void SettingsAreCheckedByName()
    {
        using var p = new Parameter("lora_A", Tensor.FromArray(Device.Cpu, [1f, 2f, 3f], 3));
        Assert.That(() => new StatePaging(1000), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("working window"));
        Assert.That(() => new AdamW8bit([p], minimum8bitSize: 0), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("minimum8bitSize"));
        Assert.That(() => new AdamW([p], beta1: 1f), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("beta1"));
        Assert.That(() => new AdamW([new ParameterGroup("empty", [], 1e-3f)]), Throws.ArgumentException.With.Message.Contains("no parameter"));
        using var optimizer = new AdamW([p]);
        Assert.That(() => optimizer.MaxGradNorm = -1f, Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("MaxGradNorm"));
        Assert.That(() => optimizer.MaxGradNorm = float.NaN, Throws.InstanceOf<ArgumentOutOfRangeException>());
        Assert.That(() => optimizer.AccumulationSteps = 0, Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("AccumulationSteps"));
        var foreign = new ParameterGroup("foreign", [], 1f);
        Assert.That(() => optimizer.ScheduledLearningRate(foreign), Throws.ArgumentException.With.Message.Contains("foreign"));
    }

    [Test]
    public void ParametersOnTwoDevicesAreRefused()
    {
        using var cpu = new Parameter("on_cpu", Tensor.FromArray(Device.Cpu, [1f], 1));
        using var simt = new Parameter("on_simt", Tensor.FromArray(Device.Simt, [1f], 1));
        Assert.That(() => new AdamW([cpu, simt]),
                    Throws.ArgumentException.With.Message.Contains("on_cpu is on cpu").And.Message.Contains("on_simt on simt"));
    }

    [Test]
    public void MemoryKindsAreServedOrRefused()
    {
        long before = Device.Cpu.LiveAllocations;
        using (Tensor mapped = Tensor.Empty(Device.Cpu, DType.F32, MemoryKind.MappedFile, 1000, 3))
        {
            Assert.That(mapped.MemoryKind, Is.EqualTo(MemoryKind.MappedFile));
            Assert.That(mapped.ToArray(), Is.All.Zero, "a fresh mapped file reads as zeros");
            mapped.CopyFrom(Enumerable.Range(0, 3000).Select(i => (float)i).ToArray());
            Assert.That(mapped.ToArray()[2999], Is.EqualTo(2999f));
            using Tensor copy = mapped.Clone();
            Assert.That(copy.MemoryKind, Is.EqualTo(MemoryKind.Device));
            Assert.That(copy.ToArray()[1234], Is.EqualTo(1234f));
        }
        Assert.That(Device.Cpu.LiveAllocations, Is.EqualTo(before), "the mapping is freed");
        using (Tensor pinned = Tensor.Empty(Device.Simt, DType.BF16, MemoryKind.PinnedHost, 7))
            Assert.That(pinned.MemoryKind, Is.EqualTo(MemoryKind.PinnedHost));
        Assert.That(() => Tensor.Empty(Device.Simt, DType.F32, MemoryKind.MappedFile, 4),
                    Throws.InstanceOf<NotSupportedException>().With.Message.Contains("simt").And.Message.Contains("MappedFile"));
        Assert.That(() => Tensor.Empty(Device.Cpu, DType.F32, (MemoryKind)42, 4), Throws.InstanceOf<NotSupportedException>());
    }

    // The non-finite guard is the base's, so 8-bit AdamW has it too: a skipped step changes no parameter, code or absmax.
    [Test]
    public void NonFiniteGradientsSkipOrThrowIn8bitAdamW()
    {
        using var problem = new OptimizerProblem(Device.Cpu, "NonFinite8bit", [("p5000", 5000, DType.F32)]);
        using var optimizer = new AdamW8bit(problem.Parameters);
        problem.Train(optimizer, 1, 1);
        float[] values = problem.Parameters[0].Value.ToArray();
        byte[] codes = AdamW8bitTests.Download(optimizer, problem.Parameters[0], "state1");
        float[] g = problem.Gradients(2)[0];
        g[4321] = float.NaN;
        problem.SetGradients([g]);
        Assert.That(optimizer.Step(), Is.False);
        Assert.That(optimizer.SkippedSteps, Is.EqualTo(1));
        Assert.That(optimizer.StepCount, Is.EqualTo(1));
        Expect.Exact("a skipped step leaves the parameter", problem.Parameters[0].Value.ToArray(), values);
        Assert.That(AdamW8bitTests.Download(optimizer, problem.Parameters[0], "state1"), Is.EqualTo(codes), "and the state");
        optimizer.OnNonFiniteGradients = NonFiniteGradients.Throw;
        Assert.That(() => optimizer.Step(), Throws.InstanceOf<NonFiniteGradientException>().With.Property("Index").EqualTo(4321));
    }
}
