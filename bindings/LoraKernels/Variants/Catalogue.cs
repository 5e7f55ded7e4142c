// The catalogue of every LoRA variant the project covers: each variant of the variant guide
// (000_9cd751effa0af045.txt) and of REFERENCE.md, with its family, paper, trainable-parameter count
// per layer, backends, dtypes, defaults and availability, and Create, which builds an adapter layer
// by name. Each adapter family describes its own variants beside its code (Families/<family>/
// *Variants.cs, with the layer factory). The catalogue only
// collects them, in the guide's order of categories. Parameter counts are for one linear layer
// W0 [out, in]; shared or frozen tensors (VeRA's projections, LoRA-FA's A, a quantized base) are not
// trainable and not counted.
using System.Globalization;
using System.Text;
using LoraKernels.Layers;

namespace LoraKernels.Variants;

public static class Catalogue
{
    // One list per family (Families/<family>/*Variants.cs), ordered by the guide's category, a family's own order kept within a category.
    private static readonly VariantInfo[] Entries =
        new[] { LoraVariants.All, QloraVariants.All, DoraVariants.All, VeraVariants.All, LokrVariants.All, TuckerVariants.All, GatedVariants.All, MoeVariants.All, SsmVariants.All }
            .SelectMany(family => family)
            .OrderBy(info => info.Family)
            .ToArray();

    /// <summary>Every variant, in the guide's order of families.</summary>
    public static IReadOnlyList<VariantInfo> Variants => Entries;

    /// <summary>The variant called <paramref name="name"/> (its key or an alias, any case).</summary>
    /// <exception cref="ArgumentException">No variant has that name.</exception>
    public static VariantInfo Get(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        string key = name.Trim().ToLowerInvariant();
        foreach (VariantInfo info in Entries)
        {
            if (info.Name == key || info.Aliases.Contains(key)) return info;
        }
        throw new ArgumentException($"Catalogue: no variant is called '{name}'; known: {string.Join(", ", Entries.Select(e => e.Name))}.", nameof(name));
    }

    /// <summary>
    /// An adapter layer of variant <paramref name="name"/> over the base weight <paramref name="w0"/> [out, in]
    /// (and <paramref name="bias"/>), on <paramref name="device"/>; the caller keeps its tensors.
    /// LoRA+ creates a plain LoRA layer: its difference is the optimizer (Optim.LoraPlus.CreateOptimizer).
    /// </summary>
    public static IAdapterLayer Create(string name, Device device, Tensor w0, Tensor? bias, AdapterOptions? options = null)
    {
        VariantInfo info = Get(name);
        ArgumentNullException.ThrowIfNull(device);
        options ??= new AdapterOptions();
        return info.Create(device, w0, bias, info.RankOf(options), options);
    }

    /// <summary>The catalogue as a text table, with parameter counts for one [out, in] layer.</summary>
    public static string FormatTable(int inFeatures = 4096, int outFeatures = 4096, AdapterOptions? options = null)
    {
        options ??= new AdapterOptions();
        var rows = new List<string[]>
        {
            new[] { "variant", "family", "paper", $"trainable @ {outFeatures}x{inFeatures}", "formula", "backends / dtypes" },
        };
        foreach (VariantInfo info in Entries)
        {
            string paper = info.Paper.ArxivId is null ? $"{info.Paper.Year}, no arXiv paper" : $"{info.Paper.Year}, arXiv:{info.Paper.ArxivId}";
            string where = $"{string.Join("/", info.Backends.Select(b => b.ToString().ToLowerInvariant()))} · {string.Join("/", info.DTypes)}";
            rows.Add([
                info.DisplayName, FamilyName(info.Family), paper,
                info.TrainableParameters(inFeatures, outFeatures, options).ToString("N0", CultureInfo.InvariantCulture)
                    + $" (r={info.RankOf(options)})",
                info.ParameterFormula, where,
            ]);
        }
        int[] widths = Enumerable.Range(0, rows[0].Length).Select(c => rows.Max(row => DisplayWidth(row[c]))).ToArray();
        var text = new StringBuilder();
        string rule = "+" + string.Join("+", widths.Select(w => new string('-', w + 2))) + "+";
        text.AppendLine(rule);
        for (int i = 0; i < rows.Count; i++)
        {
            text.AppendLine("| " + string.Join(" | ", rows[i].Select((cell, c) => cell + new string(' ', widths[c] - DisplayWidth(cell)))) + " |");
            if (i == 0) text.AppendLine(rule);
        }
        text.AppendLine(rule);
        return text.ToString();
    }

    /// <summary>Terminal columns of <paramref name="text"/>: the guide's CJK family names take two columns a character.</summary>
    private static int DisplayWidth(string text) =>
        text.Sum(c => c is >= '\u2E80' and <= '\uA4CF' or >= '\uAC00' and <= '\uD7A3' or >= '\uF900' and <= '\uFAFF' or >= '\uFF00' and <= '\uFF60' ? 2 : 1);

    /// <summary>The guide's name of a family (English, with the guide's Chinese term).</summary>
    public static string FamilyName(VariantFamily family) => family switch
    {
        VariantFamily.Basic => "basic (基础 LoRA)",
        VariantFamily.Structural => "structural (结构优化型)",
        VariantFamily.MathematicalFoundation => "mathematical (数学基础型)",
        VariantFamily.MemoryEfficiency => "memory (内存效率型)",
        VariantFamily.ArchitectureExtension => "architecture (架构扩展型)",
        VariantFamily.Automation => "automation (自动化型)",
        _ => throw new ArgumentOutOfRangeException(nameof(family), family, null),
    };
}
