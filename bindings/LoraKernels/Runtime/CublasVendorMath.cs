// IVendorMath on a CUDA device: cuBLAS SGEMM on the device's stream. cuBLAS is column-major;
// a row-major C = op(A)·op(B) is the column-major Cᵀ = op(B)ᵀ·op(A)ᵀ, so the operands (and
// M with N) are swapped and the same transpose flags passed.
using LoraKernels.Interop;

namespace LoraKernels.Runtime;

internal sealed unsafe class CublasVendorMath : IVendorMath, IDisposable
{
    private readonly CudaKernelDevice _device;
    private readonly CublasHandle _handle;

    public CublasVendorMath(CudaKernelDevice device)
    {
        _device = device;
        device.Enter();
        _handle = CublasHandle.Create(device.Context, device.Stream);
    }

    public void Sgemm(bool transA, bool transB, int m, int n, int k, float alpha,
                      ulong a, int lda, ulong b, int ldb, float beta, ulong c, int ldc)
    {
        _device.Enter();
        Check.Cublas(Cublas.cublasSgemm(_handle.Raw, transB ? Cublas.OpT : Cublas.OpN, transA ? Cublas.OpT : Cublas.OpN,
                                        n, m, k, &alpha, (float*)b, ldb, (float*)a, lda, &beta, (float*)c, ldc));
    }

    public void Dispose() => _handle.Dispose();
}
