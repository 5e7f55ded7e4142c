// cuBLAS (libcublas.so 13/12/11): the vendor GEMM a CUDA device offers to GPU ops (IVendorMath).
// cuBLAS is column-major; CublasVendorMath serves row-major calls by swapping the operands.
using System.Runtime.InteropServices;

namespace LoraKernels.Interop;

internal static unsafe partial class Cublas
{
    static Cublas() => NativeLibraryResolver.EnsureRegistered();

    public const int Success = 0;
    public const int OpN = 0;
    public const int OpT = 1;

    [LibraryImport(LibraryNames.Cublas, EntryPoint = "cublasCreate_v2")] public static partial int cublasCreate(IntPtr* handle);
    [LibraryImport(LibraryNames.Cublas, EntryPoint = "cublasDestroy_v2")] public static partial int cublasDestroy(IntPtr handle);
    [LibraryImport(LibraryNames.Cublas, EntryPoint = "cublasSetStream_v2")] public static partial int cublasSetStream(IntPtr handle, IntPtr stream);
    [LibraryImport(LibraryNames.Cublas, EntryPoint = "cublasSgemm_v2")]
    public static partial int cublasSgemm(IntPtr handle, int transA, int transB, int m, int n, int k,
                                          float* alpha, float* a, int lda, float* b, int ldb,
                                          float* beta, float* c, int ldc);

    // cudaDataType_t, cublasComputeType_t and cublasGemmAlgo_t values (library_types.h, cublas_api.h).
    public const int DataTypeF32 = 0;       // CUDA_R_32F
    public const int DataTypeBf16 = 14;     // CUDA_R_16BF
    public const int ComputeF32 = 68;       // CUBLAS_COMPUTE_32F: fp32 products and sums (tensor cores for bf16 inputs)
    public const int GemmDefault = -1;      // CUBLAS_GEMM_DEFAULT: cuBLAS picks the algorithm

    [LibraryImport(LibraryNames.Cublas)]
    public static partial int cublasGemmEx(IntPtr handle, int transA, int transB, int m, int n, int k, float* alpha,
                                           void* a, int aType, int lda, void* b, int bType, int ldb, float* beta,
                                           void* c, int cType, int ldc, int computeType, int algo);

    /// <summary>
    /// <c>cublasGetStatusString</c> (cuBLAS 11.4.2 and newer), looked up by name because older
    /// libraries lack it; null when absent.
    /// </summary>
    public static string? StatusString(int status)
    {
        IntPtr library = NativeLibraryResolver.Load(LibraryNames.Cublas);
        if (!NativeLibrary.TryGetExport(library, "cublasGetStatusString", out IntPtr export)) return null;
        var getStatusString = (delegate* unmanaged<int, byte*>)export;
        return Utf8.Read(getStatusString(status));
    }

    /// <summary>cublasStatus_t names (cublas_api.h), used when the library has no cublasGetStatusString.</summary>
    public static string StatusName(int status) => status switch
    {
        0 => "CUBLAS_STATUS_SUCCESS",
        1 => "CUBLAS_STATUS_NOT_INITIALIZED",
        3 => "CUBLAS_STATUS_ALLOC_FAILED",
        7 => "CUBLAS_STATUS_INVALID_VALUE",
        8 => "CUBLAS_STATUS_ARCH_MISMATCH",
        11 => "CUBLAS_STATUS_MAPPING_ERROR",
        13 => "CUBLAS_STATUS_EXECUTION_FAILED",
        14 => "CUBLAS_STATUS_INTERNAL_ERROR",
        15 => "CUBLAS_STATUS_NOT_SUPPORTED",
        16 => "CUBLAS_STATUS_LICENSE_ERROR",
        _ => "CUBLAS_STATUS_UNKNOWN",
    };
}
