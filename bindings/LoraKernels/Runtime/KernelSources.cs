// The CUDA sources embedded in this assembly (kernels/*.cu and *.cuh, LogicalName "kernels/<file>"),
// so NVRTC can compile them on a GPU machine that has no copy of the repository. A family is a
// .cu file ("lora" is kernels/lora.cu); every kernel entry point belongs to exactly one family.
using System.Reflection;
using System.Text;
using System.Text.RegularExpressions;

namespace LoraKernels.Runtime;

public static partial class KernelSources
{
    private const string Prefix = "kernels/";
    private static readonly Lazy<Dictionary<string, string>> Files = new(ReadEmbeddedFiles);
    private static readonly Lazy<string[]> FamilyNames = new(() =>
        Files.Value.Keys.Where(f => f.EndsWith(".cu", StringComparison.Ordinal)).Select(f => f[..^3]).Order(StringComparer.Ordinal).ToArray());
    private static readonly Lazy<Dictionary<string, string>> EntryPointFamilies = new(IndexEntryPoints);

    /// <summary>Kernel families (the .cu files), sorted by name.</summary>
    public static IReadOnlyList<string> Families => FamilyNames.Value;

    /// <summary>The text of kernels/<paramref name="family"/>.cu.</summary>
    public static string Source(string family)
    {
        ArgumentNullException.ThrowIfNull(family);
        if (Files.Value.TryGetValue(family + ".cu", out string? text)) return text;
        throw new ArgumentException(
            $"No kernel family '{family}' is embedded (families: {string.Join(", ", Families)}).", nameof(family));
    }

    /// <summary>The headers (kernels/*.cuh) a family may include, by include name.</summary>
    public static IReadOnlyList<KeyValuePair<string, string>> Headers =>
        Files.Value.Where(f => f.Key.EndsWith(".cuh", StringComparison.Ordinal)).OrderBy(f => f.Key, StringComparer.Ordinal).ToArray();

    /// <summary>
    /// The family whose source defines entry point <paramref name="kernel"/>: the family that
    /// declares it (<c>__global__ ... lk_x(</c> or <c>LK_KERNEL(lk_x)</c>), else the family named
    /// by its second word (<c>lk_lora_*</c> is "lora"), else the one family that uses its prefix.
    /// </summary>
    public static string FamilyOf(string kernel)
    {
        ArgumentNullException.ThrowIfNull(kernel);
        if (EntryPointFamilies.Value.TryGetValue(kernel, out string? family)) return family;
        string[] words = kernel.Split('_');
        if (words.Length >= 3 && words[0] == "lk")
        {
            if (Files.Value.ContainsKey(words[1] + ".cu")) return words[1];
            string prefix = $"lk_{words[1]}_";
            string[] users = Families.Where(f => Source(f).Contains(prefix, StringComparison.Ordinal)).ToArray();
            if (users.Length == 1) return users[0];
        }
        throw new LoraKernelsException(
            $"No kernel family in kernels/ defines entry point '{kernel}' (families: {string.Join(", ", Families)}).");
    }

    private static Dictionary<string, string> ReadEmbeddedFiles()
    {
        Assembly assembly = typeof(KernelSources).Assembly;
        var files = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (string resource in assembly.GetManifestResourceNames())
        {
            if (!resource.StartsWith(Prefix, StringComparison.Ordinal)) continue;
            using Stream stream = assembly.GetManifestResourceStream(resource)
                ?? throw new LoraKernelsException($"Embedded resource {resource} is listed but cannot be opened.");
            using var reader = new StreamReader(stream, Encoding.UTF8);
            files[resource[Prefix.Length..]] = reader.ReadToEnd();
        }
        return files;
    }

    private static Dictionary<string, string> IndexEntryPoints()
    {
        var index = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (string family in Families)
        {
            string source = LaunchBounds().Replace(Source(family), "");
            IEnumerable<Match> declarations = GlobalDeclaration().Matches(source).Concat(KernelRegistration().Matches(source));
            foreach (Match declaration in declarations) index.TryAdd(declaration.Groups[1].Value, family);
        }
        return index;
    }

    [GeneratedRegex(@"__launch_bounds__\s*\([^)]*\)")]
    private static partial Regex LaunchBounds();

    [GeneratedRegex(@"__global__[^;{(]*?\b(lk_\w+)\s*\(")]
    private static partial Regex GlobalDeclaration();

    [GeneratedRegex(@"LK_KERNEL\(\s*(lk_\w+)")]
    private static partial Regex KernelRegistration();
}
