// The loaded kernel modules of one CUDA device, one per family, and their functions by name.
// A family's module comes from, in order:
//   1. the AOT fatbin <family>.fatbin (LORAKERNELS_FATBIN_DIR, the app's kernels/ folder, or
//      build/native/kernels/ found by walking up from the app), when cuModuleLoadData accepts it
//      for this GPU (skipped when LORAKERNELS_FORCE_NVRTC=1, e.g. after editing kernels without
//      rebuilding the fatbins);
//   2. a cubin cached on disk by an earlier NVRTC compile, keyed by SHA-256 of (sources, options,
//      architecture, NVRTC version), under LORAKERNELS_CACHE_DIR or ~/.cache/lorakernels;
//   3. NVRTC now, for the target NvrtcTarget picks (the device's sm_XY; or, for a GPU newer than the
//      loaded NVRTC, an older cubin it runs or compute_XY PTX that the driver JIT-compiles); the image is
//      then cached (written to a temporary file and renamed, so a crash never leaves a half-written entry).
// A cache entry stores the SHA-256 of its payload first; a corrupt or unloadable entry is
// recompiled and replaced.
using System.Security.Cryptography;
using System.Text;
using LoraKernels.Interop;

namespace LoraKernels.Runtime;

internal sealed unsafe class ModuleCache : IDisposable
{
    private const int HashBytes = 32;

    private readonly CudaContextHandle _context;
    private readonly Lazy<NvrtcTarget> _target;
    private readonly object _gate = new();
    private readonly Dictionary<string, CudaModuleHandle> _modules = new(StringComparer.Ordinal);
    private readonly Dictionary<string, KernelFunction> _functions = new(StringComparer.Ordinal);
    private readonly Dictionary<string, string> _origins = new(StringComparer.Ordinal);
    private bool _disposed;

    // The dynamic shared memory a function was allowed so far. It starts at 0, not the driver's
    // default of 48 KiB less the kernel's static shared memory (which would need the static size):
    // the first launch with any dynamic shared memory sets the attribute, so a kernel with static
    // tables and a 48 KiB dynamic ring (the 4-bit tensor-core kernels) launches too.
    private sealed class KernelFunction(IntPtr handle)
    {
        public IntPtr Handle { get; } = handle;
        public uint DynamicSharedLimit { get; set; }
    }

    public ModuleCache(CudaContextHandle context, (int Major, int Minor) computeCapability)
    {
        _context = context;
        _target = new Lazy<NvrtcTarget>(() => NvrtcTarget.For(computeCapability, NvrtcCompiler.SupportedArchitectures));
    }

    /// <summary>What NVRTC builds for this device (asked of NVRTC on first use).</summary>
    public NvrtcTarget Target => _target.Value;

    /// <summary>Where each loaded family came from ("fatbin /path", "disk cache /path", "nvrtc sm_90 cubin", ...), for tests and diagnostics.</summary>
    public IReadOnlyDictionary<string, string> Origins
    {
        get { lock (_gate) return new Dictionary<string, string>(_origins); }
    }

    /// <summary>
    /// The function for entry point <paramref name="kernel"/>, with its dynamic shared memory limit
    /// raised to at least <paramref name="dynamicSharedBytes"/> (needed once static plus dynamic pass 48 KiB).
    /// The context must be current.
    /// </summary>
    public IntPtr GetFunction(string kernel, uint dynamicSharedBytes)
    {
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (!_functions.TryGetValue(kernel, out KernelFunction? function))
            {
                CudaModuleHandle module = Module(KernelSources.FamilyOf(kernel));
                IntPtr handle;
                byte[] name = Utf8.NullTerminated(kernel);
                int result;
                fixed (byte* namePointer = name) result = CudaDriver.cuModuleGetFunction(&handle, module.DangerousGetHandle(), namePointer);
                if (result != CudaDriver.Success) throw Check.CudaError($"cuModuleGetFunction of {kernel}", result);
                function = new KernelFunction(handle);
                _functions.Add(kernel, function);
            }
            if (dynamicSharedBytes > function.DynamicSharedLimit)
            {
                int result = CudaDriver.cuFuncSetAttribute(function.Handle, CudaDriver.FunctionAttributeMaxDynamicSharedSizeBytes, (int)dynamicSharedBytes);
                if (result != CudaDriver.Success)
                    throw Check.CudaError($"cuFuncSetAttribute of {kernel} to {dynamicSharedBytes} B dynamic shared", result);
                function.DynamicSharedLimit = dynamicSharedBytes;
            }
            return function.Handle;
        }
    }

    private CudaModuleHandle Module(string family)
    {
        if (_modules.TryGetValue(family, out CudaModuleHandle? module)) return module;
        module = LoadFatbin(family) ?? LoadCachedCubin(family) ?? CompileAndCache(family);
        _modules.Add(family, module);
        return module;
    }

    private CudaModuleHandle? LoadFatbin(string family)
    {
        if (Environment.GetEnvironmentVariable("LORAKERNELS_FORCE_NVRTC") == "1") return null;
        foreach (string folder in FatbinFolders())
        {
            string path = Path.Combine(folder, family + ".fatbin");
            if (!File.Exists(path)) continue;
            // A fatbin without code for this GPU (or from another toolkit) is not an error: NVRTC covers it.
            if (CudaModuleHandle.TryLoad(_context, File.ReadAllBytes(path), out CudaModuleHandle? module) == CudaDriver.Success)
            {
                _origins[family] = $"fatbin {path}";
                return module;
            }
        }
        return null;
    }

    private static IEnumerable<string> FatbinFolders()
    {
        string? configured = Environment.GetEnvironmentVariable("LORAKERNELS_FATBIN_DIR");
        if (!string.IsNullOrWhiteSpace(configured)) yield return configured;
        yield return Path.Combine(AppContext.BaseDirectory, "kernels");
        for (DirectoryInfo? folder = new(AppContext.BaseDirectory); folder is not null; folder = folder.Parent)
        {
            string candidate = Path.Combine(folder.FullName, "build", "native", "kernels");
            if (Directory.Exists(candidate))
            {
                yield return candidate;
                yield break;
            }
        }
    }

    private CudaModuleHandle? LoadCachedCubin(string family)
    {
        string? path = CachePath(family);
        if (path is null) return null;
        byte[]? cubin = TryReadVerified(path);
        if (cubin is null) return null;
        if (CudaModuleHandle.TryLoad(_context, cubin, out CudaModuleHandle? module) == CudaDriver.Success)
        {
            _origins[family] = $"disk cache {path}";
            return module;
        }
        TryDelete(path);
        return null;
    }

    /// <summary>The payload of a cache entry whose stored SHA-256 matches it; a corrupt entry is deleted and null returned.</summary>
    internal static byte[]? TryReadVerified(string path)
    {
        byte[] entry;
        try
        {
            if (!File.Exists(path)) return null;
            entry = File.ReadAllBytes(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
        if (entry.Length > HashBytes && SHA256.HashData(entry.AsSpan(HashBytes)).AsSpan().SequenceEqual(entry.AsSpan(0, HashBytes)))
            return entry[HashBytes..];
        TryDelete(path);
        return null;
    }

    private CudaModuleHandle CompileAndCache(string family)
    {
        NvrtcTarget target = Target;
        NvrtcResult compiled = NvrtcCompiler.Compile(family, target.Architecture);
        // cuModuleLoadData takes PTX as NUL-terminated text and JIT-compiles it for the device.
        byte[] image = target.IsCubin ? compiled.Cubin : Utf8.NullTerminated(compiled.Ptx);
        int result = CudaModuleHandle.TryLoad(_context, image, out CudaModuleHandle? module);
        if (result != CudaDriver.Success) throw Check.CudaError($"cuModuleLoadData of the NVRTC {target} of {family}", result);
        _origins[family] = $"nvrtc {target}";
        string? path = CachePath(family);
        if (path is not null) TryWriteAtomically(path, image);
        return module!;
    }

    /// <summary>The cache file for a family on this device's target, or null when there is no cache folder.</summary>
    internal string? CachePath(string family)
    {
        string? folder = CacheFolder();
        string arch = Target.Architecture;
        return folder is null ? null : Path.Combine(folder, $"{family}-{arch}-{CacheKey(family, arch)}.{(Target.IsCubin ? "cubin" : "ptx")}");
    }

    internal static string? CacheFolder()
    {
        string? configured = Environment.GetEnvironmentVariable("LORAKERNELS_CACHE_DIR");
        if (!string.IsNullOrWhiteSpace(configured)) return configured;
        string home = Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);
        return home.Length == 0 ? null : Path.Combine(home, ".cache", "lorakernels");
    }

    /// <summary>SHA-256 (hex) of everything that determines the cubin: sources, headers, options, architecture, NVRTC version.</summary>
    internal static string CacheKey(string family, string arch)
    {
        var (major, minor) = NvrtcCompiler.Version;
        var text = new StringBuilder();
        text.Append("lorakernels-cubin-v1\n").Append(arch).Append('\n').Append(major).Append('.').Append(minor).Append('\n');
        foreach (string option in NvrtcCompiler.Options(arch)) text.Append(option).Append('\n');
        text.Append(family).Append(".cu\n").Append(KernelSources.Source(family)).Append('\0');
        foreach (var header in KernelSources.Headers) text.Append(header.Key).Append('\n').Append(header.Value).Append('\0');
        return Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(text.ToString())));
    }

    /// <summary>Writes hash + payload atomically (IO.AtomicFile). A cache that cannot be written is
    /// skipped: it only saves time.</summary>
    internal static void TryWriteAtomically(string path, byte[] payload)
    {
        try
        {
            IO.AtomicFile.Write(path, stream =>
            {
                stream.Write(SHA256.HashData(payload));
                stream.Write(payload);
            });
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // The next run compiles again.
        }
    }

    private static void TryDelete(string path)
    {
        try
        {
            File.Delete(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // Another process may hold or have replaced it; the next load verifies the entry again.
        }
    }

    public void Dispose()
    {
        lock (_gate)
        {
            if (_disposed) return;
            _disposed = true;
            foreach (CudaModuleHandle module in _modules.Values) module.Dispose();
            _modules.Clear();
            _functions.Clear();
        }
    }
}
