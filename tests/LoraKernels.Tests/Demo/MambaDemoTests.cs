using LoraKernels.Demo.Training;

namespace LoraKernels.Tests.Demo;

/// <summary>
/// The Mamba demo's training loop (the very trainer `--mamba` runs, compiled in): LoRA on a Mamba block's four
/// projections learns the teacher's hidden change through the convolution and the selective scan, on each device,
/// and everything is freed afterwards.
/// </summary>
[TestFixture]
public sealed class MambaDemoTests
{
    /// <summary>
    /// Noisy single batches aside, the mean of the last steps falls below a tenth of the first step's loss (the
    /// student starts as the frozen block, so the first loss is the whole hidden change).
    /// </summary>
    [TestCase(DeviceKind.Cpu, 60)]
    [TestCase(DeviceKind.Simt, 60)]
    public void LossFalls(DeviceKind kind, int steps)
    {
        Device device = kind == DeviceKind.Cpu ? Device.Cpu : Device.Simt;
        long allocationsBefore = device.LiveAllocations;
        var losses = new List<float>();
        var options = new MambaTrainerOptions { Sequences = 2, Length = 20 };
        using (var trainer = new MambaTrainer(device, options))
        {
            var block = options.Block;
            long perProjection(int inFeatures, int outFeatures) => (long)options.Rank * (inFeatures + outFeatures);
            Assert.That(trainer.TrainableParameters, Is.EqualTo(perProjection(block.ModelFeatures, 2 * block.InnerFeatures) +
                                                                perProjection(block.InnerFeatures, block.XProjFeatures) +
                                                                perProjection(block.Rank, block.InnerFeatures) +
                                                                perProjection(block.InnerFeatures, block.ModelFeatures)),
                        "r·(in + out) per adapted projection");
            for (int step = 0; step < steps; step++) losses.Add(trainer.Step());
            Assert.That(trainer.StepsTaken, Is.EqualTo(steps));
        }
        TestContext.Out.WriteLine($"{device.Name}: loss {string.Join(", ", losses.Select(l => l.ToString("0.000e+00", System.Globalization.CultureInfo.InvariantCulture)))}");
        Assert.That(losses.All(float.IsFinite), Is.True, "finite losses");
        Assert.That(losses[0], Is.GreaterThan(1e-6f), "the hidden change is visible in the first loss");
        Assert.That(losses.TakeLast(5).Average(), Is.LessThan(0.1 * losses[0]), "the loss falls");
        Assert.That(device.LiveAllocations, Is.EqualTo(allocationsBefore), "the trainer frees everything");
    }
}
