using System.Text;
using System.Text.RegularExpressions;

namespace LoraKernels.Tests.Support;

/// <summary>
/// The entry points a kernel source declares, found from the text alone (independently of the
/// library's own index and of NVRTC): every <c>extern "C" __global__ void lk_*(</c>, including
/// those stamped out by a function-like macro (<c>lk_lora_project_##SUFFIX</c> expanded for each
/// invocation of the macro, as kernels/lora.cu does for f32 and bf16).
/// </summary>
internal static partial class KernelEntryPoints
{
    public static SortedSet<string> Declared(string source)
    {
        string text = StripComments(ContinuationLine().Replace(source, " "));
        var macros = new List<(string Name, string[] Parameters, string Body)>();
        var plain = new StringBuilder();
        foreach (string line in text.Split('\n'))
        {
            Match define = FunctionMacro().Match(line);
            if (define.Success)
            {
                string[] parameters = define.Groups[2].Value.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
                macros.Add((define.Groups[1].Value, parameters, define.Groups[3].Value));
            }
            else if (!line.TrimStart().StartsWith('#'))
            {
                plain.AppendLine(line);
            }
        }

        string body = plain.ToString();
        var names = new SortedSet<string>(StringComparer.Ordinal);
        AddEntryPoints(body, names);
        foreach (var (name, parameters, macroBody) in macros.Where(m => m.Body.Contains("__global__", StringComparison.Ordinal)))
        {
            foreach (Match invocation in new Regex($@"\b{Regex.Escape(name)}\s*\(([^()]*)\)").Matches(body))
            {
                string[] arguments = invocation.Groups[1].Value.Split(',', StringSplitOptions.TrimEntries);
                if (arguments.Length != parameters.Length) continue;
                string expanded = macroBody;
                for (int i = 0; i < parameters.Length; i++)
                {
                    string p = Regex.Escape(parameters[i]);
                    expanded = Regex.Replace(expanded, $@"\s*##\s*{p}\b", arguments[i]);
                    expanded = Regex.Replace(expanded, $@"\b{p}\s*##\s*", arguments[i]);
                    expanded = Regex.Replace(expanded, $@"\b{p}\b", arguments[i]);
                }
                AddEntryPoints(expanded, names);
            }
        }
        return names;
    }

    private static void AddEntryPoints(string text, SortedSet<string> names)
    {
        foreach (Match match in EntryPoint().Matches(text)) names.Add(match.Groups[1].Value);
    }

    private static string StripComments(string text) => BlockComment().Replace(LineComment().Replace(text, ""), " ");

    [GeneratedRegex(@"\\\r?\n")]
    private static partial Regex ContinuationLine();

    [GeneratedRegex(@"//[^\n]*")]
    private static partial Regex LineComment();

    [GeneratedRegex(@"/\*.*?\*/", RegexOptions.Singleline)]
    private static partial Regex BlockComment();

    [GeneratedRegex(@"^\s*#\s*define\s+(\w+)\(([^)]*)\)(.*)$")]
    private static partial Regex FunctionMacro();

    [GeneratedRegex(@"extern\s+""C""\s+__global__\s+void\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?(lk_\w+)\s*\(")]
    private static partial Regex EntryPoint();
}
