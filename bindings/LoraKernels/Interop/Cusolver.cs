// cuSOLVER dense (libcusolver.so 12/11): the SVD a CUDA device offers to initialisations that
// factor a weight (PiSSA, LoftQ). Wrapped by Runtime/CudaSolver.
using System.Runtime.InteropServices;

namespace LoraKernels.Interop;

internal static unsafe partial class Cusolver
{
    static Cusolver() => NativeLibraryResolver.EnsureRegistered();

    public const int Success = 0;

    [LibraryImport(LibraryNames.Cusolver)] public static partial int cusolverDnCreate(IntPtr* handle);
    [LibraryImport(LibraryNames.Cusolver)] public static partial int cusolverDnDestroy(IntPtr handle);
    [LibraryImport(LibraryNames.Cusolver)] public static partial int cusolverDnSetStream(IntPtr handle, IntPtr stream);
    [LibraryImport(LibraryNames.Cusolver)] public static partial int cusolverDnSgesvd_bufferSize(IntPtr handle, int m, int n, int* lwork);
    [LibraryImport(LibraryNames.Cusolver)]
    public static partial int cusolverDnSgesvd(IntPtr handle, byte jobU, byte jobVT, int m, int n,
                                               float* a, int lda, float* s, float* u, int ldu,
                                               float* vt, int ldvt, float* work, int lwork,
                                               float* rwork, int* devInfo);

    /// <summary>cusolverStatus_t names (cusolver_common.h).</summary>
    public static string StatusName(int status) => status switch
    {
        0 => "CUSOLVER_STATUS_SUCCESS",
        1 => "CUSOLVER_STATUS_NOT_INITIALIZED",
        2 => "CUSOLVER_STATUS_ALLOC_FAILED",
        3 => "CUSOLVER_STATUS_INVALID_VALUE",
        4 => "CUSOLVER_STATUS_ARCH_MISMATCH",
        5 => "CUSOLVER_STATUS_MAPPING_ERROR",
        6 => "CUSOLVER_STATUS_EXECUTION_FAILED",
        7 => "CUSOLVER_STATUS_INTERNAL_ERROR",
        8 => "CUSOLVER_STATUS_MATRIX_TYPE_NOT_SUPPORTED",
        9 => "CUSOLVER_STATUS_NOT_SUPPORTED",
        _ => "CUSOLVER_STATUS_UNKNOWN",
    };
}
