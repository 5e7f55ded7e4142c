// libloraknl_simt: every lk_* export of the SIMT emulator (native/include/lora_kernels.h), which
// runs kernels/*.cu on the CPU with cuLaunchKernel's calling convention.
using System.Runtime.InteropServices;

namespace LoraKernels.Interop;

internal static unsafe partial class NativeSimt
{
    static NativeSimt() => NativeLibraryResolver.EnsureRegistered();

    [LibraryImport(LibraryNames.Simt)] public static partial byte* lk_status_name(int status);
    [LibraryImport(LibraryNames.Simt)] public static partial long lk_simt_last_error(byte* buffer, long capacity);

    [LibraryImport(LibraryNames.Simt)]
    public static partial int lk_simt_launch(byte* kernel, uint gridX, uint gridY, uint gridZ,
                                             uint blockX, uint blockY, uint blockZ,
                                             uint dynamicSharedBytes, void** args);

    [LibraryImport(LibraryNames.Simt)] public static partial int lk_simt_kernel_count();
    [LibraryImport(LibraryNames.Simt)] public static partial byte* lk_simt_kernel_name(int index);
    [LibraryImport(LibraryNames.Simt)] public static partial int lk_simt_set_num_threads(int n);

    /// <summary>Mirrors LK_SIMT_MAX_DYNAMIC_SHARED_BYTES.</summary>
    public const int MaxDynamicSharedBytes = 227 * 1024;
}
