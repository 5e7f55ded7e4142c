// Compiles one kernel family (kernels/<family>.cu with the embedded headers) to a cubin with
// NVRTC, and reads ptxas' report of registers, spills, stack and shared memory per entry point
// from the log. NVRTC needs no GPU, so tests call Compile("lora", "sm_80") on any machine to
// check that every kernel compiles for sm_80 and sm_90 without spills (DESIGN.md).
using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;
using LoraKernels.Interop;

namespace LoraKernels.Runtime;

/// <summary>ptxas' resource report for one entry point on one architecture.</summary>
public sealed record KernelResources(string Kernel, string Arch, int Registers, int SpillStoreBytes, int SpillLoadBytes,
                                     int StackFrameBytes, int SharedBytes);

/// <summary>A compiled family: the cubin, the PTX it was assembled from (for inspection), NVRTC's log and the
/// per-kernel resources parsed from it.</summary>
public sealed record NvrtcResult(string Family, string Arch, byte[] Cubin, string Ptx, string Log, IReadOnlyList<KernelResources> Resources);

public static unsafe partial class NvrtcCompiler
{
    private static readonly Lazy<(int Major, int Minor)> LoadedVersion = new(ReadVersion);
    private static readonly Lazy<int[]> LoadedArchitectures = new(ReadSupportedArchitectures);

    /// <summary>The loaded NVRTC's version (loading it if needed; throws CudaUnavailableException when absent).</summary>
    public static (int Major, int Minor) Version => LoadedVersion.Value;

    /// <summary>The architectures the loaded NVRTC compiles for, as 10·major + minor (80 is sm_80), ascending.</summary>
    public static IReadOnlyList<int> SupportedArchitectures => LoadedArchitectures.Value;

    /// <summary>True when an NVRTC library can be loaded; never throws.</summary>
    public static bool IsAvailable
    {
        get
        {
            try
            {
                _ = Version;
                return true;
            }
            catch (CudaUnavailableException)
            {
                return false;
            }
        }
    }

    /// <summary>
    /// The options every family is compiled with: C++17, the architecture (a real sm_XY gives a cubin,
    /// so ptxas runs and reports; a virtual compute_XY gives PTX only), ptxas' resource report, and line
    /// info for profilers (no code change).
    /// </summary>
    public static IReadOnlyList<string> Options(string arch)
    {
        CheckArch(arch);
        return ["-std=c++17", $"--gpu-architecture={arch}", "--ptxas-options=-v", "-lineinfo"];
    }

    /// <summary>
    /// Compiles kernels/<paramref name="family"/>.cu for <paramref name="arch"/> ("sm_80", "sm_90", ..., or
    /// "compute_90" for PTX alone: the result's cubin is then empty).
    /// </summary>
    public static NvrtcResult Compile(string family, string arch) => Compile(family, arch, []);

    /// <summary>As <see cref="Compile(string, string)"/> with extra options after the standard ones (tests: "-DNAME=VALUE").</summary>
    internal static NvrtcResult Compile(string family, string arch, IReadOnlyList<string> extraOptions)
    {
        string source = KernelSources.Source(family);
        return CompileSource(family, family + ".cu", source, KernelSources.Headers, arch, extraOptions);
    }

    internal static NvrtcResult CompileSource(string family, string fileName, string source,
                                              IReadOnlyList<KeyValuePair<string, string>> headers, string arch,
                                              IReadOnlyList<string>? extraOptions = null)
    {
        IReadOnlyList<string> options = [.. Options(arch), .. extraOptions ?? []];
        using var strings = new NativeUtf8Array([source, fileName]);
        using var headerTexts = new NativeUtf8Array(headers.Select(h => h.Value).ToArray());
        using var headerNames = new NativeUtf8Array(headers.Select(h => h.Key).ToArray());
        using var optionTexts = new NativeUtf8Array(options);

        IntPtr program;
        Check.Nvrtc(Interop.Nvrtc.nvrtcCreateProgram(&program, strings[0], strings[1], headers.Count,
                                                     headerTexts.Pointers, headerNames.Pointers));
        try
        {
            int compiled = Interop.Nvrtc.nvrtcCompileProgram(program, options.Count, optionTexts.Pointers);
            string log = ReadLog(program);
            if (compiled != Interop.Nvrtc.Success)
                throw new NvrtcCompileException(family, arch, options, compiled, Check.NvrtcStatusName(compiled), log);
            nuint size;
            Check.Nvrtc(Interop.Nvrtc.nvrtcGetCUBINSize(program, &size));
            byte[] cubin = new byte[checked((int)size)];
            if (cubin.Length > 0)
                fixed (byte* cubinPointer = cubin) Check.Nvrtc(Interop.Nvrtc.nvrtcGetCUBIN(program, cubinPointer));
            return new NvrtcResult(family, arch, cubin, ReadPtx(program), log, ParseResources(log));
        }
        finally
        {
            Interop.Nvrtc.nvrtcDestroyProgram(&program);
        }
    }

    private static string ReadPtx(IntPtr program)
    {
        nuint size;
        Check.Nvrtc(Interop.Nvrtc.nvrtcGetPTXSize(program, &size));
        if (size <= 1) return "";
        byte[] ptx = new byte[checked((int)size)];
        fixed (byte* ptxPointer = ptx) Check.Nvrtc(Interop.Nvrtc.nvrtcGetPTX(program, ptxPointer));
        return Encoding.UTF8.GetString(ptx, 0, ptx.Length - 1);
    }

    private static string ReadLog(IntPtr program)
    {
        nuint size;
        Check.Nvrtc(Interop.Nvrtc.nvrtcGetProgramLogSize(program, &size));
        if (size <= 1) return "";
        byte[] log = new byte[(int)size];
        fixed (byte* logPointer = log) Check.Nvrtc(Interop.Nvrtc.nvrtcGetProgramLog(program, logPointer));
        return Encoding.UTF8.GetString(log, 0, (int)size - 1);
    }

    /// <summary>
    /// Reads ptxas' verbose report: for each "Compiling entry function 'K' for 'sm_XY'", the
    /// following "N bytes stack frame, N bytes spill stores, N bytes spill loads" of K's
    /// "Function properties" and "Used N registers[, ..., N bytes smem]". Non-entry functions'
    /// properties are ignored.
    /// </summary>
    internal static IReadOnlyList<KernelResources> ParseResources(string log)
    {
        var kernels = new List<KernelResources>();
        KernelResources? current = null;
        bool inCurrentProperties = false;
        foreach (string line in log.Split('\n'))
        {
            Match match;
            if ((match = EntryLine().Match(line)).Success)
            {
                if (current is not null) kernels.Add(current);
                current = new KernelResources(match.Groups[1].Value, match.Groups[2].Value, 0, 0, 0, 0, 0);
                inCurrentProperties = false;
            }
            else if (current is null)
            {
                continue;
            }
            else if ((match = PropertiesLine().Match(line)).Success)
            {
                inCurrentProperties = match.Groups[1].Value == current.Kernel;
            }
            else if (inCurrentProperties && (match = StackLine().Match(line)).Success)
            {
                current = current with
                {
                    StackFrameBytes = Number(match.Groups[1]),
                    SpillStoreBytes = Number(match.Groups[2]),
                    SpillLoadBytes = Number(match.Groups[3]),
                };
            }
            else if ((match = RegistersLine().Match(line)).Success)
            {
                Match shared = SharedBytes().Match(line);
                current = current with { Registers = Number(match.Groups[1]), SharedBytes = shared.Success ? Number(shared.Groups[1]) : 0 };
            }
        }
        if (current is not null) kernels.Add(current);
        return kernels;
    }

    private static int Number(Group group) => int.Parse(group.Value, NumberStyles.None, CultureInfo.InvariantCulture);

    private static void CheckArch(string arch)
    {
        ArgumentNullException.ThrowIfNull(arch);
        if (!ArchPattern().IsMatch(arch))
            throw new ArgumentException($"Architecture must look like \"sm_80\", \"sm_90a\" or \"compute_90\", got \"{arch}\".", nameof(arch));
    }

    private static int[] ReadSupportedArchitectures()
    {
        int count;
        Check.Nvrtc(Interop.Nvrtc.nvrtcGetNumSupportedArchs(&count));
        int[] architectures = new int[count];
        if (count > 0)
            fixed (int* pointer = architectures) Check.Nvrtc(Interop.Nvrtc.nvrtcGetSupportedArchs(pointer));
        Array.Sort(architectures);
        return architectures;
    }

    private static (int Major, int Minor) ReadVersion()
    {
        int major, minor;
        Check.Nvrtc(Interop.Nvrtc.nvrtcVersion(&major, &minor));
        return (major, minor);
    }

    [GeneratedRegex(@"^(sm_\d+[a-z]?|compute_\d+[a-z]?)$")]
    private static partial Regex ArchPattern();

    [GeneratedRegex(@"Compiling entry function '([^']+)' for '([^']+)'")]
    private static partial Regex EntryLine();

    [GeneratedRegex(@"Function properties for (\S+)")]
    private static partial Regex PropertiesLine();

    [GeneratedRegex(@"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")]
    private static partial Regex StackLine();

    [GeneratedRegex(@"Used (\d+) registers")]
    private static partial Regex RegistersLine();

    [GeneratedRegex(@"(\d+) bytes smem")]
    private static partial Regex SharedBytes();
}
