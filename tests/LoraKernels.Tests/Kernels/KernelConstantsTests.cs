using System.Globalization;
using System.Text.RegularExpressions;
using LoraKernels.Backends.Gpu;
using LoraKernels.Families.Dora;
using LoraKernels.Families.Moe;
using LoraKernels.Families.Ssm;
using LoraKernels.Families.Qlora;
using LoraKernels.Families.Vera;
using LoraKernels.Runtime;

namespace LoraKernels.Tests.Kernels;

/// <summary>
/// The C# launchers' geometry agrees with the kernels' own constants, read from the embedded kernel
/// sources (every namespace-scope `constexpr int kName = expression;` of kernels/*.cu and *.cuh, expressions evaluated
/// over the constants defined before them), so a kernel constant changed without its launcher fails here
/// instead of launching the wrong grid on a GPU.
/// </summary>
[TestFixture]
public sealed partial class KernelConstantsTests
{
    /// <summary>(file, kernel constant or expression of constants, the C# value the launcher uses, where it lives).</summary>
    public static IEnumerable<TestCaseData> Pairs()
    {
        TestCaseData Pair(string file, string expression, long csharp, string launcher) =>
            new TestCaseData(file, expression, csharp).SetName($"{launcher}_matches_{file}_{expression.Replace(" ", "")}");
        yield return Pair("launch_geometry.cuh", "kTileM", GpuLaunch.Tile, "GpuLaunch.Tile");
        yield return Pair("launch_geometry.cuh", "kTileN", GpuLaunch.Tile, "GpuLaunch.Tile");
        yield return Pair("launch_geometry.cuh", "kTileThreads", GpuLaunch.TileThreads, "GpuLaunch.TileThreads");
        yield return Pair("launch_geometry.cuh", "kMmaTileM", GpuLaunch.MmaTile, "GpuLaunch.MmaTile");
        yield return Pair("launch_geometry.cuh", "kMmaTileN", GpuLaunch.MmaTile, "GpuLaunch.MmaTile");
        yield return Pair("launch_geometry.cuh", "kMmaThreads", GpuLaunch.MmaThreads, "GpuLaunch.MmaThreads");
        yield return Pair("launch_geometry.cuh", "kMmaSharedBytes", GpuLaunch.MmaSharedBytes, "GpuLaunch.MmaSharedBytes");
        yield return Pair("launch_geometry.cuh", "kDecodeThreads", GpuLaunch.DecodeThreads, "GpuLaunch.DecodeThreads");
        yield return Pair("launch_geometry.cuh", "kDecodeMaxM", GpuLaunch.DecodeMaxTokens, "GpuLaunch.DecodeMaxTokens");
        yield return Pair("launch_geometry.cuh", "kDecodeChunk", GpuLaunch.DecodeChunk, "GpuLaunch.DecodeChunk");
        yield return Pair("launch_geometry.cuh", "kDecodeXAlign", GpuLaunch.DecodeXAlign, "GpuLaunch.DecodeXAlign");
        yield return Pair("launch_geometry.cuh", "kDecodeWarps * kDecodeRowsPerWarp", GpuLaunch.DecodeRowsPerPass, "GpuLaunch.DecodeRowsPerPass");
        yield return Pair("launch_geometry.cuh", "kElementwiseThreads", GpuLaunch.ElementwiseThreads, "GpuLaunch.ElementwiseThreads");
        yield return Pair("launch_geometry.cuh", "kElementwiseBlocksPerSm", GpuLaunch.ElementwiseBlocksPerMultiprocessor,
                          "GpuLaunch.ElementwiseBlocksPerMultiprocessor");
        yield return Pair("optim.cu", "kOptimThreads", GpuLaunch.ElementwiseThreads, "GpuLaunch.ElementwiseThreads");
        yield return Pair("nf4.cu", "kDequantizeThreads", GpuLaunch.ElementwiseThreads, "GpuLaunch.ElementwiseThreads");
        yield return Pair("nf4.cu", "kQuantizeThreads", GpuQloraKernels.QuantizeThreads, "GpuQloraKernels.QuantizeThreads");
        yield return Pair("nf4.cu", "kQuantizeWarps", GpuQloraKernels.QuantizeBlocksPerLaunchBlock, "GpuQloraKernels.QuantizeBlocksPerLaunchBlock");
        yield return Pair("nf4.cu", "kMeanThreads", GpuQloraKernels.NestedThreads, "GpuQloraKernels.NestedThreads");
        yield return Pair("nf4.cu", "kDoubleQuantThreads", GpuQloraKernels.NestedThreads, "GpuQloraKernels.NestedThreads");
        yield return Pair("nf4.cu", "kDecodeTableWords", GpuQloraKernels.DecodeTableWords, "GpuQloraKernels.DecodeTableWords");
        yield return Pair("nf4.cu", "kNestedBlock", QuantizedWeight.NestedBlockSize, "QuantizedWeight.NestedBlockSize");
        yield return Pair("nf4.cu", "kProjectThreads", GpuDoraKernels.DoraThreads, "GpuDoraKernels.DoraThreads");
        yield return Pair("nf4.cu", "kProjectWarps", GpuDoraKernels.DoraProjectRowsPerBlock, "GpuDoraKernels.DoraProjectRowsPerBlock");
        yield return Pair("dora.cu", "kDoraThreads", GpuDoraKernels.DoraThreads, "GpuDoraKernels.DoraThreads");
        yield return Pair("dora.cu", "kDoraWarps", GpuDoraKernels.DoraRowsPerSqnormBlock, "GpuDoraKernels.DoraRowsPerSqnormBlock");
        yield return Pair("dora.cu", "kDoraWarps", GpuDoraKernels.DoraProjectRowsPerBlock, "GpuDoraKernels.DoraProjectRowsPerBlock");
        yield return Pair("dora.cu", "kGradColumns", GpuDoraKernels.DoraGradColumns, "GpuDoraKernels.DoraGradColumns");
        yield return Pair("vera.cu", "kVeraThreads", GpuVeraKernels.VeraThreads, "GpuVeraKernels.VeraThreads");
        yield return Pair("vera.cu", "kVeraWarps", GpuVeraKernels.VeraRowsPerBlock, "GpuVeraKernels.VeraRowsPerBlock");
        yield return Pair("vera.cu", "kVeraColumns", GpuVeraKernels.VeraColumnsPerBlock, "GpuVeraKernels.VeraColumnsPerBlock");
        yield return Pair("moe.cu", "kMoeThreads", GpuLaunch.ElementwiseThreads, "GpuLaunch.ElementwiseThreads");
        yield return Pair("moe.cu", "kMoeWarps", GpuMoeKernels.AssignmentsPerBlock, "GpuMoeKernels.AssignmentsPerBlock");
        yield return Pair("ssm.cu", "kSsmChunk", GpuSsmKernels.Chunk, "GpuSsmKernels.Chunk");
        yield return Pair("ssm.cu", "kSsmThreads", GpuSsmKernels.ChunkThreads, "GpuSsmKernels.ChunkThreads");
        yield return Pair("ssm.cu", "kSsmThreads", GpuLaunch.ElementwiseThreads, "GpuLaunch.ElementwiseThreads");
        yield return Pair("ssm.cu", "kSsmGroup", GpuSsmKernels.GroupThreads, "GpuSsmKernels.GroupThreads");
        yield return Pair("ssm.cu", "kSsmMaxState", Ops.Ssm.MaxStates, "Ssm.MaxStates");
    }

    [TestCaseSource(nameof(Pairs))]
    public void LauncherConstantMatchesTheKernel(string file, string expression, long launcher)
    {
        IReadOnlyDictionary<string, long> constants = ConstantsOf(file);
        Assert.That(Evaluate(expression, constants), Is.EqualTo(launcher), $"{file}: {expression}");
    }

    [Test]
    public void EveryHeaderConstantIsRead()
    {
        // Guards the parser: a constant it could not evaluate would make the pairs above vacuous.
        IReadOnlyDictionary<string, long> geometry = ConstantsOf("launch_geometry.cuh");
        Assert.That(geometry.Keys, Is.SupersetOf(new[] { "kTileM", "kTileN", "kTileK", "kTileThreads", "kDecodeThreads", "kDecodeWarps",
                                                          "kDecodeMaxM", "kDecodeChunk", "kDecodeRowsPerWarp", "kDecodeXAlign",
                                                          "kElementwiseThreads", "kElementwiseBlocksPerSm" }));
        Assert.That(geometry["kDecodeWarps"], Is.EqualTo(geometry["kDecodeThreads"] / 32));
    }

    /// <summary>The constants of kernels/<paramref name="file"/> and of the kernels/ headers it includes, in order.</summary>
    private static Dictionary<string, long> ConstantsOf(string file)
    {
        var constants = new Dictionary<string, long>(StringComparer.Ordinal);
        void Read(string name, HashSet<string> seen)
        {
            if (!seen.Add(name)) return;
            string text = TextOf(name);
            foreach (Match include in Include().Matches(text))
                if (IsKernelFile(include.Groups[1].Value)) Read(include.Groups[1].Value, seen);  // not the emulator's simt_device.h
            foreach (Match definition in Definition().Matches(text))
                constants[definition.Groups[1].Value] = Evaluate(definition.Groups[2].Value, constants);
        }
        Read(file, new HashSet<string>(StringComparer.Ordinal));
        return constants;
    }

    private static bool IsKernelFile(string file) =>
        file.EndsWith(".cu", StringComparison.Ordinal) ? KernelSources.Families.Contains(file[..^3]) : KernelSources.Headers.Any(h => h.Key == file);

    private static string TextOf(string file) =>
        file.EndsWith(".cu", StringComparison.Ordinal)
            ? KernelSources.Source(file[..^3])
            : KernelSources.Headers.Single(h => h.Key == file).Value;

    /// <summary>An integer expression of literals, known constants, + - * / and parentheses.</summary>
    private static long Evaluate(string expression, IReadOnlyDictionary<string, long> constants)
    {
        var tokens = Token().Matches(expression).Select(m => m.Value).ToList();
        int position = 0;
        long Sum()
        {
            long value = Product();
            while (position < tokens.Count && tokens[position] is "+" or "-")
                value = tokens[position++] == "+" ? value + Product() : value - Product();
            return value;
        }
        long Product()
        {
            long value = Atom();
            while (position < tokens.Count && tokens[position] is "*" or "/")
                value = tokens[position++] == "*" ? value * Atom() : value / Atom();
            return value;
        }
        long Atom()
        {
            string token = tokens[position++];
            if (token == "(")
            {
                long value = Sum();
                position++;  // ")"
                return value;
            }
            if (long.TryParse(token, NumberStyles.None, CultureInfo.InvariantCulture, out long literal)) return literal;
            return constants.TryGetValue(token, out long known)
                ? known
                : throw new InvalidOperationException($"'{token}' in '{expression}' is not a constant defined before it");
        }
        long result = Sum();
        if (position != tokens.Count) throw new InvalidOperationException($"could not parse '{expression}'");
        return result;
    }

    [GeneratedRegex(@"#include\s+""([^""]+)""")]
    private static partial Regex Include();

    // Namespace-scope constants only (at the start of a line): a function's local constexpr is not geometry.
    [GeneratedRegex(@"^constexpr\s+int\s+(k\w+)\s*=\s*([^;]+);", RegexOptions.Multiline)]
    private static partial Regex Definition();

    [GeneratedRegex(@"\w+|[()+\-*/]")]
    private static partial Regex Token();
}
