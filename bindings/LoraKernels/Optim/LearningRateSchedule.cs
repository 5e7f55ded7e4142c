// Learning-rate schedules as Hugging Face transformers defines them (get_constant_schedule,
// get_constant_schedule_with_warmup, get_linear_schedule_with_warmup, get_cosine_schedule_with_warmup):
// a factor of the step t (applied steps so far, from 0) that multiplies each group's learning rate,
// as torch's LambdaLR does. Warm-up rises linearly from 0 (t = 0 trains with factor 0, as LambdaLR's
// first step does) to 1 at t = warmup; the decays then fall to a floor (transformers' is 0; cosine
// and linear take a minimum factor, e.g. 0.1 to end at a tenth) and hold it after the total steps
// (transformers' cosine would rise again past them). A schedule is a pure function of t,
// so a checkpoint that restores the optimizer's StepCount restores the schedule's position; it is
// stored in the checkpoint's manifest by Kind, WarmupSteps, TotalSteps and MinimumFactor.
namespace LoraKernels.Optim;

public abstract class LearningRateSchedule
{
    private protected LearningRateSchedule(int warmupSteps, long totalSteps, double minimumFactor)
    {
        if (warmupSteps < 0) throw new ArgumentOutOfRangeException(nameof(warmupSteps), warmupSteps, "A schedule's warm-up steps must be >= 0.");
        if (totalSteps < warmupSteps)
            throw new ArgumentOutOfRangeException(nameof(totalSteps), totalSteps, $"A schedule's total steps must be >= its {warmupSteps} warm-up steps.");
        if (!(minimumFactor >= 0.0 && minimumFactor <= 1.0))
            throw new ArgumentOutOfRangeException(nameof(minimumFactor), minimumFactor, "A schedule's minimum factor must be in [0, 1].");
        WarmupSteps = warmupSteps;
        TotalSteps = totalSteps;
        MinimumFactor = minimumFactor;
    }

    /// <summary>"constant", "linear" or "cosine" (what checkpoints record).</summary>
    public abstract string Kind { get; }

    public int WarmupSteps { get; }

    /// <summary>Steps to the end of the decay (the warm-up included); constant schedules hold it at the warm-up.</summary>
    public long TotalSteps { get; }

    /// <summary>The factor the decay ends at and keeps after TotalSteps.</summary>
    public double MinimumFactor { get; }

    /// <summary>The learning-rate factor of step <paramref name="step"/> (applied steps before it, from 0).</summary>
    public double Factor(long step)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(step);
        if (step < WarmupSteps) return (double)step / Math.Max(1, WarmupSteps);
        double progress = TotalSteps > WarmupSteps ? Math.Min(1.0, (double)(step - WarmupSteps) / (TotalSteps - WarmupSteps)) : 1.0;
        return MinimumFactor + (1.0 - MinimumFactor) * Decay(progress);
    }

    /// <summary>The decay from 1 at progress 0 to 0 at progress 1.</summary>
    private protected abstract double Decay(double progress);

    /// <summary>A constant rate (after <paramref name="warmupSteps"/> of linear warm-up).</summary>
    public static LearningRateSchedule Constant(int warmupSteps = 0) => new ConstantSchedule(warmupSteps);

    /// <summary>Linear warm-up, then linear decay to <paramref name="minimumFactor"/> at <paramref name="totalSteps"/>.</summary>
    public static LearningRateSchedule Linear(long totalSteps, int warmupSteps = 0, double minimumFactor = 0.0) =>
        new LinearSchedule(warmupSteps, totalSteps, minimumFactor);

    /// <summary>Linear warm-up, then a half cosine down to <paramref name="minimumFactor"/> at <paramref name="totalSteps"/>.</summary>
    public static LearningRateSchedule Cosine(long totalSteps, int warmupSteps = 0, double minimumFactor = 0.0) =>
        new CosineSchedule(warmupSteps, totalSteps, minimumFactor);

    /// <summary>The schedule a checkpoint recorded (<see cref="Kind"/> and its numbers).</summary>
    internal static LearningRateSchedule FromParts(string kind, int warmupSteps, long totalSteps, double minimumFactor) => kind switch
    {
        "constant" => Constant(warmupSteps),
        "linear" => Linear(totalSteps, warmupSteps, minimumFactor),
        "cosine" => Cosine(totalSteps, warmupSteps, minimumFactor),
        _ => throw new ArgumentException($"Unknown learning-rate schedule \"{kind}\" (constant, linear, cosine).", nameof(kind)),
    };

    public override string ToString() =>
        $"{Kind} (warm-up {WarmupSteps}, total {TotalSteps}, minimum factor {MinimumFactor.ToString(System.Globalization.CultureInfo.InvariantCulture)})";

    private sealed class ConstantSchedule(int warmupSteps) : LearningRateSchedule(warmupSteps, warmupSteps, 1.0)
    {
        public override string Kind => "constant";
        private protected override double Decay(double progress) => 1.0;
    }

    private sealed class LinearSchedule(int warmupSteps, long totalSteps, double minimumFactor)
        : LearningRateSchedule(warmupSteps, totalSteps, minimumFactor)
    {
        public override string Kind => "linear";
        private protected override double Decay(double progress) => 1.0 - progress;
    }

    private sealed class CosineSchedule(int warmupSteps, long totalSteps, double minimumFactor)
        : LearningRateSchedule(warmupSteps, totalSteps, minimumFactor)
    {
        public override string Kind => "cosine";
        private protected override double Decay(double progress) => 0.5 * (1.0 + Math.Cos(Math.PI * progress));
    }
}
