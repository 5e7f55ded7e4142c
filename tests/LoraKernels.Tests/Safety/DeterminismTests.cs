using System.Diagnostics;

namespace LoraKernels.Tests.Safety;

/// <summary>
/// The determinism guarantee of docs/API.md: training repeats bit for bit run to run on every device,
/// on the CPU whatever the thread count, and between the AVX-512 and AVX2 kernels (the portable
/// fallback, without FMA, rounds differently and is not covered).
/// </summary>
[TestFixture]
public sealed class DeterminismTests
{
    [Test]
    public void EmulatorTrainingRepeatsBitForBit()
    {
        string first = TrainingDigestProgram.Digest(Device.Simt);
        string second = TrainingDigestProgram.Digest(Device.Simt);
        Assert.That(second, Is.EqualTo(first));
    }

    [Test]
    public void EmulatorLossOfALargeTensorRepeatsBitForBit()
    {
        // Many blocks on parallel workers: a reduction through float atomics would differ run to run.
        var data = new TestData(4);
        using Tensor pred = Tensor.FromArray(Device.Simt, data.NonZero(1 << 18), 1 << 18);
        using Tensor target = Tensor.FromArray(Device.Simt, data.NonZero(1 << 18), 1 << 18);
        float first = Ops.Losses.Mse(pred, target, wantGradient: false).Loss;
        for (int run = 0; run < 5; run++)
            Assert.That(BitConverter.SingleToInt32Bits(Ops.Losses.Mse(pred, target, wantGradient: false).Loss),
                        Is.EqualTo(BitConverter.SingleToInt32Bits(first)));
    }

    [Test]
    public void CpuTrainingIsTheSameForEveryThreadCount()
    {
        var cpu = (CpuDevice)Device.Cpu;
        int initial = cpu.Threads;
        try
        {
            cpu.Threads = 1;
            string one = TrainingDigestProgram.Digest(cpu);
            cpu.Threads = 2;
            string two = TrainingDigestProgram.Digest(cpu);
            cpu.Threads = 3;
            string three = TrainingDigestProgram.Digest(cpu);
            Assert.That(two, Is.EqualTo(one));
            Assert.That(three, Is.EqualTo(one));
        }
        finally
        {
            cpu.Threads = initial;
        }
    }

    [Test]
    public void CpuTrainingIsTheSameWithTheAvx2AndAvx512Kernels()
    {
        if (Device.Cpu.Name.Contains("portable", StringComparison.Ordinal)) Assert.Ignore("no AVX2 on this machine");
        string best = DigestInChild(isa: null);
        string avx2 = DigestInChild(isa: "avx2");
        if (!Device.Cpu.Name.Contains("AVX-512", StringComparison.Ordinal))
            Assert.Ignore($"this machine runs AVX2 only, so only one ISA is compared (digest {best})");
        Assert.That(avx2, Is.EqualTo(best), "AVX2 kernels against AVX-512 kernels");
    }

    private static string DigestInChild(string? isa)
    {
        ProcessStartInfo start = ChildProgram.StartInfo("train-digest", "cpu");
        if (isa is null) start.Environment.Remove("LORAKERNELS_CPU_ISA");
        else start.Environment["LORAKERNELS_CPU_ISA"] = isa;
        var (exitCode, output, errors) = ChildProgram.Run(start, TimeSpan.FromMinutes(2));
        Assert.That(exitCode, Is.Zero, errors);
        string line = output.Split('\n').Single(l => l.StartsWith("digest ", StringComparison.Ordinal));
        return line["digest ".Length..].Trim();
    }
}
