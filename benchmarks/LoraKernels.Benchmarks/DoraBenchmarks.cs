using System.Globalization;
using System.Text;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Reports;
using LoraKernels.Interop;

namespace LoraKernels.Benchmarks;

/// <summary>
/// One DoRA training step's kernels against the LoRA step it extends, on the CPU at M = 512,
/// in = out = 4096, r = 16 (fp32, no dropout, no bias): LoRA is lk_cpu_lora_forward +
/// lk_cpu_lora_backward (dx, dA, dB); DoRA is lk_cpu_dora_weight_norm (‖W0‖² cached, as
/// DoraLinear does) + lk_cpu_dora_forward (keeping z) + lk_cpu_dora_backward (dx, dA, dB, dm).
/// Both write into preallocated buffers. DoRA's extra work is the norm (W0 Aᵀ: 2·out·in·r FLOPs,
/// W0 read once more) and three M·out passes (column scale, dm and dz); the target is DoRA ≤ 1.3×
/// LoRA's time. The table after BenchmarkDotNet prints the ratio.
/// </summary>
[BenchmarkCategory("cpu", "dora")]
public unsafe class DoraBenchmarks
{
    public const int M = 512, Features = 4096, Rank = 16;
    public const double TargetRatio = 1.3;
    private const float Scale = 2f;

    private NativeFloats _x = null!, _w0 = null!, _a = null!, _b = null!, _magnitude = null!, _sqnorm = null!, _norm = null!;
    private NativeFloats _y = null!, _u = null!, _z = null!, _dy = null!, _dx = null!, _dA = null!, _dB = null!, _dm = null!;

    [GlobalSetup]
    public void Setup()
    {
        var random = new Random(512);
        float[] Fill(int count, float bound, float offset = 0f)
        {
            var values = new float[count];
            for (int i = 0; i < count; i++) values[i] = offset + (float)(random.NextDouble() * 2 - 1) * bound;
            return values;
        }
        const int n = Features;
        _x = new NativeFloats(Fill(M * n, 1f));
        _w0 = new NativeFloats(Fill(n * n, 1f / MathF.Sqrt(n)));
        _a = new NativeFloats(Fill(Rank * n, 1f / MathF.Sqrt(n)));
        _b = new NativeFloats(Fill(n * Rank, 0.01f));  // a trained-looking B (non-zero), so the norm differs from ‖W0‖
        _magnitude = new NativeFloats(Fill(n, 0.1f, 1f));
        _dy = new NativeFloats(Fill(M * n, 1f));
        _sqnorm = new NativeFloats(n);
        _norm = new NativeFloats(n);
        _y = new NativeFloats(M * n);
        _u = new NativeFloats(M * Rank);
        _z = new NativeFloats(M * n);
        _dx = new NativeFloats(M * n);
        _dA = new NativeFloats(Rank * n);
        _dB = new NativeFloats(n * Rank);
        _dm = new NativeFloats(n);
        Check.Cpu(NativeCpu.lk_cpu_dora_row_sqnorm(n, n, _w0.Pointer, _sqnorm.Pointer));
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        foreach (NativeFloats buffer in new[] { _x, _w0, _a, _b, _magnitude, _sqnorm, _norm, _y, _u, _z, _dy, _dx, _dA, _dB, _dm })
            buffer.Dispose();
    }

    [Benchmark(Baseline = true)]
    public void LoraStep()
    {
        Check.Cpu(NativeCpu.lk_cpu_lora_forward(M, Features, Features, Rank, _x.Pointer, _w0.Pointer, null, _a.Pointer, _b.Pointer,
                                                Scale, 0f, 0, _y.Pointer, _u.Pointer));
        Check.Cpu(NativeCpu.lk_cpu_lora_backward(M, Features, Features, Rank, _x.Pointer, _w0.Pointer, _a.Pointer, _b.Pointer,
                                                 _u.Pointer, _dy.Pointer, Scale, 0f, 0, _dx.Pointer, _dA.Pointer, _dB.Pointer));
    }

    [Benchmark]
    public void DoraStep()
    {
        Check.Cpu(NativeCpu.lk_cpu_dora_weight_norm(Features, Features, Rank, _w0.Pointer, _sqnorm.Pointer, _a.Pointer, _b.Pointer,
                                                    Scale, _norm.Pointer, null));
        Check.Cpu(NativeCpu.lk_cpu_dora_forward(M, Features, Features, Rank, _x.Pointer, _w0.Pointer, null, _a.Pointer, _b.Pointer,
                                                Scale, _magnitude.Pointer, _norm.Pointer, _y.Pointer, _u.Pointer, _z.Pointer));
        Check.Cpu(NativeCpu.lk_cpu_dora_backward(M, Features, Features, Rank, _x.Pointer, _w0.Pointer, _a.Pointer, _b.Pointer,
                                                 _u.Pointer, _z.Pointer, _dy.Pointer, Scale, _magnitude.Pointer, _norm.Pointer,
                                                 _dx.Pointer, _dA.Pointer, _dB.Pointer, _dm.Pointer));
    }

    /// <summary>The DoRA/LoRA table printed after BenchmarkDotNet (empty when no DoraBenchmarks case ran).</summary>
    internal static string Table(IEnumerable<Summary> summaries)
    {
        double? lora = null, dora = null;
        foreach (Summary summary in summaries)
            foreach (var benchmark in summary.BenchmarksCases.Where(c => c.Descriptor.Type == typeof(DoraBenchmarks)))
            {
                double? ns = summary[benchmark]?.ResultStatistics?.Mean;
                if (benchmark.Descriptor.WorkloadMethod.Name == nameof(LoraStep)) lora = ns;
                else dora = ns;
            }
        if (lora is null && dora is null) return "";
        string Ms(double? ns) => ns is { } t ? (t / 1e6).ToString("F1", CultureInfo.InvariantCulture) + " ms" : "NA";
        var text = new StringBuilder();
        text.AppendLine($"DoRA vs LoRA training step (forward + backward), CPU fp32, M = {M}, in = out = {Features}, r = {Rank}:");
        text.AppendLine($"  LoRA {Ms(lora)}, DoRA {Ms(dora)}" + (lora is { } l && dora is { } d
            ? string.Create(CultureInfo.InvariantCulture, $", DoRA / LoRA = {d / l:F3} (target <= {TargetRatio:F1}: {(d / l <= TargetRatio ? "met" : "NOT met")})")
            : ""));
        return text.ToString();
    }
}
