using System.Globalization;
using System.Text;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Reports;
using LoraKernels.Interop;

namespace LoraKernels.Benchmarks;

/// <summary>
/// Many adapters at once on the CPU (issue 12's bar): a batch of M = 64 decode rows over a 4096 × 4096
/// base, r = 16, fp32, no bias, every row with its own segment and adapter m mod D, for D = 1, 8 and 64
/// distinct adapters out of a table of 64 (lk_cpu_segmented_forward: one dense base product for the
/// batch, then each row's shrink and expand), against the same rows with one adapter through the fused
/// LoRA forward (lk_cpu_lora_forward), the baseline. Both write into preallocated outputs. The bar:
/// D = 64 costs at most 1.15× the single adapter (Punica's headline: many adapters at near single-adapter
/// cost). The adapters' extra bytes are 4·r·(in + out) = 512 KiB per distinct adapter (32 MiB at D = 64)
/// beside the base's 64 MiB and 2·M·in·out = 2.1 GFLOP. The table after BenchmarkDotNet prints the ratios.
/// </summary>
[BenchmarkCategory("cpu", "segmented")]
public unsafe class SegmentedBenchmarks
{
    public const int M = 64, Features = 4096, Rank = 16, TableAdapters = 64;
    public const double TargetRatio = 1.15;

    private NativeFloats _x = null!, _w0 = null!, _aTable = null!, _bTable = null!, _scales = null!, _y = null!, _u = null!;
    private int[] _segments = null!;

    /// <summary>Distinct adapters among the 64 rows (row m uses adapter m mod D).</summary>
    [Params(1, 8, 64)]
    public int Distinct { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        var random = new Random(64);
        float[] Fill(int count, float bound)
        {
            var values = new float[count];
            for (int i = 0; i < count; i++) values[i] = (float)(random.NextDouble() * 2 - 1) * bound;
            return values;
        }
        const int n = Features;
        _x = new NativeFloats(Fill(M * n, 1f));
        _w0 = new NativeFloats(Fill(n * n, 1f / MathF.Sqrt(n)));
        _aTable = new NativeFloats(Fill(TableAdapters * Rank * n, 1f / MathF.Sqrt(n)));
        _bTable = new NativeFloats(Fill(TableAdapters * n * Rank, 0.01f));
        _scales = new NativeFloats(Fill(TableAdapters, 2f));
        _y = new NativeFloats(M * n);
        _u = new NativeFloats(M * Rank);
        _segments = new int[3 * M];
        for (int m = 0; m < M; m++) (_segments[3 * m], _segments[3 * m + 1], _segments[3 * m + 2]) = (m, 1, m % Distinct);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        foreach (NativeFloats buffer in new[] { _x, _w0, _aTable, _bTable, _scales, _y, _u }) buffer.Dispose();
    }

    /// <summary>The same 64 rows with one adapter (the table's first), fused into the base product.</summary>
    [Benchmark(Baseline = true)]
    public void SingleAdapterLora() =>
        Check.Cpu(NativeCpu.lk_cpu_lora_forward(M, Features, Features, Rank, _x.Pointer, _w0.Pointer, null, _aTable.Pointer, _bTable.Pointer,
                                                2f, 0f, 0, _y.Pointer, _u.Pointer));

    [Benchmark]
    public void SegmentedPerRowAdapters()
    {
        fixed (int* segments = _segments)
            Check.Cpu(NativeCpu.lk_cpu_segmented_forward(M, Features, Features, Rank, TableAdapters, _x.Pointer, _w0.Pointer, null, null,
                                                         _aTable.Pointer, _bTable.Pointer, _scales.Pointer, segments, M, _y.Pointer,
                                                         _u.Pointer));
    }

    /// <summary>The segmented/single-adapter table printed after BenchmarkDotNet (empty when no SegmentedBenchmarks case ran).</summary>
    internal static string Table(IEnumerable<Summary> summaries)
    {
        var single = new Dictionary<int, double>();
        var segmented = new Dictionary<int, double>();
        foreach (Summary summary in summaries)
            foreach (var benchmark in summary.BenchmarksCases.Where(c => c.Descriptor.Type == typeof(SegmentedBenchmarks)))
            {
                if (summary[benchmark]?.ResultStatistics?.Mean is not { } ns) continue;
                int distinct = Convert.ToInt32(benchmark.Parameters["Distinct"], CultureInfo.InvariantCulture);
                (benchmark.Descriptor.WorkloadMethod.Name == nameof(SingleAdapterLora) ? single : segmented)[distinct] = ns;
            }
        if (segmented.Count == 0) return "";
        // Each D against the single-adapter run of its own parameter group (measured beside it).
        var text = new StringBuilder();
        text.AppendLine($"Many adapters at once, CPU fp32, {M} decode rows, in = out = {Features}, r = {Rank} (ratios against the single adapter measured in the same group):");
        foreach (var (distinct, ns) in segmented.OrderBy(p => p.Key))
        {
            double? baseline = single.TryGetValue(distinct, out double b) ? b : null;
            string ratio = baseline is { } bl ? string.Create(CultureInfo.InvariantCulture, $" vs {bl / 1e6:F2} ms single: {ns / bl:F3}×") : "";
            string bar = distinct == TableAdapters && baseline is { } bb
                ? $" (target <= {TargetRatio.ToString("F2", CultureInfo.InvariantCulture)}: {(ns / bb <= TargetRatio ? "met" : "NOT met")})"
                : "";
            text.AppendLine(string.Create(CultureInfo.InvariantCulture, $"  {distinct,2} distinct adapters: {ns / 1e6:F2} ms{ratio}{bar}"));
        }
        return text.ToString();
    }
}
