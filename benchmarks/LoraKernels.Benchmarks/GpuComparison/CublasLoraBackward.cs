using LoraKernels.Runtime;

namespace LoraKernels.Benchmarks.GpuComparison;

/// <summary>
/// The LoRA backward as PyTorch's autograd runs it through cuBLAS for a bf16 PEFT layer (no dropout):
/// du = s·dy·B, dB = s·dyᵀ·u, dA = duᵀ·x, dx = dy·W0 (+ du·A with beta = 1), five cublasGemmEx calls
/// with bf16 inputs and outputs and fp32 compute; u and du are bf16, as PEFT's bf16 adapters keep
/// them. The baseline the fused backward is timed against (GpuComparison).
/// </summary>
internal sealed class CublasLoraBackward(IVendorMath blas, int tokens, int inFeatures, int outFeatures, int rank, float scale)
{
    /// <summary>Row-major addresses: x [M, in], W0 [out, in], A [r, in], B [out, r], u16 [M, r] (bf16), dy [M, out];
    /// outputs dx [M, in], dA [r, in], dB [out, r], and du16 [M, r] (bf16 scratch).</summary>
    public void Run(ulong x, ulong w0, ulong a, ulong b, ulong u16, ulong dy, ulong dx, ulong dA, ulong dB, ulong du16)
    {
        int m = tokens, n = inFeatures, o = outFeatures, r = rank;
        blas.GemmBf16(false, false, m, r, o, scale, dy, o, b, r, 0f, du16, r, DType.BF16);   // du = s·dy·B
        blas.GemmBf16(true, false, o, r, m, scale, dy, o, u16, r, 0f, dB, r, DType.BF16);    // dB = s·dyᵀ·u
        blas.GemmBf16(true, false, r, n, m, 1f, du16, r, x, n, 0f, dA, n, DType.BF16);      // dA = duᵀ·x
        blas.GemmBf16(false, false, m, n, o, 1f, dy, o, w0, n, 0f, dx, n, DType.BF16);      // dx = dy·W0
        blas.GemmBf16(false, false, m, n, r, 1f, du16, r, a, n, 1f, dx, n, DType.BF16);     // dx += du·A
    }
}
