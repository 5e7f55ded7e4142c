using System.Diagnostics;
using System.Globalization;
using LoraKernels;
using LoraKernels.Demo.Training;
using LoraKernels.Layers;

/// <summary>
/// The demo's QLoRA part: the same task, adapters and learning-rate schedule as the LoRA run, with
/// each student's frozen base stored in NF4 (block size 64, double quantization), for as many steps,
/// then a table of the measured memory (MemoryReport: the bytes of the buffers each layer and its
/// AdamW state hold) of both runs and their final losses.
/// </summary>
internal static class QloraSection
{
    /// <summary>Trains the QLoRA student and prints the comparison; true when its loss fell.</summary>
    public static bool Run(Device device, TrainerOptions options, LoraMlpTrainer lora, IReadOnlyList<float> loraLosses)
    {
        int steps = loraLosses.Count;
        Console.WriteLine();
        Console.WriteLine($"QLoRA on {device.Name}: the same task, adapters and schedule over NF4 bases (block size 64, double quantization), {steps} steps");
        using var trainer = new LoraMlpTrainer(device, options with { QuantizedBase = true });
        var losses = new List<float>(steps);
        int reportEvery = Math.Max(1, steps / 5);
        var clock = Stopwatch.StartNew();
        for (int step = 1; step <= steps; step++)
        {
            float loss = trainer.Step();
            if (!float.IsFinite(loss))
            {
                Console.Error.WriteLine($"QLoRA step {step}: the loss is {loss}; stopping");
                return false;
            }
            losses.Add(loss);
            if (step == 1 || step % reportEvery == 0 || step == steps)
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  step {step,5}  loss {loss:0.000e+00}"));
        }
        double seconds = clock.Elapsed.TotalSeconds;
        float final = losses.TakeLast(10).Average();
        float loraFinal = loraLosses.TakeLast(10).Average();

        MemoryReport loraMemory = Sum(lora.MemoryReports()), qloraMemory = Sum(trainer.MemoryReports());
        var rows = new (string Name, string Lora, string Qlora)[]
        {
            ("", "LoRA", "QLoRA (NF4)"),
            ("frozen base weights + biases", Bytes(loraMemory.BaseWeightBytes), Bytes(qloraMemory.BaseWeightBytes)),
            ("quantization statistics", Bytes(loraMemory.StatisticsBytes), Bytes(qloraMemory.StatisticsBytes)),
            ("adapters (A, B)", Bytes(loraMemory.AdapterBytes), Bytes(qloraMemory.AdapterBytes)),
            ("AdamW state", Bytes(loraMemory.OptimizerStateBytes), Bytes(qloraMemory.OptimizerStateBytes)),
            ("total (both layers)", Bytes(loraMemory.TotalBytes), Bytes(qloraMemory.TotalBytes)),
            ($"final loss (mean of the last 10 of {steps})", Loss(loraFinal), Loss(final)),
        };
        int nameWidth = rows.Max(r => r.Name.Length), loraWidth = rows.Max(r => r.Lora.Length), qloraWidth = rows.Max(r => r.Qlora.Length);
        string rule = $"+{new string('-', nameWidth + 2)}+{new string('-', loraWidth + 2)}+{new string('-', qloraWidth + 2)}+";
        Console.WriteLine(rule);
        foreach (var (name, loraValue, qloraValue) in rows)
            Console.WriteLine($"| {name.PadRight(nameWidth)} | {loraValue.PadLeft(loraWidth)} | {qloraValue.PadLeft(qloraWidth)} |");
        Console.WriteLine(rule);
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"  QLoRA: {steps} steps in {seconds:0.00} s; base weights {(double)loraMemory.BaseWeightBytes / (qloraMemory.BaseWeightBytes + qloraMemory.StatisticsBytes):0.0}× smaller with their statistics"));
        Console.WriteLine("  (the teacher uses the dense weights: QLoRA's loss levels off at what the NF4 rounding of the base costs, which a rank-8 adapter cannot fully undo)");
        return final < losses[0];
    }

    private static MemoryReport Sum(IReadOnlyList<MemoryReport> reports) => new(
        "all", reports.Sum(r => r.BaseWeightBytes), reports.Sum(r => r.StatisticsBytes), reports.Sum(r => r.AdapterBytes),
        reports.Sum(r => r.GradientBytes), reports.Sum(r => r.OptimizerStateBytes));

    private static string Bytes(long bytes) => string.Create(CultureInfo.InvariantCulture, $"{bytes:N0} B");

    private static string Loss(float loss) => loss.ToString("0.000e+00", CultureInfo.InvariantCulture);
}
