using System.Diagnostics;
using System.Globalization;
using LoraKernels;
using LoraKernels.Demo.Training;

/// <summary>
/// The demo's Mamba part (--mamba): LoRA on all four projections of a Mamba block learns a teacher block's hidden
/// change on random sequences (MambaTrainer), trained end to end through the convolution and the selective scan;
/// prints the loss as it falls and a summary. Kept apart from the default demo, whose run stays under a minute.
/// </summary>
internal static class MambaSection
{
    /// <summary>Trains for <paramref name="steps"/> steps; 0 when the loss fell below a tenth of the first step's.</summary>
    public static int Run(Device device, int steps)
    {
        var options = new MambaTrainerOptions();
        var block = options.Block;
        Console.WriteLine($"Mamba block with LoRA on {device.Name}: d_model {block.ModelFeatures}, d_inner {block.InnerFeatures}, " +
                          $"d_state {block.States}, d_conv {block.ConvWidth}, dt_rank {block.Rank}; {options.Sequences} sequences of {options.Length} steps per batch");
        Console.WriteLine($"  task: match a teacher block whose in_proj and out_proj carry a hidden rank-{options.HiddenRank} change; " +
                          $"LoRA r = {options.Rank}, alpha = {options.Alpha} on in_proj, x_proj, dt_proj, out_proj; AdamW lr = {options.LearningRate}, {steps} steps");
        using var trainer = new MambaTrainer(device, options);
        var losses = new List<float>(steps);
        int reportEvery = Math.Max(1, steps / 10);
        var clock = Stopwatch.StartNew();
        for (int step = 1; step <= steps; step++)
        {
            float loss = trainer.Step();
            if (!float.IsFinite(loss))
            {
                Console.Error.WriteLine($"Mamba step {step}: the loss is {loss}; stopping");
                return 1;
            }
            losses.Add(loss);
            if (step == 1 || step % reportEvery == 0 || step == steps)
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  step {step,5}  loss {loss:0.000e+00}"));
        }
        float initial = losses[0], final = losses.TakeLast(10).Average();
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"  trainable parameters {trainer.TrainableParameters:N0}; loss {initial:0.000e+00} → {final:0.000e+00} (mean of the last 10), " +
            $"{initial / final:0.0}× lower; {clock.Elapsed.TotalSeconds:0.0} s"));
        return final < 0.1f * initial ? 0 : 1;
    }
}
