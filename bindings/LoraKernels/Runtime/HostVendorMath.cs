// IVendorMath on host memory: the CPU library's GEMM and SVD stand in for cuBLAS and cuSOLVER under
// the emulator, so a GPU op that calls vendor math runs the same code path on every CI machine.
using LoraKernels.Interop;

namespace LoraKernels.Runtime;

internal sealed unsafe class HostVendorMath : IVendorMath
{
    public HostVendorMath() => NativeLibraryResolver.Load(LibraryNames.Cpu);

    public void Sgemm(bool transA, bool transB, int m, int n, int k, float alpha,
                      ulong a, int lda, ulong b, int ldb, float beta, ulong c, int ldc) =>
        Check.Cpu(NativeCpu.lk_cpu_sgemm(transA ? 1 : 0, transB ? 1 : 0, m, n, k, alpha,
                                         (float*)a, lda, (float*)b, ldb, beta, (float*)c, ldc));

    /// <summary>cublasGemmEx's semantics on host memory: A, B and a BF16 C widened to fp32, the CPU SGEMM, C rounded back.</summary>
    public void GemmBf16(bool transA, bool transB, int m, int n, int k, float alpha,
                         ulong a, int lda, ulong b, int ldb, float beta, ulong c, int ldc, DType cType)
    {
        float[] aValues = Widen(a, (long)(transA ? k : m) * lda), bValues = Widen(b, (long)(transB ? n : k) * ldb);
        long cElements = (long)m * ldc;
        float[] cValues = cType == DType.F32 ? new Span<float>((float*)c, checked((int)cElements)).ToArray() : Widen(c, cElements);
        fixed (float* aPointer = aValues, bPointer = bValues, cPointer = cValues)
            Check.Cpu(NativeCpu.lk_cpu_sgemm(transA ? 1 : 0, transB ? 1 : 0, m, n, k, alpha, aPointer, lda, bPointer, ldb, beta,
                                             cPointer, ldc));
        if (cType == DType.F32) cValues.CopyTo(new Span<float>((float*)c, cValues.Length));
        else BFloat16.FromSingle(cValues, new Span<ushort>((ushort*)c, cValues.Length));
    }

    private static float[] Widen(ulong bf16, long elements)
    {
        var values = new float[elements];
        BFloat16.ToSingle(new ReadOnlySpan<ushort>((ushort*)bf16, checked((int)elements)), values);
        return values;
    }

    public void Svd(int m, int n, ulong a, ulong u, ulong s, ulong vt) =>
        Check.Cpu(NativeCpu.lk_cpu_svd(m, n, (float*)a, (float*)u, (float*)s, (float*)vt));
}
