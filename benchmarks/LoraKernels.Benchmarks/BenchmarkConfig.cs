using System.Globalization;
using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Exporters;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Loggers;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;
using BenchmarkDotNet.Toolchains.InProcess.NoEmit;
using Perfolizer.Horology;

namespace LoraKernels.Benchmarks;

/// <summary>
/// A short in-process job sized for a 2-core machine (every benchmark in about a second or two):
/// 2 warm-up and 6 measured iterations of about 150 ms each, no overhead evaluation (each
/// invocation is a native call of microseconds or more). Baselines are compared within a
/// category (Forward, Backward) and parameter set, plus the throughput columns.
/// </summary>
internal static class BenchmarkConfig
{
    public static IConfig Create() =>
        ManualConfig.CreateEmpty()
            .AddJob(Job.Default
                .WithToolchain(InProcessNoEmitToolchain.Instance)
                .WithLaunchCount(1)
                .WithWarmupCount(2)
                .WithIterationCount(6)
                .WithIterationTime(TimeInterval.FromMilliseconds(150))
                .WithEvaluateOverhead(false)
                .WithId("short-in-process"))
            .AddColumnProvider(DefaultColumnProviders.Instance)
            .AddColumn(ThroughputColumn.Gflops, ThroughputColumn.FmaFraction, ThroughputColumn.GBytesPerSecond, ThroughputColumn.BandwidthFraction)
            .AddLogger(ConsoleLogger.Default)
            .AddExporter(MarkdownExporter.GitHub)
            .AddLogicalGroupRules(BenchmarkLogicalGroupRule.ByCategory, BenchmarkLogicalGroupRule.ByParams)
            .WithOrderer(new BenchmarkDotNet.Order.DefaultOrderer(BenchmarkDotNet.Order.SummaryOrderPolicy.Declared))
            .WithOptions(ConfigOptions.DisableLogFile);

    /// <summary>The LoRA op and shape a benchmark case measures (rank is each class's Rank constant).</summary>
    public static LoraWork WorkOf(BenchmarkCase benchmark)
    {
        LoraOp op = benchmark.Descriptor.WorkloadMethod.Name.Contains("Backward", StringComparison.Ordinal) ? LoraOp.Backward : LoraOp.Forward;
        int m = Convert.ToInt32(benchmark.Parameters["M"], CultureInfo.InvariantCulture);
        int features = Convert.ToInt32(benchmark.Parameters["Features"], CultureInfo.InvariantCulture);
        return new LoraWork(op, m, features, features, CpuLoraBenchmarks.Rank);
    }
}

/// <summary>GFLOP/s, GB/s and their fractions of the measured machine peaks, from each case's mean time.</summary>
internal sealed class ThroughputColumn : IColumn
{
    public static readonly ThroughputColumn Gflops = new("GFLOP/s", "fp32 operations per second (2 per FMA) of the LoRA math", (w, s, p) => w.Flops / s / 1e9);
    public static readonly ThroughputColumn FmaFraction = new("% FMA peak", "GFLOP/s as a percentage of the measured fp32 FMA peak of this machine",
                                                                (w, s, p) => p is null ? double.NaN : 100 * w.Flops / s / 1e9 / p.Gflops);
    public static readonly ThroughputColumn GBytesPerSecond = new("GB/s", "minimum bytes moved (each tensor once) per second", (w, s, p) => w.Bytes / s / 1e9);
    public static readonly ThroughputColumn BandwidthFraction = new("% BW peak", "GB/s as a percentage of the measured memory read bandwidth of this machine",
                                                                      (w, s, p) => p is null ? double.NaN : 100 * w.Bytes / s / 1e9 / p.GBytesPerSecond);

    private readonly Func<LoraWork, double, MachinePeaks?, double> _value;

    private ThroughputColumn(string name, string legend, Func<LoraWork, double, MachinePeaks?, double> value)
    {
        ColumnName = name;
        Legend = legend;
        _value = value;
    }

    public string Id => nameof(ThroughputColumn) + "." + ColumnName;
    public string ColumnName { get; }
    public bool AlwaysShow => true;
    public ColumnCategory Category => ColumnCategory.Custom;
    public int PriorityInCategory => 0;
    public bool IsNumeric => true;
    public UnitType UnitType => UnitType.Dimensionless;
    public string Legend { get; }

    public string GetValue(Summary summary, BenchmarkCase benchmarkCase) => GetValue(summary, benchmarkCase, SummaryStyle.Default);

    public string GetValue(Summary summary, BenchmarkCase benchmarkCase, SummaryStyle style)
    {
        var statistics = summary[benchmarkCase]?.ResultStatistics;
        if (statistics is null) return "NA";
        if (benchmarkCase.Descriptor.Type == typeof(Nf4Benchmarks)) return "-";  // not LoRA work: Nf4Benchmarks.Table reports it
        if (benchmarkCase.Descriptor.Type == typeof(DoraBenchmarks)) return "-";  // a whole step: DoraBenchmarks.Table reports it
        if (benchmarkCase.Descriptor.Type == typeof(CpuHostSharingBenchmarks)) return "-";  // a mix of our call and a host's: compare times
        if (benchmarkCase.Descriptor.Type == typeof(OptimizerBenchmarks)) return "-";  // not LoRA work: OptimizerBenchmarks.Table reports it
        if (benchmarkCase.Descriptor.Type.Name.StartsWith("Gated", StringComparison.Ordinal)) return "-";  // GatedBenchmarks.Table reports the bars
        if (benchmarkCase.Descriptor.Type == typeof(SegmentedBenchmarks)) return "-";  // mixed adapters: SegmentedBenchmarks.Table reports it
        double seconds = statistics.Mean / 1e9;
        double value = _value(BenchmarkConfig.WorkOf(benchmarkCase), seconds, MachinePeaks.Current);
        return double.IsNaN(value) ? "NA" : value.ToString(value >= 100 ? "F0" : "F1", CultureInfo.InvariantCulture);
    }

    public bool IsDefault(Summary summary, BenchmarkCase benchmarkCase) => false;
    public bool IsAvailable(Summary summary) => true;
    public override string ToString() => ColumnName;
}
