using System.Text;
using System.Text.RegularExpressions;

namespace LoraKernels.Tests.Api;

/// <summary>
/// The documentation's code examples are real code: every block fenced `csharp` in README.md and docs/*.md
/// must be, word for word, a #region of samples/LoraKernels.Sample, which ./build.sh test builds against
/// the NuGet package and runs. (Blocks fenced `cs` are abridged signature listings, not examples.)
/// </summary>
[TestFixture]
public sealed partial class DocsTests
{
    [Test]
    public void EveryCSharpExampleIsSampleCodeThatRuns()
    {
        string root = RepositoryRoot();
        var regions = Directory.EnumerateFiles(Path.Combine(root, "samples", "LoraKernels.Sample"), "*.cs", SearchOption.TopDirectoryOnly)
            .SelectMany(file => Regions(File.ReadAllText(file)).Select(region => (File: Path.GetFileName(file), Text: region)))
            .ToList();
        Assert.That(regions, Has.Count.GreaterThanOrEqualTo(2), "the sample has its example regions");

        var documents = new[] { Path.Combine(root, "README.md") }.Concat(Directory.EnumerateFiles(Path.Combine(root, "docs"), "*.md"));
        int examples = 0;
        var failures = new StringBuilder();
        foreach (string document in documents)
            foreach (var (line, text) in CSharpBlocks(File.ReadAllText(document)))
            {
                examples++;
                if (!regions.Any(r => r.Text == text))
                    failures.AppendLine($"{Path.GetRelativePath(root, document)}:{line}: a csharp block that is no #region of samples/LoraKernels.Sample " +
                                        "(copy the region exactly, or fence an abridged listing as `cs`)");
            }
        Assert.That(failures.ToString(), Is.Empty);
        Assert.That(examples, Is.GreaterThanOrEqualTo(2), "README.md and docs/API.md have examples");
    }

    private static string RepositoryRoot()
    {
        for (DirectoryInfo? folder = new(AppContext.BaseDirectory); folder is not null; folder = folder.Parent)
            if (File.Exists(Path.Combine(folder.FullName, "README.md")) && Directory.Exists(Path.Combine(folder.FullName, "samples")))
                return folder.FullName;
        throw new InvalidOperationException($"no repository root (README.md and samples/) above {AppContext.BaseDirectory}");
    }

    // The lines between `#region NAME` and `#endregion`, with the region's common indentation removed.
    private static IEnumerable<string> Regions(string source)
    {
        foreach (Match match in RegionPattern().Matches(source.Replace("\r\n", "\n")))
        {
            string[] lines = match.Groups["body"].Value.TrimEnd('\n', ' ').Split('\n');
            int indent = lines.Where(l => l.Trim().Length > 0).Min(l => l.Length - l.TrimStart().Length);
            yield return string.Join('\n', lines.Select(l => l.Length >= indent ? l[indent..] : l.TrimStart()));
        }
    }

    private static IEnumerable<(int Line, string Text)> CSharpBlocks(string markdown)
    {
        string[] lines = markdown.Replace("\r\n", "\n").Split('\n');
        for (int i = 0; i < lines.Length; i++)
        {
            if (lines[i].Trim() != "```csharp") continue;
            int end = Array.FindIndex(lines, i + 1, l => l.StartsWith("```", StringComparison.Ordinal));
            yield return (i + 1, string.Join('\n', lines[(i + 1)..end]));
            i = end;
        }
    }

    [GeneratedRegex(@"^[ \t]*#region [^\n]*\n(?<body>.*?)^[ \t]*#endregion", RegexOptions.Multiline | RegexOptions.Singleline)]
    private static partial Regex RegionPattern();
}
