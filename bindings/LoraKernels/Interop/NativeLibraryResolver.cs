// Finds the native libraries this assembly imports: the CUDA driver, NVRTC, cuBLAS, cuSOLVER and
// the project's own libloraknl_cpu / libloraknl_simt. DllImport names in Interop/ are logical
// names (LibraryNames); this resolver maps each to the usual file names and folders, so a GPU
// machine with only the driver and NVIDIA's pip wheels works as well as one with a toolkit, and
// when nothing loads the exception lists every path it tried.
using System.Reflection;
using System.Runtime.InteropServices;

namespace LoraKernels.Interop;

internal static class LibraryNames
{
    public const string Cuda = "lorakernels_cuda";
    public const string Nvrtc = "lorakernels_nvrtc";
    public const string Cublas = "lorakernels_cublas";
    public const string Cusolver = "lorakernels_cusolver";
    public const string Cpu = "lorakernels_cpu";
    public const string Simt = "lorakernels_simt";
}

internal static class NativeLibraryResolver
{
    private static readonly object Gate = new();
    private static readonly Dictionary<string, IntPtr> Loaded = new();
    private static bool _registered;

    /// <summary>Installs the resolver for this assembly; called from every Interop class's static constructor.</summary>
    public static void EnsureRegistered()
    {
        lock (Gate)
        {
            if (_registered) return;
            NativeLibrary.SetDllImportResolver(typeof(NativeLibraryResolver).Assembly, Resolve);
            _registered = true;
        }
    }

    private static IntPtr Resolve(string libraryName, Assembly assembly, DllImportSearchPath? searchPath) =>
        libraryName switch
        {
            LibraryNames.Cuda or LibraryNames.Nvrtc or LibraryNames.Cublas or LibraryNames.Cusolver
                or LibraryNames.Cpu or LibraryNames.Simt => Load(libraryName),
            _ => IntPtr.Zero,
        };

    /// <summary>
    /// Loads the library behind a logical name (once per process) or throws
    /// <see cref="CudaUnavailableException"/> (CUDA libraries) / <see cref="NativeLibraryNotFoundException"/>
    /// (the project's libraries) listing every attempt.
    /// </summary>
    public static IntPtr Load(string logicalName)
    {
        lock (Gate)
        {
            if (Loaded.TryGetValue(logicalName, out IntPtr cached)) return cached;
            if (logicalName == LibraryNames.Cpu) OpenMpWaitPolicy.ApplyDefault();  // before libgomp loads with it
            var attempts = new List<string>();
            Spec spec = SpecFor(logicalName);
            IntPtr handle = IntPtr.Zero;
            bool found = spec.EarlyFolders().Any(folder => TryFolder(spec, folder, attempts, out handle))
                || (spec.UseSystemSearch && spec.FileNames.Any(name => TryLoad(name, attempts, out handle)))
                || spec.LateFolders().Any(folder => TryFolder(spec, folder, attempts, out handle));
            if (!found)
            {
                if (!spec.IsCudaLibrary && !BuildTreeFolders().Any())
                    attempts.Add($"no build/native/lib in {Path.TrimEndingDirectorySeparator(AppContext.BaseDirectory)} or any folder above it");
                throw spec.Failure(attempts);
            }
            Loaded[logicalName] = handle;
            return handle;
        }
    }

    private static bool TryFolder(Spec spec, string folder, List<string> attempts, out IntPtr handle)
    {
        handle = IntPtr.Zero;
        var present = spec.FileNames.Select(name => Path.Combine(folder, name)).Where(File.Exists).ToList();
        if (present.Count == 0)
        {
            attempts.Add($"{Path.TrimEndingDirectorySeparator(folder)}/: none of {string.Join(", ", spec.FileNames)}");
            return false;
        }
        // A toolkit's libraries find their siblings only when those are already loaded (no RUNPATH).
        foreach (string dependency in spec.Dependencies)
        {
            string dependencyPath = Path.Combine(folder, dependency);
            if (File.Exists(dependencyPath)) NativeLibrary.TryLoad(dependencyPath, out _);
        }
        foreach (string path in present)
        {
            if (TryLoad(path, attempts, out handle)) return true;
        }
        return false;
    }

    private static bool TryLoad(string pathOrName, List<string> attempts, out IntPtr handle)
    {
        try
        {
            handle = NativeLibrary.Load(pathOrName);
            return true;
        }
        catch (DllNotFoundException e)
        {
            // .NET's message is a fixed preamble line followed by dlerror's text, which is the useful part.
            string reason = e.Message.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).LastOrDefault() ?? e.Message;
            attempts.Add(Path.IsPathRooted(pathOrName) ? $"{pathOrName}: {reason}" : $"{pathOrName} (system search): {reason}");
            handle = IntPtr.Zero;
            return false;
        }
        catch (BadImageFormatException e)
        {
            attempts.Add($"{pathOrName}: {e.Message}");
            handle = IntPtr.Zero;
            return false;
        }
    }

    /// <summary>Where to look for one logical library, in order.</summary>
    private sealed class Spec
    {
        public required string Description { get; init; }
        public required string[] FileNames { get; init; }
        public string[] Dependencies { get; init; } = [];
        public bool UseSystemSearch { get; init; } = true;
        public bool IsCudaLibrary { get; init; } = true;
        /// <summary>Folders tried before the system search: the environment's override and, for the
        /// project's libraries, the app folder and the build tree.</summary>
        public Func<IEnumerable<string>> Early { get; init; } = () => [];
        /// <summary>Folders tried after the system search: toolkits, NVIDIA's pip wheels, the usual library folders.</summary>
        public Func<IEnumerable<string>> Late { get; init; } = () => [];
        // Explicit and build-tree folders are listed in the failure message even when missing; the
        // many speculative toolkit and pip folders only when they exist.
        public IEnumerable<string> EarlyFolders() => Early().Distinct();
        public IEnumerable<string> LateFolders() => Late().Where(Directory.Exists).Distinct();

        public Exception Failure(List<string> attempts) => IsCudaLibrary
            ? new CudaUnavailableException(
                $"Could not load {Description}. Install it, or set LORAKERNELS_CUDA_LIB_DIR to the folder holding it. Tried:\n  " +
                string.Join("\n  ", attempts))
            : new NativeLibraryNotFoundException(FileNames[0], attempts);
    }

    private static Spec SpecFor(string logicalName) => logicalName switch
    {
        LibraryNames.Cuda => new Spec
        {
            Description = "the CUDA driver (libcuda.so.1; it comes with the NVIDIA driver)",
            FileNames = ["libcuda.so.1", "libcuda.so"],
            Early = () => EnvironmentFolders("LORAKERNELS_CUDA_LIB_DIR"),
            // The WSL driver lives apart; toolkit stub libraries are deliberately not tried (cuInit fails on them).
            Late = () => ["/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib/wsl/lib"],
        },
        LibraryNames.Nvrtc => new Spec
        {
            Description = "NVRTC (libnvrtc.so 11.2 or newer: the CUDA toolkit's, the nvidia-cuda-nvrtc pip package's, or Debian's libnvrtc11.2)",
            FileNames = ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so.11.2", "libnvrtc.so"],
            Early = () => EnvironmentFolders("LORAKERNELS_CUDA_LIB_DIR"),
            Late = ToolkitAndPipFolders,
        },
        LibraryNames.Cublas => new Spec
        {
            Description = "cuBLAS (libcublas.so 11 or newer)",
            FileNames = ["libcublas.so.13", "libcublas.so.12", "libcublas.so.11", "libcublas.so"],
            Dependencies = ["libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so.11"],
            Early = () => EnvironmentFolders("LORAKERNELS_CUDA_LIB_DIR"),
            Late = ToolkitAndPipFolders,
        },
        LibraryNames.Cusolver => new Spec
        {
            Description = "cuSOLVER (libcusolver.so 11 or newer)",
            FileNames = ["libcusolver.so.12", "libcusolver.so.11", "libcusolver.so"],
            Dependencies = ["libnvJitLink.so.13", "libnvJitLink.so.12", "libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so.11",
                            "libcublas.so.13", "libcublas.so.12", "libcublas.so.11", "libcusparse.so.12", "libcusparse.so.11"],
            Early = () => EnvironmentFolders("LORAKERNELS_CUDA_LIB_DIR"),
            Late = ToolkitAndPipFolders,
        },
        LibraryNames.Cpu => ProjectLibrary("libloraknl_cpu.so"),
        LibraryNames.Simt => ProjectLibrary("libloraknl_simt.so"),
        _ => throw new ArgumentException($"Unknown native library '{logicalName}'.", nameof(logicalName)),
    };

    // The project's own libraries are never taken from the system search: a stale copy elsewhere
    // would silently run old kernels. A NuGet package carries them in runtimes/<rid>/native/, which
    // a RID-less build of a consuming app leaves under its output folder (not beside the assembly),
    // so that folder is searched beside the app and beside LoraKernels.dll itself.
    private static Spec ProjectLibrary(string fileName) => new()
    {
        Description = fileName,
        FileNames = OperatingSystem.IsWindows()
            ? [Path.ChangeExtension(fileName, ".dll"), Path.ChangeExtension(fileName, ".dll")[3..]]
            : [fileName],
        IsCudaLibrary = false,
        UseSystemSearch = false,
        Early = () => EnvironmentFolders("LORAKERNELS_NATIVE_DIR").Concat(PackageFolders()).Concat(BuildTreeFolders()),
    };

    /// <summary>The app folder, the folder of LoraKernels.dll, and runtimes/&lt;rid&gt;/native under each.</summary>
    private static IEnumerable<string> PackageFolders()
    {
        // Empty in a single-file app, whose libraries sit beside the app (AppContext.BaseDirectory) anyway.
#pragma warning disable IL3000
        string assemblyFolder = Path.GetDirectoryName(typeof(NativeLibraryResolver).Assembly.Location) ?? "";
#pragma warning restore IL3000
        var roots = new[] { AppContext.BaseDirectory, assemblyFolder }.Where(f => f.Length > 0).Distinct().ToList();
        foreach (string root in roots) yield return root;
        foreach (string rid in RuntimeIdentifiers())
            foreach (string root in roots)
                yield return Path.Combine(root, "runtimes", rid, "native");
    }

    /// <summary>The running RID ("linux-x64") and the portable one built from the OS and architecture, when they differ.</summary>
    private static IEnumerable<string> RuntimeIdentifiers()
    {
        string os = OperatingSystem.IsWindows() ? "win" : OperatingSystem.IsMacOS() ? "osx" : "linux";
        string portable = $"{os}-{RuntimeInformation.ProcessArchitecture.ToString().ToLowerInvariant()}";
        return new[] { RuntimeInformation.RuntimeIdentifier, portable }.Distinct();
    }

    private static IEnumerable<string> EnvironmentFolders(string variable)
    {
        string? value = Environment.GetEnvironmentVariable(variable);
        if (string.IsNullOrWhiteSpace(value)) yield break;
        foreach (string folder in value.Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
            yield return folder;
    }

    /// <summary>build/native/lib of the source tree holding the running application (tests, demo, benchmarks).</summary>
    private static IEnumerable<string> BuildTreeFolders()
    {
        for (DirectoryInfo? folder = new(AppContext.BaseDirectory); folder is not null; folder = folder.Parent)
        {
            string candidate = Path.Combine(folder.FullName, "build", "native", "lib");
            if (Directory.Exists(candidate))
            {
                yield return candidate;
                yield break;
            }
        }
    }

    private static IEnumerable<string> ToolkitAndPipFolders()
    {
        foreach (string variable in new[] { "CUDA_HOME", "CUDA_PATH" })
        {
            string? root = Environment.GetEnvironmentVariable(variable);
            if (!string.IsNullOrWhiteSpace(root)) yield return Path.Combine(root, "lib64");
        }
        yield return "/usr/local/cuda/lib64";
        yield return "/usr/lib/x86_64-linux-gnu";
        foreach (string folder in NvidiaPipFolders()) yield return folder;
    }

    /// <summary>
    /// <c>site-packages/nvidia/*/lib</c> of NVIDIA's pip wheels: LORAKERNELS_NVIDIA_PIP_DIR (the
    /// <c>nvidia</c> folder itself), then the active virtualenv or conda environment and the usual
    /// system and user Python folders.
    /// </summary>
    private static IEnumerable<string> NvidiaPipFolders()
    {
        var roots = new List<string>(EnvironmentFolders("LORAKERNELS_NVIDIA_PIP_DIR"));
        var pythonLibFolders = new List<string>();
        foreach (string variable in new[] { "VIRTUAL_ENV", "CONDA_PREFIX" })
        {
            string? prefix = Environment.GetEnvironmentVariable(variable);
            if (!string.IsNullOrWhiteSpace(prefix)) pythonLibFolders.Add(Path.Combine(prefix, "lib"));
        }
        string home = Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);
        if (home.Length > 0) pythonLibFolders.Add(Path.Combine(home, ".local", "lib"));
        pythonLibFolders.Add("/usr/local/lib");
        pythonLibFolders.Add("/usr/lib");
        foreach (string libFolder in pythonLibFolders)
        {
            foreach (string python in SafeSubfolders(libFolder, "python3*"))
            {
                roots.Add(Path.Combine(python, "site-packages", "nvidia"));
                roots.Add(Path.Combine(python, "dist-packages", "nvidia"));
            }
        }
        foreach (string root in roots)
        {
            foreach (string package in SafeSubfolders(root, "*"))
                yield return Path.Combine(package, "lib");
        }
    }

    private static IEnumerable<string> SafeSubfolders(string folder, string pattern)
    {
        try
        {
            return Directory.Exists(folder) ? Directory.GetDirectories(folder, pattern).Order(StringComparer.Ordinal).ToArray() : [];
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return [];
        }
    }
}
