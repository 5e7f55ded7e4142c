using System.Diagnostics;
using System.Globalization;
using LoraKernels;
using LoraKernels.Demo.Comparison;
using LoraKernels.Demo.Plotting;
using LoraKernels.Demo.Training;

// The LoraKernels demo: LoRA (r = 8, alpha = 16) learns the hidden rank-4 change of a frozen
// random MLP (256 → 512 → 256) from random inputs with AdamW, on the CPU kernels, the SIMT
// emulator or a CUDA GPU. Prints a progress bar and the loss, a final table, and writes a
// loss-curve PNG; then QLoRA (QloraSection.cs) on the same task with NF4 bases, and a table of
// both runs' measured memory and final losses.

return DemoProgram.Run(args);

internal static class DemoProgram
{
    private const string Usage =
        "usage: LoraKernels.Demo [--device cpu|simt|cuda[:N]] [--steps N] [--out DIR] [--compare | --gated | --conv | --mamba | --catalogue]\n" +
        "  --device  where the kernels run (default: LORAKERNELS_DEVICE, else cuda if present, else cpu)\n" +
        "  --steps   AdamW steps (default 500; simt, the emulator, takes about ten seconds for them)\n" +
        "  --out     folder for loss.png (default out/demo under the current directory)\n" +
        "  --compare train every available variant on the same task and budget; print a table, write variants.png\n" +
        "  --gated   the gated-rank variants (SoRA, AdaLoRA, the mixture of rank-1 experts, MiRA) beside LoRA; write gated.png\n" +
        "  --conv    fine-tune a small CNN with conv-LoRA, LoKr and Tucker adapters side by side (default 150 steps); write conv.png\n" +
        "  --mamba   LoRA on a Mamba block's projections learns a teacher block's hidden change (the selective scan, end to end)\n" +
        "  --catalogue  print the catalogue of variants and exit";

    public static int Run(string[] args)
    {
        int? steps = null;
        string outputDirectory = Path.Combine(Environment.CurrentDirectory, "out", "demo");
        IReadOnlyList<string>? compared = null;
        string plotName = "variants.png";
        bool conv = false, mamba = false;
        string? deviceName = null;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--steps" when i + 1 < args.Length && int.TryParse(args[i + 1], CultureInfo.InvariantCulture, out int n) && n >= 1:
                    steps = n; i++; break;
                case "--out" when i + 1 < args.Length:
                    outputDirectory = Path.GetFullPath(args[++i]); break;
                case "--device" when i + 1 < args.Length:
                    deviceName = args[++i]; break;
                case var option when option.StartsWith("--device=", StringComparison.Ordinal):
                    deviceName = option["--device=".Length..]; break;
                case "--compare":
                    compared = VariantComparison.Variants; break;
                case "--gated":
                    compared = VariantComparison.GatedVariants; plotName = "gated.png"; break;
                case "--conv":
                    conv = true; break;
                case "--mamba":
                    mamba = true; break;
                case "--catalogue":
                    Console.Write(LoraKernels.Variants.Catalogue.FormatTable()); return 0;
                case "-h" or "--help":
                    Console.WriteLine(Usage); return 0;
                default:
                    Console.Error.WriteLine($"unknown or incomplete argument '{args[i]}'\n{Usage}"); return 2;
            }
        }

        Device device = Device.Select(deviceName);
        if (conv) return LoraKernels.Demo.ConvSection.Run(device, steps ?? 150, outputDirectory);
        int stepCount = steps ?? 500;
        var options = new TrainerOptions { ScheduleSteps = stepCount };
        if (compared is not null) return CompareVariants(device, options, stepCount, outputDirectory, compared, plotName);
        if (mamba) return MambaSection.Run(device, stepCount);
        Console.WriteLine($"LoraKernels demo on {device.Name}");
        Console.WriteLine($"  frozen MLP {options.InFeatures} → {options.HiddenFeatures} → {options.OutFeatures} (ReLU); " +
                          $"teacher adds a hidden rank-{options.HiddenRank} change to each layer; " +
                          $"LoRA r = {options.Rank}, alpha = {options.Alpha}, AdamW lr = {options.LearningRate} (cosine to a tenth), batch {options.BatchSize}, {stepCount} steps");

        using var trainer = new LoraMlpTrainer(device, options);
        var losses = new List<float>(stepCount);
        int reportEvery = Math.Max(1, stepCount / 10);
        var clock = Stopwatch.StartNew();
        TimeSpan firstStep = TimeSpan.Zero;
        var progress = new ProgressLine(stepCount);
        for (int step = 1; step <= stepCount; step++)
        {
            float loss = trainer.Step();
            if (!float.IsFinite(loss))
            {
                progress.Clear();
                Console.Error.WriteLine($"step {step}: the loss is {loss}; stopping");
                return 1;
            }
            losses.Add(loss);
            if (step == 1) firstStep = clock.Elapsed;
            double rate = StepsPerSecond(step, clock.Elapsed, firstStep);
            if (step == 1 || step % reportEvery == 0 || step == stepCount)
            {
                progress.Clear();
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  step {step,5}  loss {loss:0.000e+00}"));
            }
            progress.Show(step, loss, rate);
        }
        progress.Clear();
        TimeSpan elapsed = clock.Elapsed;

        Directory.CreateDirectory(outputDirectory);
        string plotPath = Path.Combine(outputDirectory, "loss.png");
        PngWriter.Write(plotPath, LossCurvePlot.Render(losses, $"LoRA demo on {device.Kind.ToString().ToLowerInvariant()}: loss (log scale)"));

        float initial = losses[0], final = TailMean(losses);
        var rows = new (string, string)[]
        {
            ("device", device.Name),
            ("trainable parameters", string.Create(CultureInfo.InvariantCulture,
                $"{trainer.TrainableParameters:N0} of {trainer.TotalParameters:N0} ({100.0 * trainer.TrainableParameters / trainer.TotalParameters:0.00} %)")),
            ("initial loss (step 1)", initial.ToString("0.000e+00", CultureInfo.InvariantCulture)),
            ($"final loss (mean of last {Math.Min(10, losses.Count)})", final.ToString("0.000e+00", CultureInfo.InvariantCulture)),
            ("loss reduction", string.Create(CultureInfo.InvariantCulture, $"{initial / final:0.0}×")),
            ("steps per second", string.Create(CultureInfo.InvariantCulture,
                $"{StepsPerSecond(stepCount, elapsed, firstStep):0.0} (after step 1, which took {firstStep.TotalMilliseconds:0} ms)")),
            ("wall time", string.Create(CultureInfo.InvariantCulture, $"{elapsed.TotalSeconds:0.00} s for {stepCount} steps")),
            ("loss curve", plotPath),
        };
        PrintTable(rows);
        bool qloraLearned = QloraSection.Run(device, options, trainer, losses);
        return final < initial && qloraLearned ? 0 : 1;
    }

    /// <summary>The --compare and --gated modes: the variants on the demo's task, one table and one plot.</summary>
    private static int CompareVariants(Device device, TrainerOptions options, int stepCount, string outputDirectory,
                                       IReadOnlyList<string> names, string plotName)
    {
        Console.WriteLine($"LoraKernels variant comparison on {device.Name}: {stepCount} steps each, batch {options.BatchSize}, " +
                          $"r = {options.Rank} (VeRA 256), alpha = {options.Alpha}");
        var clock = Stopwatch.StartNew();
        var results = VariantComparison.Run(device, options, stepCount, name => Console.WriteLine($"  training {name} ..."), names);
        Directory.CreateDirectory(outputDirectory);
        string plotPath = Path.Combine(outputDirectory, plotName);
        PngWriter.Write(plotPath, VariantComparison.Plot(results, device));
        Console.WriteLine(VariantComparison.FormatTable(results));
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"wall time {clock.Elapsed.TotalSeconds:0.0} s; loss curves: {plotPath}"));
        return 0;
    }

    /// <summary>Steps per second after the first step, which also pays for kernel compilation and warm-up.</summary>
    private static double StepsPerSecond(int step, TimeSpan elapsed, TimeSpan firstStep) =>
        step > 1 ? (step - 1) / Math.Max((elapsed - firstStep).TotalSeconds, 1e-9) : 1.0 / Math.Max(firstStep.TotalSeconds, 1e-9);

    /// <summary>The mean of the last ten losses: one batch's loss is noisy, the trend is not.</summary>
    private static float TailMean(List<float> losses)
    {
        int count = Math.Min(10, losses.Count);
        double sum = 0;
        for (int i = losses.Count - count; i < losses.Count; i++) sum += losses[i];
        return (float)(sum / count);
    }

    private static void PrintTable((string Name, string Value)[] rows)
    {
        int nameWidth = rows.Max(r => r.Name.Length), valueWidth = rows.Max(r => r.Value.Length);
        string rule = $"+{new string('-', nameWidth + 2)}+{new string('-', valueWidth + 2)}+";
        Console.WriteLine(rule);
        foreach (var (name, value) in rows)
            Console.WriteLine($"| {name.PadRight(nameWidth)} | {value.PadRight(valueWidth)} |");
        Console.WriteLine(rule);
    }

    /// <summary>A one-line progress bar redrawn in place with a carriage return (only on a terminal).</summary>
    private sealed class ProgressLine(int total)
    {
        private const int BarWidth = 30;
        private readonly bool _enabled = !Console.IsOutputRedirected;
        private readonly Stopwatch _sinceDraw = Stopwatch.StartNew();
        private int _lastLength;

        public void Show(int step, float loss, double stepsPerSecond)
        {
            if (!_enabled || (_sinceDraw.ElapsedMilliseconds < 100 && step != total)) return;
            _sinceDraw.Restart();
            int filled = (int)((long)BarWidth * step / total);
            string line = string.Create(CultureInfo.InvariantCulture,
                $"  [{new string('#', filled)}{new string('.', BarWidth - filled)}] step {step}/{total}  loss {loss:0.000e+00}  {stepsPerSecond:0.0} steps/s");
            Console.Write("\r" + line.PadRight(_lastLength));
            _lastLength = line.Length;
        }

        public void Clear()
        {
            if (!_enabled || _lastLength == 0) return;
            Console.Write("\r" + new string(' ', _lastLength) + "\r");
            _lastLength = 0;
        }
    }
}
