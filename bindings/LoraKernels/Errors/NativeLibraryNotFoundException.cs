// libloraknl_cpu.so or libloraknl_simt.so could not be loaded. Derives from DllNotFoundException
// (what .NET code expects from a missing native library) and lists every path the resolver tried.
namespace LoraKernels;

public sealed class NativeLibraryNotFoundException : DllNotFoundException
{
    public NativeLibraryNotFoundException(string library, IReadOnlyList<string> attempts)
        : base($"Could not load {library}. Build it with `cmake -S . -B build/native && cmake --build build/native` " +
               $"or set LORAKERNELS_NATIVE_DIR to the folder holding it. Tried:\n  {string.Join("\n  ", attempts)}")
    {
        Library = library;
        Attempts = attempts;
    }

    public string Library { get; }

    /// <summary>Every candidate path (or bare name for the system search) with the loader's error.</summary>
    public IReadOnlyList<string> Attempts { get; }
}
