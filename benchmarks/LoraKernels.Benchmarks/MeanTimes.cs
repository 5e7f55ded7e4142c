using BenchmarkDotNet.Reports;

namespace LoraKernels.Benchmarks;

internal static class MeanTimes
{
    /// <summary>
    /// The mean time in ns of every case of <typeparamref name="TBenchmarks"/> that ran, keyed by the value of its int
    /// parameter <paramref name="parameter"/> and its method name (empty when none ran).
    /// </summary>
    public static Dictionary<(int Value, string Method), double> Of<TBenchmarks>(IEnumerable<Summary> summaries, string parameter)
    {
        var times = new Dictionary<(int, string), double>();
        foreach (Summary summary in summaries)
            foreach (var benchmark in summary.BenchmarksCases.Where(c => c.Descriptor.Type == typeof(TBenchmarks)))
                if (summary[benchmark]?.ResultStatistics?.Mean is { } ns)
                    times[((int)benchmark.Parameters[parameter], benchmark.Descriptor.WorkloadMethod.Name)] = ns;
        return times;
    }
}
