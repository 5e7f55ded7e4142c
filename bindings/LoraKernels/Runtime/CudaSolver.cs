// cuSOLVER's dense SVD on a CUDA device's stream, for initialisations that factor a weight
// matrix (PiSSA, LoftQ; REFERENCE.md section 4). Column-major, as cuSOLVER: a row-major [rows, cols]
// matrix is the column-major [cols, rows] matrix Aᵀ, whose SVD gives A's with U and Vᵀ swapped.
using LoraKernels.Interop;

namespace LoraKernels.Runtime;

internal sealed unsafe class CudaSolver : IDisposable
{
    private readonly CudaKernelDevice _device;
    private readonly CusolverHandle _handle;

    public CudaSolver(CudaKernelDevice device)
    {
        _device = device;
        device.Enter();
        _handle = CusolverHandle.Create(device.Context, device.Stream);
    }

    /// <summary>
    /// Thin SVD A = U·diag(S)·Vᵀ of the column-major A [m, n] with m ≥ n (cusolverDnSgesvd,
    /// jobu = jobvt = 'S'): S [n] descending, U [m, n] (leading dimension <paramref name="ldu"/>),
    /// Vᵀ [n, n] (<paramref name="ldvt"/>). A is overwritten. All pointers are device addresses;
    /// returns after the factorisation has finished (it reads cuSOLVER's convergence flag).
    /// </summary>
    public void Gesvd(int m, int n, ulong a, int lda, ulong s, ulong u, int ldu, ulong vt, int ldvt)
    {
        if (n < 1 || m < n) throw new ArgumentException($"cusolverDnSgesvd needs m >= n >= 1, got m = {m}, n = {n}.", nameof(m));
        if (lda < m || ldu < m || ldvt < n)
            throw new ArgumentException($"Leading dimensions too small: lda = {lda}, ldu = {ldu} (need >= {m}), ldvt = {ldvt} (need >= {n}).", nameof(lda));
        _device.Enter();
        int workElements;
        Check.Cusolver(Cusolver.cusolverDnSgesvd_bufferSize(_handle.Raw, m, n, &workElements));
        using DeviceBuffer work = _device.Allocate((long)workElements * sizeof(float));
        using DeviceBuffer info = _device.Allocate(sizeof(int));
        Check.Cusolver(Cusolver.cusolverDnSgesvd(_handle.Raw, (byte)'S', (byte)'S', m, n, (float*)a, lda, (float*)s,
                                                 (float*)u, ldu, (float*)vt, ldvt, (float*)work.Address, workElements,
                                                 null, (int*)info.Address));
        int status = 0;
        _device.Download(info, 0, new Span<byte>(&status, sizeof(int)));
        if (status < 0) throw new LoraKernelsException($"cusolverDnSgesvd rejected parameter {-status}.");
        if (status > 0) throw new LoraKernelsException($"cusolverDnSgesvd did not converge: {status} superdiagonals remain.");
    }

    public void Dispose() => _handle.Dispose();
}
