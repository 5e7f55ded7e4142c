using System.Diagnostics;
using System.Globalization;
using LoraKernels.Autograd;
using LoraKernels.Demo.Plotting;
using LoraKernels.Demo.Training;
using LoraKernels.Layers;
using LoraKernels.Ops;
using LoraKernels.Optim;

namespace LoraKernels.Demo;

/// <summary>One adapter kind's result on the convolution task.</summary>
internal sealed record ConvResult(string Adapter, long TrainableParameters, long AdapterBytes, float InitialLoss, float FinalLoss,
                                  double Seconds, IReadOnlyList<float> Losses);

/// <summary>
/// The demo's convolution section (`--conv`): a small frozen CNN on synthetic images is fine-tuned towards a teacher
/// with conv-LoRA, LoKr and Tucker adapters side by side. The network is three 3x3 convolutions (3 → 16 → 16 → 8
/// channels, padding 1, the second with stride 2, ReLU between) on 16x16 images of smooth random patterns (a sum
/// of a few random plane waves per channel); the teacher is the same network with a hidden rank-2 change
/// ΔW = B·A ([O, r]·[r, C·3·3]) merged into each layer, and each student learns it from fresh images with AdamW and
/// an MSE loss on the output feature maps. Every student sees the same bases, teacher, images and schedule; its
/// adapters have about the same budget (r = 4; Tucker r_in = min(4, C), r_out = 4; LoKr r = 4). Prints a table
/// (trainable parameters, adapter bytes, initial and final loss, time) and writes one plot of the loss curves.
/// </summary>
internal static class ConvSection
{
    private const int ImageSize = 16, Batch = 16, Rank = 4, HiddenRank = 2;
    private const float Alpha = 8f, LearningRate = 1e-2f;
    private static readonly (int In, int Out, int Stride)[] Layers = [(3, 16, 1), (16, 16, 2), (16, 8, 1)];
    private static readonly string[] Adapters = ["conv-LoRA", "LoKr", "Tucker"];

    public static int Run(Device device, int steps, string outputDirectory)
    {
        Console.WriteLine($"LoraKernels convolution demo on {device.Name}");
        Console.WriteLine($"  frozen CNN 3 → 16 → 16 → 8 channels (3x3, padding 1, stride 1/2/1, ReLU) on {ImageSize}x{ImageSize} images; " +
                          $"the teacher adds a hidden rank-{HiddenRank} change to each layer; r = {Rank}, alpha = {Alpha}, " +
                          $"AdamW lr = {LearningRate} (cosine to a tenth), batch {Batch}, {steps} steps");
        var results = new List<ConvResult>();
        foreach (string adapter in Adapters)
        {
            Console.WriteLine($"  training {adapter} ...");
            results.Add(Train(device, adapter, steps));
        }
        Directory.CreateDirectory(outputDirectory);
        string plotPath = Path.Combine(outputDirectory, "conv.png");
        PngWriter.Write(plotPath, LossCurvePlot.Render(results.Select(r => (r.Adapter, r.Losses)).ToArray(),
                                                       $"CNN adapters on {device.Kind.ToString().ToLowerInvariant()}: loss (log scale)"));
        Console.WriteLine(Table(results));
        Console.WriteLine($"loss curves: {plotPath}");
        return results.All(r => r.FinalLoss < r.InitialLoss) ? 0 : 1;
    }

    private static ConvResult Train(Device device, string adapter, int steps)
    {
        var random = new SplitMixRandom(2025);
        var images = new SplitMixRandom(77);
        var owned = new List<IDisposable>();
        try
        {
            var students = new IAdapterLayer[Layers.Length];
            var teachers = new (Tensor Weight, Tensor Bias, Conv2dGeometry Geometry)[Layers.Length];
            for (int l = 0; l < Layers.Length; l++)
            {
                var (inChannels, outChannels, stride) = Layers[l];
                var geometry = Conv2dGeometry.Square(stride, 1);
                int patch = inChannels * 9;
                float[] w0 = random.Uniform(outChannels * patch, MathF.Sqrt(3f / patch));
                float[] bias = random.Uniform(outChannels, 0.1f);
                float[] hiddenA = random.Normal(HiddenRank * patch, 1f / MathF.Sqrt(patch));
                float[] hiddenB = random.Normal(outChannels * HiddenRank, 0.5f);
                float[] teacher = (float[])w0.Clone();
                for (int o = 0; o < outChannels; o++)
                    for (int k = 0; k < patch; k++)
                        for (int h = 0; h < HiddenRank; h++) teacher[o * patch + k] += hiddenB[o * HiddenRank + h] * hiddenA[h * patch + k];
                using Tensor w0t = Tensor.FromArray(device, w0, outChannels, inChannels, 3, 3);
                using Tensor biasT = Tensor.FromArray(device, bias, outChannels);
                students[l] = Own(owned, adapter switch
                {
                    "conv-LoRA" => new LoraConv2d(device, w0t, biasT, Rank, Alpha, geometry, seed: (ulong)l + 1),
                    "LoKr" => new LokrConv2d(device, w0t, biasT, Rank, Alpha, geometry, seed: (ulong)l + 1),
                    _ => (IAdapterLayer)new TuckerConv2d(device, w0t, biasT, Math.Min(Rank, inChannels), Rank, Alpha, geometry, (ulong)l + 1),
                });
                teachers[l] = (Own(owned, Tensor.FromArray(device, teacher, outChannels, inChannels, 3, 3)), Own(owned, Tensor.FromArray(device, bias, outChannels)), geometry);
            }
            Parameter[] parameters = students.SelectMany(s => s.Parameters()).ToArray();
            using var optimizer = new AdamW(parameters, lr: LearningRate, weightDecay: 0f);
            using var tape = new Tape();
            var losses = new List<float>(steps);
            var clock = Stopwatch.StartNew();
            for (int step = 0; step < steps; step++)
            {
                using Tensor x = Tensor.FromArray(device, Patterns(images), Batch, 3, ImageSize, ImageSize);
                using Tensor target = Teacher(teachers, x);
                optimizer.LearningRate = (float)(LearningRate * (0.1 + 0.9 * 0.5 * (1 + Math.Cos(Math.PI * step / Math.Max(1, steps - 1)))));
                tape.Reset();
                Variable h = new(x);
                for (int l = 0; l < students.Length; l++)
                {
                    h = students[l].Forward(tape, h);
                    if (l + 1 < students.Length) h = tape.Relu(h);
                }
                float loss = tape.MseLoss(h, target);
                tape.Backward();
                optimizer.Step();
                optimizer.ZeroGrad();
                if (!float.IsFinite(loss)) throw new InvalidOperationException($"{adapter}: the loss is {loss} at step {step + 1}.");
                losses.Add(loss);
            }
            device.Synchronize();
            int tail = Math.Min(10, losses.Count);
            return new ConvResult(adapter, parameters.Sum(p => p.Value.ElementCount), parameters.Sum(p => p.Value.SizeInBytes), losses[0],
                                  (float)losses.Skip(losses.Count - tail).Average(), clock.Elapsed.TotalSeconds, losses);
        }
        finally
        {
            for (int i = owned.Count - 1; i >= 0; i--) owned[i].Dispose();
        }
    }

    /// <summary>The teacher's output: its three merged convolutions with ReLU between.</summary>
    private static Tensor Teacher((Tensor Weight, Tensor Bias, Conv2dGeometry Geometry)[] layers, Tensor x)
    {
        Tensor h = Conv2d.Forward(x, layers[0].Weight, layers[0].Bias, layers[0].Geometry);
        for (int l = 1; l < layers.Length; l++)
        {
            using Tensor activated = Elementwise.Relu(h);
            h.Dispose();
            h = Conv2d.Forward(activated, layers[l].Weight, layers[l].Bias, layers[l].Geometry);
        }
        return h;
    }

    /// <summary>A batch of smooth random images: each channel the sum of three plane waves of random direction, frequency and phase.</summary>
    private static float[] Patterns(SplitMixRandom random)
    {
        var pixels = new float[Batch * 3 * ImageSize * ImageSize];
        for (int plane = 0; plane < Batch * 3; plane++)
        {
            float[] wave = random.Uniform(3 * 4, 1f);
            for (int y = 0; y < ImageSize; y++)
                for (int x = 0; x < ImageSize; x++)
                {
                    float value = 0f;
                    for (int k = 0; k < 3; k++)
                        value += MathF.Sin(MathF.PI * (wave[4 * k] * x + wave[4 * k + 1] * y) / 2f + MathF.PI * wave[4 * k + 2]) * (0.5f + 0.5f * wave[4 * k + 3]);
                    pixels[(plane * ImageSize + y) * ImageSize + x] = value;
                }
        }
        return pixels;
    }

    private static string Table(IReadOnlyList<ConvResult> results)
    {
        var rows = new List<string[]> { new[] { "adapter", "trainable params", "adapter bytes", "initial loss", "final loss", "time" } };
        foreach (ConvResult r in results)
            rows.Add([
                r.Adapter, r.TrainableParameters.ToString("N0", CultureInfo.InvariantCulture), r.AdapterBytes.ToString("N0", CultureInfo.InvariantCulture),
                r.InitialLoss.ToString("0.000e+00", CultureInfo.InvariantCulture), r.FinalLoss.ToString("0.000e+00", CultureInfo.InvariantCulture),
                string.Create(CultureInfo.InvariantCulture, $"{r.Seconds:0.00} s"),
            ]);
        return Comparison.TextTable.Format(rows);
    }

    private static T Own<T>(List<IDisposable> owned, T disposable) where T : IDisposable
    {
        owned.Add(disposable);
        return disposable;
    }
}
