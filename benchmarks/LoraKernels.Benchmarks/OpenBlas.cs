using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

[assembly: DisableRuntimeMarshalling]

namespace LoraKernels.Benchmarks;

/// <summary>
/// The OpenBLAS baseline (libopenblas.so.0, Debian's libopenblas0-pthread): cblas_sgemm with
/// 32-bit integers (the LP64 interface), as a user of BLAS would call it.
/// </summary>
internal static unsafe partial class OpenBlas
{
    private const string Library = "libopenblas.so.0";

    public const int RowMajor = 101;
    public const int NoTrans = 111;
    public const int Trans = 112;

    [LibraryImport(Library)]
    public static partial void cblas_sgemm(int layout, int transA, int transB, int m, int n, int k, float alpha,
                                           float* a, int lda, float* b, int ldb, float beta, float* c, int ldc);

    [LibraryImport(Library)]
    public static partial int openblas_get_num_threads();

    [LibraryImport(Library)]
    public static partial byte* openblas_get_corename();

    [LibraryImport(Library)]
    public static partial byte* openblas_get_config();

    /// <summary>"OpenBLAS 0.3.21 DYNAMIC_ARCH ... (Haswell kernels, 2 threads)".</summary>
    public static string Describe() =>
        $"{Marshal.PtrToStringUTF8((IntPtr)openblas_get_config())?.Trim()} ({Marshal.PtrToStringUTF8((IntPtr)openblas_get_corename())} kernels, {openblas_get_num_threads()} threads)";

    /// <summary>Row-major C[m,n] = alpha·op(A)·op(B) + beta·C.</summary>
    public static void Sgemm(bool transA, bool transB, int m, int n, int k, float alpha, float* a, int lda,
                             float* b, int ldb, float beta, float* c, int ldc) =>
        cblas_sgemm(RowMajor, transA ? Trans : NoTrans, transB ? Trans : NoTrans, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

/// <summary>A 64-byte-aligned native float array for the baseline's operands.</summary>
internal sealed unsafe class NativeFloats : IDisposable
{
    public NativeFloats(float[] values)
    {
        Length = values.Length;
        Pointer = (float*)NativeMemory.AlignedAlloc((nuint)values.Length * sizeof(float), 64);
        values.CopyTo(new Span<float>(Pointer, values.Length));
    }

    public NativeFloats(int length) : this(new float[length]) { }

    public float* Pointer { get; private set; }
    public int Length { get; }

    public void Dispose()
    {
        if (Pointer == null) return;
        NativeMemory.AlignedFree(Pointer);
        Pointer = null;
    }
}
