using LoraKernels.Optim;

namespace LoraKernels.Tests.Optim;

/// <summary>
/// The learning-rate schedules against transformers' formulas (get_*_schedule_with_warmup), written out here at
/// chosen steps: warm-up step/warmup, linear (total - step)/(total - warmup), cosine ½(1 + cos(π·progress)), each
/// lifted to a minimum factor m as m + (1 - m)·decay and held after the total.
/// </summary>
[TestFixture]
public sealed class ScheduleTests
{
    [Test]
    public void FactorsFollowTransformersFormulas()
    {
        LearningRateSchedule constant = LearningRateSchedule.Constant(warmupSteps: 4);
        Assert.That(new[] { 0L, 1, 2, 4, 1000 }.Select(constant.Factor), Is.EqualTo(new[] { 0.0, 0.25, 0.5, 1.0, 1.0 }));

        LearningRateSchedule linear = LearningRateSchedule.Linear(totalSteps: 10, warmupSteps: 2);
        Assert.That(new[] { 0L, 1, 2, 6, 10, 11 }.Select(linear.Factor), Is.EqualTo(new[] { 0.0, 0.5, 1.0, 0.5, 0.0, 0.0 }).Within(1e-15));

        LearningRateSchedule cosine = LearningRateSchedule.Cosine(totalSteps: 12, warmupSteps: 2, minimumFactor: 0.1);
        double Cosine(long step) => 0.1 + 0.9 * 0.5 * (1 + Math.Cos(Math.PI * (step - 2) / 10.0));
        Assert.That(cosine.Factor(1), Is.EqualTo(0.5));
        foreach (long step in new long[] { 2, 3, 7, 11, 12 })
            Assert.That(cosine.Factor(step), Is.EqualTo(Cosine(step)).Within(1e-15), $"step {step}");
        Assert.That(cosine.Factor(7), Is.EqualTo(0.55).Within(1e-15), "halfway down: between 1 and the floor");
        Assert.That(cosine.Factor(40), Is.EqualTo(0.1).Within(1e-15), "held at the floor after the total (transformers' would rise again)");
        Assert.That(cosine.ToString(), Does.Contain("cosine").And.Contain("0.1"));
    }

    [Test]
    public void BadSchedulesAreRefusedByName()
    {
        Assert.That(() => LearningRateSchedule.Constant(-1), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("warm-up"));
        Assert.That(() => LearningRateSchedule.Cosine(totalSteps: 5, warmupSteps: 6), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("total steps"));
        Assert.That(() => LearningRateSchedule.Linear(10, minimumFactor: 1.5), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("minimum factor"));
        Assert.That(() => LearningRateSchedule.Linear(10).Factor(-1), Throws.InstanceOf<ArgumentOutOfRangeException>());
    }
}
