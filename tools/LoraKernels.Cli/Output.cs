// What the command prints: aligned text tables for people, JSON for scripts (--json, on stdout,
// nothing else there), and a progress bar on stderr only when stderr is a terminal.
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using LoraKernels.IO;

namespace LoraKernels.Cli;

internal static class Output
{
    /// <summary>A table with a header row, columns padded to their widest cell; numeric-looking cells are right-aligned.</summary>
    public static string Table(IReadOnlyList<string> header, IEnumerable<IReadOnlyList<string>> rows)
    {
        var all = new List<IReadOnlyList<string>> { header };
        all.AddRange(rows);
        int[] widths = Enumerable.Range(0, header.Count).Select(c => all.Max(r => r[c].Length)).ToArray();
        var text = new StringBuilder();
        for (int i = 0; i < all.Count; i++)
        {
            text.AppendJoin("  ", all[i].Select((cell, c) => i > 0 && IsNumber(cell) ? cell.PadLeft(widths[c]) : cell.PadRight(widths[c]))).AppendLine();
            if (i == 0) text.AppendJoin("  ", widths.Select(w => new string('-', w))).AppendLine();
        }
        return text.ToString();
    }

    private static bool IsNumber(string cell) => cell.Length > 0 && cell.Any(char.IsDigit) && cell.All(c => char.IsDigit(c) || c is ',' or '.' or '-' or '+' or 'E' or 'e');

    public static string Shape(IEnumerable<long> shape) => $"[{string.Join(", ", shape)}]";

    public static string Count(long value) => value.ToString("N0", CultureInfo.InvariantCulture);

    public static string Bytes(long bytes) => bytes switch
    {
        >= 1L << 30 => $"{bytes / (double)(1L << 30):F2} GiB",
        >= 1L << 20 => $"{bytes / (double)(1L << 20):F1} MiB",
        >= 1L << 10 => $"{bytes / 1024.0:F1} KiB",
        _ => $"{bytes} B",
    };

    public static string Number(double value) => value.ToString("G4", CultureInfo.InvariantCulture);

    public static void Json(JsonNode node) => Console.Out.WriteLine(node.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));

    public static JsonArray Array(IEnumerable<long> values) => new(values.Select(v => (JsonNode?)v).ToArray());
}

/// <summary>A one-line progress bar on stderr (redrawn in place), shown only when stderr is a terminal and output is not JSON.</summary>
internal sealed class ProgressBar : IProgress<MergeProgress>, IDisposable
{
    private readonly bool _enabled;
    private string _last = "";

    public ProgressBar(bool json) => _enabled = !json && !Console.IsErrorRedirected;

    public void Report(MergeProgress value)
    {
        if (!_enabled) return;
        double fraction = value.Total == 0 ? 1 : (double)value.Done / value.Total;
        int filled = (int)Math.Round(fraction * 30);
        string name = value.Tensor.Length > 40 ? "…" + value.Tensor[^39..] : value.Tensor;
        string line = $"\r{value.Stage,-10} [{new string('#', filled)}{new string('.', 30 - filled)}] {value.Done}/{value.Total} {name}";
        Console.Error.Write(line.PadRight(Math.Max(_last.Length, line.Length)));
        _last = line;
    }

    public void Dispose()
    {
        if (_enabled && _last.Length > 0) Console.Error.WriteLine();
    }
}
