using System.Globalization;
using System.Text;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Reports;
using LoraKernels.Families.Conv;
using LoraKernels.Layers;
using LoraKernels.Ops;

namespace LoraKernels.Benchmarks;

/// <summary>
/// When to form a convolution's Tucker ΔW for inference: TuckerConv2d's two paths on the CPU, a 64 → 64 channel 3x3
/// convolution (padding 1) with ranks 8 and 8 on 6x6 images, batches of 1 to 64. Applied: the three stages (1×1 to
/// r_in, the 3x3 core, 1×1 to O) beside the base convolution; formed: ΔW into a copy of W0, then one convolution.
/// The table prints which path was faster at each batch and which one the layer's FLOP model chose.
/// </summary>
[BenchmarkCategory("cpu", "tucker")]
public class TuckerConvBenchmarks
{
    public const int Channels = 64, Kernel = 3, Rank = 8, Size = 6;

    [Params(1, 4, 16, 64)]
    public int Images { get; set; }

    private Tensor _x = null!, _w0 = null!;
    private TuckerConv2d _layer = null!;
    private ConvShape _shape;

    [GlobalSetup]
    public void Setup()
    {
        var values = new UniformValues(64);
        float[] Fill(int count, float bound) => values.Next(count, bound);
        Device cpu = Device.Cpu;
        _x = Tensor.FromArray(cpu, Fill(Images * Channels * Size * Size, 1f), Images, Channels, Size, Size);
        _w0 = Tensor.FromArray(cpu, Fill(Channels * Channels * Kernel * Kernel, 0.05f), Channels, Channels, Kernel, Kernel);
        _layer = new TuckerConv2d(cpu, _w0, null, Rank, Rank, 8f, Conv2dGeometry.Square(1, 1));
        _layer.Core.Value.CopyFrom(Fill(Rank * Rank * Kernel * Kernel, 0.1f));
        _shape = Conv2d.ShapeOf("benchmark", _x, _layer.W0, Conv2dGeometry.Square(1, 1));
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _layer.Dispose();
        _x.Dispose();
        _w0.Dispose();
    }

    [Benchmark(Baseline = true)]
    public void Applied() => _layer.ForwardApplied(_shape, _x).Dispose();

    [Benchmark]
    public void Formed() => _layer.ForwardFormed(_x).Dispose();

    /// <summary>The form-or-apply table printed after BenchmarkDotNet (empty when no TuckerConvBenchmarks case ran).</summary>
    internal static string Table(IEnumerable<Summary> summaries)
    {
        var times = MeanTimes.Of<TuckerConvBenchmarks>(summaries, nameof(Images));
        if (times.Count == 0) return "";
        var text = new StringBuilder();
        text.AppendLine($"Tucker conv adapter, inference: applied vs formed ΔW, CPU fp32, {Channels} → {Channels} channels, {Kernel}x{Kernel}, ranks {Rank}, {Size}x{Size} images:");
        using Tensor w0 = Tensor.Zeros(Device.Cpu, DType.F32, Channels, Channels, Kernel, Kernel);
        using var layer = new TuckerConv2d(Device.Cpu, w0, null, Rank, Rank, 8f, Conv2dGeometry.Square(1, 1));
        foreach (int n in times.Keys.Select(k => k.Value).Distinct().Order())
        {
            if (!times.TryGetValue((n, nameof(Applied)), out double applied) || !times.TryGetValue((n, nameof(Formed)), out double formed)) continue;
            bool modelForms = layer.FormIsCheaper(new ConvShape(n, Channels, Size, Size, Channels, Kernel, Kernel, Size, Size, Conv2dGeometry.Square(1, 1)));
            text.AppendLine(string.Create(CultureInfo.InvariantCulture,
                $"  {n,3} images: applied {applied / 1e3,8:F1} µs, formed {formed / 1e3,8:F1} µs, faster: {(formed < applied ? "formed" : "applied")}, the layer chooses: {(modelForms ? "formed" : "applied")}"));
        }
        return text.ToString();
    }
}
