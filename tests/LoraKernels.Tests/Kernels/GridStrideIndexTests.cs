using LoraKernels.Runtime;

namespace LoraKernels.Tests.Kernels;

/// <summary>
/// Every grid-stride loop in kernels/ counts in 64 bits. The grid is capped at a few blocks per SM
/// while the element counts the C# checks allow reach 2^31 - 1 (M·out, out·in, r·in + out·r), so a
/// 32-bit index that adds gridDim·blockDim past the last element wraps negative and the loop
/// carries on out of bounds. No machine here can allocate the 8 GiB a run-time check at that size
/// needs, so the sources are read: a loop whose increment strides by the grid must declare an
/// lk_i64 / long long index. The checker itself is checked on the loops it was written to reject.
/// </summary>
[TestFixture]
public sealed class GridStrideIndexTests
{
    public static IEnumerable<TestCaseData> KernelFiles() =>
        KernelSources.Families.Select(f => (Name: f + ".cu", Text: KernelSources.Source(f)))
            .Concat(KernelSources.Headers.Select(h => (Name: h.Key, Text: h.Value)))
            .Select(file => new TestCaseData(file.Name, file.Text).SetName($"GridStrideLoopsAre64Bit_{file.Name}"));

    [TestCaseSource(nameof(KernelFiles))]
    public void GridStrideLoopsAre64Bit(string file, string text)
    {
        IReadOnlyList<string> narrow = NarrowGridStrideLoops(text);
        Assert.That(narrow, Is.Empty, $"{file}: grid-stride loops with a 32-bit index:\n  {string.Join("\n  ", narrow)}");
        Assert.That(text, Does.Not.Contain("(int)(gridDim.x * blockDim.x)"), $"{file}: a grid stride narrowed to int");
    }

    [Test]
    public void TheCheckerRejectsA32BitGridStrideLoop()
    {
        // The loop lk_dora_scale_columns had before this check, and its fix.
        const string narrow = "for (int i = (int)(blockIdx.x * blockDim.x + threadIdx.x); i < total; i += (int)(gridDim.x * blockDim.x)) {";
        const string wide = "for (lk_i64 i = lk_grid_first(); i < total; i += lk_grid_stride()) {";
        const string helper = "for (int i = (int)threadIdx.x; i < n; i += kThreads) {";  // block-stride: bounded by one block's work
        Assert.That(NarrowGridStrideLoops(narrow), Has.Count.EqualTo(1));
        Assert.That(NarrowGridStrideLoops("for (unsigned k = lk_grid_first(); k < n; k += lk_grid_stride()) x();"), Has.Count.EqualTo(1));
        Assert.That(NarrowGridStrideLoops(wide), Is.Empty);
        Assert.That(NarrowGridStrideLoops("for (long long p = first; p < bytes; p += (lk_i64)gridDim.x * 256)"), Is.Empty);
        Assert.That(NarrowGridStrideLoops(helper), Is.Empty);
    }

    /// <summary>The headers "for (init; condition; increment)" whose increment strides by the grid and whose index is not 64-bit.</summary>
    private static IReadOnlyList<string> NarrowGridStrideLoops(string text)
    {
        var narrow = new List<string>();
        for (int at = text.IndexOf("for (", StringComparison.Ordinal); at >= 0; at = text.IndexOf("for (", at + 1, StringComparison.Ordinal))
        {
            string? header = Header(text, at + "for ".Length);
            if (header is null) continue;
            string[] parts = SplitTopLevel(header);
            if (parts.Length != 3) continue;  // a range-based for
            bool gridStride = parts[2].Contains("gridDim", StringComparison.Ordinal) || parts[2].Contains("lk_grid_stride", StringComparison.Ordinal);
            string init = parts[0].TrimStart();
            bool wide = init.StartsWith("lk_i64 ", StringComparison.Ordinal) || init.StartsWith("long long ", StringComparison.Ordinal) ||
                        init.StartsWith("lk_u64 ", StringComparison.Ordinal) || init.StartsWith("unsigned long long ", StringComparison.Ordinal);
            if (gridStride && !wide) narrow.Add("for " + header);
        }
        return narrow;
    }

    /// <summary>The balanced "( ... )" starting at <paramref name="open"/>, or null when unbalanced.</summary>
    private static string? Header(string text, int open)
    {
        int depth = 0;
        for (int i = open; i < text.Length; i++)
        {
            if (text[i] == '(') depth++;
            else if (text[i] == ')' && --depth == 0) return text[open..(i + 1)];
        }
        return null;
    }

    private static string[] SplitTopLevel(string header)
    {
        var parts = new List<string>();
        int depth = 0, start = 1;
        for (int i = 1; i < header.Length - 1; i++)
        {
            if (header[i] == '(') depth++;
            else if (header[i] == ')') depth--;
            else if (header[i] == ';' && depth == 0)
            {
                parts.Add(header[start..i]);
                start = i + 1;
            }
        }
        parts.Add(header[start..^1]);
        return parts.ToArray();
    }
}
