// IVendorMath on a CUDA device: cuBLAS SGEMM and GemmEx (bf16 inputs, fp32 compute) on the device's stream. cuBLAS is column-major;
// a row-major C = op(A)·op(B) is the column-major Cᵀ = op(B)ᵀ·op(A)ᵀ, so the operands (and
// M with N) are swapped and the same transpose flags passed. The SVD is cuSOLVER's gesvd
// (CudaSolver), which is column-major too and needs rows >= columns: see Svd.
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

    public void GemmBf16(bool transA, bool transB, int m, int n, int k, float alpha,
                         ulong a, int lda, ulong b, int ldb, float beta, ulong c, int ldc, DType cType)
    {
        int cDataType = cType switch
        {
            DType.BF16 => Cublas.DataTypeBf16,
            DType.F32 => Cublas.DataTypeF32,
            _ => throw new NotSupportedException($"cublasGemmEx output of dtype {cType}."),
        };
        _device.Enter();
        Check.Cublas(Cublas.cublasGemmEx(_handle.Raw, transB ? Cublas.OpT : Cublas.OpN, transA ? Cublas.OpT : Cublas.OpN,
                                         n, m, k, &alpha, (void*)b, Cublas.DataTypeBf16, ldb, (void*)a, Cublas.DataTypeBf16, lda,
                                         &beta, (void*)c, cDataType, ldc, Cublas.ComputeF32, Cublas.GemmDefault));
    }

    /// <summary>
    /// Row-major A [m, n] is the column-major Aᵀ [n, m]. When n ≥ m, gesvd factors Aᵀ = U'·S·V'ᵀ
    /// directly, and since A = V'·S·U'ᵀ, cuSOLVER's column-major U' [n, m] is exactly the row-major
    /// Vt [m, n] and its column-major V'ᵀ [m, m] the row-major U: no transposes. When m > n, gesvd
    /// (rows ≥ columns) must see the column-major A [m, n], so A is transposed on the host first and
    /// the column-major U [m, n] and Vᵀ [n, n] transposed back after: O(m·n) host traffic beside an
    /// O(m·n²) factorisation, once per initialisation. A copy is factored, so A is not modified.
    /// </summary>
    public void Svd(int m, int n, ulong a, ulong u, ulong s, ulong vt)
    {
        long elements = (long)m * n;
        using DeviceBuffer work = _device.Allocate(elements * sizeof(float));
        _device.Enter();
        if (n >= m)
        {
            _device.Cuda(CudaDriver.cuMemcpyDtoD(work.Address, a, (nuint)(elements * sizeof(float))));
            _device.Solver.Gesvd(n, m, work.Address, n, s, vt, n, u, m);
            return;
        }
        float[] host = new float[elements];
        fixed (float* pointer = host) _device.Cuda(CudaDriver.cuMemcpyDtoH(pointer, a, (nuint)(elements * sizeof(float))));
        Upload(work.Address, Transpose(host, m, n));
        using DeviceBuffer uColumnMajor = _device.Allocate(elements * sizeof(float));
        using DeviceBuffer vtColumnMajor = _device.Allocate((long)n * n * sizeof(float));
        _device.Solver.Gesvd(m, n, work.Address, m, s, uColumnMajor.Address, m, vtColumnMajor.Address, n);
        // Column-major X [rows, cols] is the row-major Xᵀ [cols, rows]; transposing that gives row-major X.
        Upload(u, Transpose(Download(uColumnMajor.Address, elements), n, m));
        Upload(vt, Transpose(Download(vtColumnMajor.Address, (long)n * n), n, n));
    }

    /// <summary>The row-major [cols, rows] transpose of the row-major [rows, cols] <paramref name="values"/>.</summary>
    private static float[] Transpose(float[] values, int rows, int cols)
    {
        float[] transposed = new float[values.Length];
        for (int i = 0; i < rows; i++)
            for (int j = 0; j < cols; j++)
                transposed[(long)j * rows + i] = values[(long)i * cols + j];
        return transposed;
    }

    private float[] Download(ulong source, long elements)
    {
        float[] host = new float[elements];
        _device.Enter();
        fixed (float* pointer = host) _device.Cuda(CudaDriver.cuMemcpyDtoH(pointer, source, (nuint)(elements * sizeof(float))));
        return host;
    }

    private void Upload(ulong destination, float[] values)
    {
        _device.Enter();
        fixed (float* pointer = values) _device.Cuda(CudaDriver.cuMemcpyHtoD(destination, pointer, (nuint)((long)values.Length * sizeof(float))));
    }

    public void Dispose() => _handle.Dispose();
}
