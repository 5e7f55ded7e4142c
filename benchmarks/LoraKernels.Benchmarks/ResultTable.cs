using System.Globalization;
using System.Text;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;

namespace LoraKernels.Benchmarks;

/// <summary>
/// The compact table printed after BenchmarkDotNet: per op, device and shape, the baseline's time
/// (OpenBLAS on the CPU, cuBLAS on the GPU), the fused kernel's (preallocated outputs) and the
/// public op's (allocating), the speed-ups (baseline time / fused time), and the fused kernel's
/// throughput and fraction of the measured peaks.
/// </summary>
internal static class ResultTable
{
    public static string Render(IEnumerable<Summary> summaries, MachinePeaks? peaks)
    {
        var rows = new List<string[]>();
        foreach (Summary summary in summaries)
        {
            double? MeanOf(BenchmarkCase? c) => c is null ? null : summary[c]?.ResultStatistics?.Mean;
            BenchmarkCase? Find(BenchmarkCase like, Func<string, bool> name) => summary.BenchmarksCases.FirstOrDefault(c =>
                c.Descriptor.Type == like.Descriptor.Type && BenchmarkConfig.WorkOf(c) == BenchmarkConfig.WorkOf(like)
                && name(c.Descriptor.WorkloadMethod.Name));

            foreach (BenchmarkCase kernel in summary.BenchmarksCases.Where(c => IsKernel(c.Descriptor.WorkloadMethod.Name)))
            {
                LoraWork work = BenchmarkConfig.WorkOf(kernel);
                double? kernelNs = MeanOf(kernel);
                double? apiNs = MeanOf(Find(kernel, n => n.StartsWith("Fused", StringComparison.Ordinal) && !IsKernel(n)));
                double? baselineNs = MeanOf(Find(kernel, n => !n.StartsWith("Fused", StringComparison.Ordinal)));
                bool gpu = kernel.Descriptor.Type == typeof(GpuLoraBenchmarks);
                rows.Add(
                [
                    work.Op.ToString(), gpu ? "cuda" : "cpu", work.M.ToString(CultureInfo.InvariantCulture), work.In.ToString(CultureInfo.InvariantCulture),
                    $"{Time(baselineNs)} ({(gpu ? "cuBLAS" : "OpenBLAS")})", Time(kernelNs), Ratio(baselineNs, kernelNs),
                    Time(apiNs), Ratio(baselineNs, apiNs),
                    Rate(kernelNs, work.Flops, 1e9), Percent(kernelNs, work.Flops / 1e9, gpu ? null : peaks?.Gflops),
                    Rate(kernelNs, work.Bytes, 1e9), Percent(kernelNs, work.Bytes / 1e9, gpu ? null : peaks?.GBytesPerSecond),
                ]);
            }
        }
        string[] header = ["op", "device", "M", "in=out", "baseline", "fused kernel", "speed-up", "fused op", "speed-up",
                           "GFLOP/s", "% FMA peak", "GB/s", "% BW peak"];
        var text = new StringBuilder();
        text.AppendLine($"LoRA r = {CpuLoraBenchmarks.Rank}, fp32, no dropout, mean times. fused kernel: into preallocated outputs, as the baseline;");
        text.AppendLine("fused op: the public op, which also allocates its outputs. speed-up = baseline time / fused time (> 1: fused is faster).");
        text.AppendLine("GFLOP/s, GB/s and the % of peak are the fused kernel's.");
        if (peaks is not null) text.AppendLine($"Measured peaks (CPU): {peaks}.");
        text.AppendLine(Markdown(header, rows));
        return text.ToString();
    }

    private static bool IsKernel(string method) => method.StartsWith("Fused", StringComparison.Ordinal) && method.EndsWith("Into", StringComparison.Ordinal);

    private static string Ratio(double? baselineNs, double? fusedNs) =>
        baselineNs is { } b && fusedNs is { } f ? (b / f).ToString("F2", CultureInfo.InvariantCulture) + "×" : "NA";

    private static string Time(double? nanoseconds) => nanoseconds switch
    {
        null => "NA",
        < 1e3 => $"{nanoseconds.Value.ToString("F0", CultureInfo.InvariantCulture)} ns",
        < 1e6 => $"{(nanoseconds.Value / 1e3).ToString("F1", CultureInfo.InvariantCulture)} µs",
        _ => $"{(nanoseconds.Value / 1e6).ToString("F2", CultureInfo.InvariantCulture)} ms",
    };

    private static string Rate(double? nanoseconds, double amount, double unit) =>
        nanoseconds is { } ns ? (amount / (ns / 1e9) / unit).ToString("F1", CultureInfo.InvariantCulture) : "NA";

    private static string Percent(double? nanoseconds, double amountInUnits, double? peak) =>
        nanoseconds is { } ns && peak is { } p ? (100 * amountInUnits / (ns / 1e9) / p).ToString("F1", CultureInfo.InvariantCulture) + " %" : "NA";

    private static string Markdown(string[] header, List<string[]> rows)
    {
        int[] widths = header.Select((h, i) => Math.Max(h.Length, rows.Count == 0 ? 0 : rows.Max(r => r[i].Length))).ToArray();
        var text = new StringBuilder();
        void Line(string[] cells) => text.AppendLine("| " + string.Join(" | ", cells.Select((c, i) => c.PadRight(widths[i]))) + " |");
        Line(header);
        text.AppendLine("|" + string.Join("|", widths.Select(w => new string('-', w + 2))) + "|");
        foreach (string[] row in rows) Line(row);
        return text.ToString();
    }
}
