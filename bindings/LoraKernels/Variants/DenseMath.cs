// The few dense products the SVD-based inits need, on the tensors' device: lk_cpu_sgemm on the CPU,
// IVendorMath.Sgemm (cuBLAS on CUDA, the CPU GEMM on the emulator's host memory) on GPU devices.
// F32, row-major, no strides: inits run once per layer, so clarity beats fusing.
using LoraKernels.Interop;
using LoraKernels.Runtime;

namespace LoraKernels.Variants;

internal static class DenseMath
{
    /// <summary>C = alpha·op(a)·op(b), a new F32 tensor on a's device; op transposes when asked.</summary>
    public static unsafe Tensor Matmul(Tensor a, bool transA, Tensor b, bool transB, float alpha = 1f)
    {
        const string op = "DenseMath.Matmul";
        Ops.Checks.Alive(a, op, nameof(a));
        Ops.Checks.Alive(b, op, nameof(b));
        Ops.Checks.Fp32(op, nameof(a), a);
        Ops.Checks.Fp32(op, nameof(b), b);
        (long aRows, long aColumns) = Ops.Checks.Matrix(op, nameof(a), a, "rows, columns");
        (long bRows, long bColumns) = Ops.Checks.Matrix(op, nameof(b), b, "rows, columns");
        if (!ReferenceEquals(a.Device, b.Device))
            throw new ArgumentException($"{op}: a is {a.Describe()} but b is {b.Describe()}; both must be on one device.", nameof(b));
        long m = transA ? aColumns : aRows, k = transA ? aRows : aColumns;
        long kB = transB ? bColumns : bRows, n = transB ? bRows : bColumns;
        if (k != kB)
            throw new ArgumentException($"{op}: op(a) is [{m}, {k}] and op(b) is [{kB}, {n}]; the inner dimensions differ.", nameof(b));

        Tensor c = Tensor.Empty(a.Device, DType.F32, m, n);
        try
        {
            int lda = (int)aColumns, ldb = (int)bColumns, ldc = (int)n;
            using var leases = new BufferLeases();
            ulong aAddress = leases.Address(a), bAddress = leases.Address(b), cAddress = leases.Address(c);
            switch (a.Device)
            {
                case CpuDevice:
                    Check.Cpu(NativeCpu.lk_cpu_sgemm(transA ? 1 : 0, transB ? 1 : 0, m, n, k, alpha, (float*)aAddress, lda,
                                                     (float*)bAddress, ldb, 0f, (float*)cAddress, ldc));
                    break;
                case SimtDevice simt:
                    simt.KernelDevice.VendorMath.Sgemm(transA, transB, (int)m, (int)n, (int)k, alpha, aAddress, lda, bAddress, ldb,
                                                       0f, cAddress, ldc);
                    break;
                case CudaDevice cuda:
                    cuda.KernelDevice.VendorMath.Sgemm(transA, transB, (int)m, (int)n, (int)k, alpha, aAddress, lda, bAddress, ldb,
                                                       0f, cAddress, ldc);
                    break;
                default:
                    throw new NotSupportedException($"{op}: no GEMM on {a.Device}.");
            }
            return c;
        }
        catch
        {
            c.Dispose();
            throw;
        }
    }

    /// <summary>An orthonormal basis [m, k] of the columns of y [m, k] (m ≥ k): the U of its thin SVD.</summary>
    public static Tensor OrthonormalColumns(Tensor y)
    {
        var (u, s, vt) = Ops.Linalg.Svd(y);
        s.Dispose();
        vt.Dispose();
        return u;
    }
}
