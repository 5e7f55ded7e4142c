using LoraKernels.Autograd;
using LoraKernels.Layers;

namespace LoraKernels.Tests.Safety;

/// <summary>Limits and settings give the library's own clear errors: ranks past 32-bit indexing, thread counts, tapes, memory.</summary>
[TestFixture(DeviceKind.Cpu)]
[TestFixture(DeviceKind.Simt)]
public sealed class LimitsTests(DeviceKind kind)
{
    private Device Device => kind == DeviceKind.Cpu ? Device.Cpu : Device.Simt;

    [Test]
    public void AHugeRankIsARangeErrorNamingR()
    {
        using Tensor w0 = Tensor.FromArray(Device, new TestData(1).NonZero(6 * 5), 6, 5);
        long before = Device.LiveAllocations;
        var layers = new (string Name, Action Create)[]
        {
            ("LoraLinear", () => new LoraLinear(Device, w0, null, int.MaxValue, 8f).Dispose()),
            ("LoraFaLinear", () => new LoraFaLinear(Device, w0, null, 1 << 30, 8f).Dispose()),
            ("DoraLinear", () => new DoraLinear(Device, w0, null, 1 << 29, 8f).Dispose()),
            ("QloraLinear", () => new QloraLinear(new Nf4Linear(Device, w0, null), int.MaxValue, 8f).Dispose()),
        };
        foreach (var (name, create) in layers)
        {
            var e = Assert.Throws<ArgumentOutOfRangeException>(() => create())!;
            Assert.That(e.ParamName, Is.EqualTo("r"), $"{name}: {e.Message}");
            Assert.That(e.Message, Does.Contain(name).And.Contain("2^31 - 1"), e.Message);
        }
        Assert.That(Device.LiveAllocations, Is.EqualTo(before), "a refused layer (and QloraLinear's owned base) leaves nothing allocated");
    }

    [Test]
    public void ThreadCountsOutsideTheirRangeAreRefusedAndResetRestoresTheDefault()
    {
        var cpu = (CpuDevice)Device.Cpu;
        int initial = cpu.Threads;
        cpu.ResetThreads();
        int defaultCount = cpu.Threads;
        Assert.That(defaultCount, Is.GreaterThanOrEqualTo(1));
        cpu.Threads = initial;
        foreach (int bad in new[] { 0, -3, CpuDevice.MaxThreads + 1, int.MaxValue })
        {
            var e = Assert.Throws<ArgumentOutOfRangeException>(() => cpu.Threads = bad)!;
            Assert.That(e.Message, Does.Contain("ResetThreads"), e.Message);
            Assert.That(cpu.Threads, Is.EqualTo(initial), "a refused value changes nothing");
        }
        cpu.Threads = 1;
        Assert.That(cpu.Threads, Is.EqualTo(1));
        cpu.ResetThreads();
        Assert.That(cpu.Threads, Is.EqualTo(defaultCount));
        cpu.Threads = initial;

        var simt = (SimtDevice)Device.Simt;
        foreach (int bad in new[] { 0, -1, SimtDevice.MaxWorkerThreads + 1 })
            Assert.Throws<ArgumentOutOfRangeException>(() => simt.SetWorkerThreads(bad));
        simt.SetWorkerThreads(1);
        simt.ResetWorkerThreads();
    }

    [Test]
    public void AVariableFromAnotherTapeOrAnEarlierRecordingIsRefused()
    {
        var data = new TestData(2);
        using Tensor w0 = Tensor.FromArray(Device, data.NonZero(6 * 5), 6, 5);
        using var first = new LoraLinear(Device, w0, null, 2, 4f);
        using Tensor w1 = Tensor.FromArray(Device, data.NonZero(6 * 6), 6, 6);
        using var second = new LoraLinear(Device, w1, null, 2, 4f);
        using Tensor x = Tensor.FromArray(Device, data.NonZero(3 * 5), 3, 5);
        using var tapeA = new Tape();
        using var tapeB = new Tape();
        Variable hidden = first.Forward(tapeA, new Variable(x));
        var e = Assert.Throws<InvalidOperationException>(() => second.Forward(tapeB, hidden))!;
        Assert.That(e.Message, Does.Contain("another tape"), e.Message);
        Assert.Throws<InvalidOperationException>(() => tapeB.Relu(hidden));

        tapeA.Reset();
        var stale = Assert.Throws<InvalidOperationException>(() => tapeA.Relu(hidden))!;
        Assert.That(stale.Message, Does.Contain("Reset"), stale.Message);
        Assert.DoesNotThrow(() => tapeA.Relu(first.Forward(tapeA, new Variable(x))), "a fresh recording works");
    }

    [Test]
    public void AnImpossibleAllocationSaysHowManyBytes()
    {
        // 2^40 floats = 4 TiB: more than this machine can give, so the allocation fails cleanly.
        long before = Device.LiveAllocations;
        var e = Assert.Throws<OutOfMemoryException>(() => Tensor.Empty(Device, DType.F32, 1L << 20, 1L << 20).Dispose())!;
        Assert.That(e.Message, Does.Contain("LoraKernels").And.Contain((4L << 40).ToString(System.Globalization.CultureInfo.InvariantCulture)), e.Message);
        Assert.That(Device.LiveAllocations, Is.EqualTo(before));
    }
}
