namespace LoraKernels.Demo.Comparison;

/// <summary>The demo's result tables: a header row and data rows, the first column left-aligned and the rest right-aligned.</summary>
internal static class TextTable
{
    public static string Format(IReadOnlyList<string[]> rows)
    {
        int[] widths = Enumerable.Range(0, rows[0].Length).Select(c => rows.Max(row => row[c].Length)).ToArray();
        string rule = "+" + string.Join("+", widths.Select(w => new string('-', w + 2))) + "+";
        var lines = new List<string> { rule };
        for (int i = 0; i < rows.Count; i++)
        {
            lines.Add("| " + string.Join(" | ", rows[i].Select((cell, c) => c == 0 ? cell.PadRight(widths[c]) : cell.PadLeft(widths[c]))) + " |");
            if (i == 0) lines.Add(rule);
        }
        lines.Add(rule);
        return string.Join(Environment.NewLine, lines);
    }
}
