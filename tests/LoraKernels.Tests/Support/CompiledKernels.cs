using System.Collections.Concurrent;
using LoraKernels.Runtime;

namespace LoraKernels.Tests.Support;

/// <summary>
/// NVRTC compiles of kernel families, once per (family, architecture, extra options) in a test run: a
/// family takes NVRTC 10 to 25 seconds, and several fixtures read the same cubin's report or PTX.
/// </summary>
internal static class CompiledKernels
{
    private static readonly ConcurrentDictionary<string, Lazy<NvrtcResult>> Results = new(StringComparer.Ordinal);

    public static NvrtcResult Get(string family, string arch, params string[] extraOptions) =>
        Results.GetOrAdd($"{family}|{arch}|{string.Join(' ', extraOptions)}",
                         _ => new Lazy<NvrtcResult>(() => NvrtcCompiler.Compile(family, arch, extraOptions))).Value;

    /// <summary>The PTX of one entry point: from its <c>.entry</c> line to the next entry's (device functions are inlined).</summary>
    public static string EntryPtx(string ptx, string kernel)
    {
        int start = ptx.IndexOf($".entry {kernel}(", StringComparison.Ordinal);
        if (start < 0) return "";
        int next = ptx.IndexOf(".entry ", start + 1, StringComparison.Ordinal);
        return next < 0 ? ptx[start..] : ptx[start..next];
    }
}
