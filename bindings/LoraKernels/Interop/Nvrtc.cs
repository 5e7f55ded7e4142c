// NVRTC (libnvrtc.so 11.2 or newer): compiles kernels/*.cu at run time. Needs no GPU, so the
// compile-and-resources check runs on every CI machine.
using System.Runtime.InteropServices;

namespace LoraKernels.Interop;

internal static unsafe partial class Nvrtc
{
    static Nvrtc() => NativeLibraryResolver.EnsureRegistered();

    public const int Success = 0;

    [LibraryImport(LibraryNames.Nvrtc)] public static partial int nvrtcVersion(int* major, int* minor);
    [LibraryImport(LibraryNames.Nvrtc)] public static partial byte* nvrtcGetErrorString(int result);
    [LibraryImport(LibraryNames.Nvrtc)]
    public static partial int nvrtcCreateProgram(IntPtr* program, byte* source, byte* name, int headerCount,
                                                 byte** headers, byte** includeNames);
    [LibraryImport(LibraryNames.Nvrtc)] public static partial int nvrtcCompileProgram(IntPtr program, int optionCount, byte** options);
    [LibraryImport(LibraryNames.Nvrtc)] public static partial int nvrtcGetProgramLogSize(IntPtr program, nuint* size);
    [LibraryImport(LibraryNames.Nvrtc)] public static partial int nvrtcGetProgramLog(IntPtr program, byte* log);
    [LibraryImport(LibraryNames.Nvrtc)] public static partial int nvrtcGetCUBINSize(IntPtr program, nuint* size);
    [LibraryImport(LibraryNames.Nvrtc)] public static partial int nvrtcGetCUBIN(IntPtr program, byte* cubin);
    [LibraryImport(LibraryNames.Nvrtc)] public static partial int nvrtcGetPTXSize(IntPtr program, nuint* size);
    [LibraryImport(LibraryNames.Nvrtc)] public static partial int nvrtcGetPTX(IntPtr program, byte* ptx);
    [LibraryImport(LibraryNames.Nvrtc)] public static partial int nvrtcDestroyProgram(IntPtr* program);
    // NVRTC 11.2 and newer: the architectures its --gpu-architecture accepts, as 10·major + minor.
    [LibraryImport(LibraryNames.Nvrtc)] public static partial int nvrtcGetNumSupportedArchs(int* count);
    [LibraryImport(LibraryNames.Nvrtc)] public static partial int nvrtcGetSupportedArchs(int* architectures);
}
