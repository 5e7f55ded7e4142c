using LoraKernels.Demo.Training;

namespace LoraKernels.Tests.Demo;

/// <summary>
/// The demo's training loop (the very trainer the demo runs, compiled in) on small sizes: a few
/// AdamW steps on each device make the loss fall, and everything is freed afterwards.
/// </summary>
[TestFixture]
public sealed class DemoTrainingTests
{
    private static readonly TrainerOptions Small = new()
    {
        InFeatures = 48, HiddenFeatures = 80, OutFeatures = 40, BatchSize = 16, Rank = 8, Alpha = 16f, HiddenRank = 4,
        LearningRate = 1e-2f,
    };

    /// <summary>
    /// The loss of single random batches is noisy; the mean of the last steps must be below a quarter of the
    /// first step's loss (LoRA starts as the base model, so the first loss is the whole hidden change).
    /// </summary>
    private static void LossFalls(Device device, int steps)
    {
        long allocationsBefore = device.LiveAllocations;
        var losses = new List<float>();
        using (var trainer = new LoraMlpTrainer(device, Small))
        {
            Assert.That(trainer.TrainableParameters, Is.EqualTo(8L * (48 + 80) + 8L * (80 + 40)), "r·(in + out) per layer");
            for (int step = 0; step < steps; step++) losses.Add(trainer.Step());
            Assert.That(trainer.StepsTaken, Is.EqualTo(steps));
        }
        TestContext.Out.WriteLine($"{device.Name}: loss {string.Join(", ", losses.Select(l => l.ToString("0.000e+00", System.Globalization.CultureInfo.InvariantCulture)))}");
        Assert.That(losses.All(float.IsFinite), Is.True, "finite losses");
        Assert.That(losses[0], Is.GreaterThan(1e-3f), "the hidden change is visible in the first loss");
        double tail = losses.TakeLast(3).Average();
        Assert.That(tail, Is.LessThan(0.25 * losses[0]), "the loss falls");
        Assert.That(device.LiveAllocations, Is.EqualTo(allocationsBefore), "the trainer frees everything");
    }

    [Test]
    public void LossFallsOnCpu() => LossFalls(Device.Cpu, steps: 60);

    [Test]
    public void LossFallsOnSimt() => LossFalls(Device.Simt, steps: 60);

    [Test]
    [Category("Cuda")]
    public void LossFallsOnCuda() => LossFalls(Devices.CudaOrIgnore(), steps: 60);
}
