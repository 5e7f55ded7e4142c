using System.Diagnostics;
using System.Globalization;
using LoraKernels.Autograd;
using LoraKernels.Demo.Plotting;
using LoraKernels.Demo.Training;
using LoraKernels.Layers;
using LoraKernels.Optim;
using LoraKernels.Variants;

namespace LoraKernels.Demo.Comparison;

/// <summary>One variant's result on the demo's task.</summary>
public sealed record ComparisonResult(string Variant, long TrainableParameters, long AdapterBytes, float FinalLoss,
                                      double StepsPerSecond, long PeakLiveBytes, IReadOnlyList<float> Losses, string Rank, double Seconds);

/// <summary>
/// The demo's task (a frozen MLP learning its teacher's hidden rank-4 change; see LoraMlpTrainer) trained
/// once per available variant of the catalogue, with the same steps, batches, rank and learning-rate
/// schedule: LoRA, rsLoRA, DoRA, VeRA, PiSSA, LoRA-FA, LoRA+, QLoRA, LoKr, FLoRA and the gated-rank variants (SoRA,
/// AdaLoRA, the mixture of rank-1 experts, MiRA; GatedTraining adds their own steps and runs MiRA's search). Each run builds its students
/// with Catalogue.Create over the same base weights and its own optimizer: AdamW (lr 1e-2, cosine to a
/// tenth, no weight decay), LoRA+'s groups for LoRA+ (A at lr/4, B at 16× that). VeRA uses its own
/// default rank, 256 (its r sizes the frozen shared projections; at r = 8 it trains only 8 + out
/// values per layer). Peak memory is the largest LiveBytes of the device sampled after every backward
/// pass and optimizer step, less the bytes live before the run (so: bases, teacher, adapters, gradients,
/// optimizer state and the tape's activations).
/// </summary>
public static class VariantComparison
{
    private const float LoraPlusRatio = 16f;
    private const float LoraPlusLearningRateDivisor = 4f;
    private const int VeraRank = 256;
    // The mixture of rank-1 experts routes each token to 4 of its r = 8 experts: the teacher's change has rank 4.
    private const int MixtureTopK = 4;

    /// <summary>The catalogue names compared, in the table's order.</summary>
    public static IReadOnlyList<string> Variants { get; } =
        ["lora", "rslora", "dora", "vera", "pissa", "lora-fa", "lora+", "qlora", "lokr", "flora", "sora", "adalora", "mixture-rank1", "auto-rank"];

    /// <summary>The gated-rank variants beside LoRA (the demo's --gated table).</summary>
    public static IReadOnlyList<string> GatedVariants { get; } = ["lora", "sora", "adalora", "mixture-rank1", "auto-rank"];

    public static IReadOnlyList<ComparisonResult> Run(Device device, TrainerOptions options, int steps, Action<string>? progress = null,
                                                      IReadOnlyList<string>? names = null)
    {
        var results = new List<ComparisonResult>();
        foreach (string name in names ?? Variants)
        {
            progress?.Invoke(name);
            results.Add(RunOne(device, options, steps, name));
        }
        return results;
    }

    public static RgbImage Plot(IReadOnlyList<ComparisonResult> results, Device device) =>
        LossCurvePlot.Render(results.Select(r => (r.Variant, r.Losses)).ToArray(),
                             $"variants on {device.Kind.ToString().ToLowerInvariant()}: loss (log scale)");

    /// <summary>The results as a text table.</summary>
    public static string FormatTable(IReadOnlyList<ComparisonResult> results)
    {
        var rows = new List<string[]> { new[] { "variant", "trainable params", "rank", "adapter bytes", "final loss", "steps/s", "time", "peak memory" } };
        foreach (ComparisonResult r in results)
        {
            rows.Add([
                r.Variant,
                r.TrainableParameters.ToString("N0", CultureInfo.InvariantCulture),
                r.Rank,
                r.AdapterBytes.ToString("N0", CultureInfo.InvariantCulture),
                r.FinalLoss.ToString("0.000e+00", CultureInfo.InvariantCulture),
                r.StepsPerSecond.ToString("0.0", CultureInfo.InvariantCulture),
                string.Create(CultureInfo.InvariantCulture, $"{r.Seconds:0.0} s"),
                string.Create(CultureInfo.InvariantCulture, $"{r.PeakLiveBytes / 1048576.0:0.00} MiB"),
            ]);
        }
        return TextTable.Format(rows);
    }

    private static ComparisonResult RunOne(Device device, TrainerOptions options, int steps, string name)
    {
        long before = device.LiveBytes;
        var random = new SplitMixRandom(options.Seed);
        var batches = new SplitMixRandom(options.Seed ^ 0x5EED_BA7C4ul);
        var owned = new List<IDisposable>();
        try
        {
            var shapes = new[] { (In: options.InFeatures, Out: options.HiddenFeatures), (In: options.HiddenFeatures, Out: options.OutFeatures) };
            VeraProjections? projections = name == "vera"
                ? Own(owned, VeraProjections.ForLayers(device, shapes, VeraRank, projectionPrngKey: options.Seed))
                : null;
            var adapterOptions = new AdapterOptions
            {
                Rank = name == "vera" ? VeraRank : options.Rank, Alpha = options.Alpha, VeraProjections = projections,
                TopK = MixtureTopK,
            };
            var students = new IAdapterLayer[2];
            var teachers = new LoraLinear[2];
            for (int layer = 0; layer < 2; layer++)
            {
                (students[layer], teachers[layer]) = CreateLayerPair(device, options, random, shapes[layer].In, shapes[layer].Out,
                                                                     name, adapterOptions with { Seed = options.Seed + (ulong)layer + 1 }, owned);
            }
            if (name == "auto-rank")
                return GatedTraining.RunMira(device, options, steps, students, teachers, Catalogue.Get(name).DisplayName, before);
            Parameter[] parameters = students.SelectMany(s => s.Parameters()).ToArray();
            AdamW optimizer = Own(owned, name == "lora+"
                ? LoraPlus.CreateOptimizer(parameters, options.LearningRate / LoraPlusLearningRateDivisor, LoraPlusRatio)
                : new AdamW(parameters, lr: options.LearningRate, weightDecay: 0f));
            optimizer.Schedule = LearningRateSchedule.Cosine(Math.Max(1, steps - 1), minimumFactor: 0.1);
            using var tape = new Tape();
            using GatedTraining extras = GatedTraining.For(name, students, steps);

            var losses = new List<float>(steps);
            long peak = 0;
            var clock = Stopwatch.StartNew();
            TimeSpan firstStep = TimeSpan.Zero;
            for (int step = 0; step < steps; step++)
            {
                float[] inputs = batches.Uniform(options.BatchSize * options.InFeatures, MathF.Sqrt(3f));
                using var x = Tensor.FromArray(device, inputs, options.BatchSize, options.InFeatures);
                using var target = TeacherForward(teachers, x);
                tape.Reset();
                Variable hidden = tape.Relu(students[0].Forward(tape, new Variable(x)));
                Variable prediction = students[1].Forward(tape, hidden);
                float loss = tape.MseLoss(prediction, target);
                extras.AddLosses(tape);
                tape.Backward();
                peak = Math.Max(peak, device.LiveBytes - before);
                optimizer.Step();
                extras.AfterStep(step, optimizer.Groups[0].LearningRate);
                peak = Math.Max(peak, device.LiveBytes - before);
                optimizer.ZeroGrad();
                if (!float.IsFinite(loss)) throw new InvalidOperationException($"{name}: the loss is {loss} at step {step + 1}.");
                losses.Add(loss);
                if (step == 0) firstStep = clock.Elapsed;
            }
            device.Synchronize();
            TimeSpan elapsed = clock.Elapsed;
            double rate = steps > 1 ? (steps - 1) / Math.Max((elapsed - firstStep).TotalSeconds, 1e-9) : 1.0 / Math.Max(firstStep.TotalSeconds, 1e-9);
            int tail = Math.Min(10, losses.Count);
            float final = (float)losses.Skip(losses.Count - tail).Average();
            return new ComparisonResult(Catalogue.Get(name).DisplayName, parameters.Sum(p => p.Value.ElementCount),
                                        AdapterBytes(students, projections), final, rate, peak, losses, extras.Rank(), elapsed.TotalSeconds);
        }
        finally
        {
            for (int i = owned.Count - 1; i >= 0; i--) owned[i].Dispose();
        }
    }

    /// <summary>
    /// The demo's layer pair (same draws, in the same order, as LoraMlpTrainer): W0 and bias ~ U(±1/√in), the
    /// teacher W0 + B*·A* (a merged rank-HiddenRank LoRA at scale 1), and the student made by the catalogue.
    /// </summary>
    private static (IAdapterLayer Student, LoraLinear Teacher) CreateLayerPair(Device device, TrainerOptions options, SplitMixRandom random,
                                                                               int inFeatures, int outFeatures, string name,
                                                                               AdapterOptions adapterOptions, List<IDisposable> owned)
    {
        float bound = 1f / MathF.Sqrt(inFeatures);
        float[] hiddenA = random.Normal(options.HiddenRank * inFeatures, 1f / MathF.Sqrt(inFeatures));
        float[] hiddenB = random.Normal(outFeatures * options.HiddenRank, options.HiddenChangeStd);
        using var w0 = Tensor.FromArray(device, random.Uniform(outFeatures * inFeatures, bound), outFeatures, inFeatures);
        using var bias = Tensor.FromArray(device, random.Uniform(outFeatures, bound), outFeatures);
        IAdapterLayer student = Own(owned, Catalogue.Create(name, device, w0, bias, adapterOptions));
        LoraLinear teacher = Own(owned, new LoraLinear(device, w0, bias, options.HiddenRank, alpha: options.HiddenRank));
        teacher.A.Value.CopyFrom(hiddenA);
        teacher.B.Value.CopyFrom(hiddenB);
        teacher.Merge();
        teacher.Training = false;
        return (student, teacher);
    }

    internal static Tensor TeacherForward(LoraLinear[] teachers, Tensor x)
    {
        using var preActivation = teachers[0].Forward(x);
        using var hidden = Ops.Elementwise.Relu(preActivation);
        return teachers[1].Forward(hidden);
    }

    /// <summary>Bytes an adapter checkpoint holds: the trainable tensors, LoRA-FA's frozen A, and VeRA's shared projections once.</summary>
    private static long AdapterBytes(IAdapterLayer[] students, VeraProjections? projections)
    {
        long bytes = students.SelectMany(s => s.Parameters()).Sum(p => p.Value.SizeInBytes);
        bytes += students.OfType<LoraFaLinear>().Sum(layer => layer.A.SizeInBytes);
        if (projections is not null) bytes += projections.VeraA.SizeInBytes + projections.VeraB.SizeInBytes;
        return bytes;
    }

    private static T Own<T>(List<IDisposable> owned, T disposable) where T : IDisposable
    {
        owned.Add(disposable);
        return disposable;
    }
}
