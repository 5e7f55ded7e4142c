// Dense factorizations for the SVD-based initialisations (LoftQ, PiSSA; REFERENCE.md §4): LAPACK
// through lk_cpu_svd on the CPU, cuSOLVER on CUDA, and the CPU's LAPACK on the emulator's host
// memory (IVendorMath.Svd), so every device returns the same thin, row-major factors.
using LoraKernels.Interop;
using LoraKernels.Runtime;

namespace LoraKernels.Ops;

public static class Linalg
{
    /// <summary>
    /// Thin SVD of the F32 matrix <paramref name="a"/> [m, n], k = min(m, n): U [m, k], S [k]
    /// (descending, non-negative), Vt [k, n] with a = U·diag(S)·Vt, all F32 on a's device; a is
    /// not modified. Singular vectors are unique only up to sign (REFERENCE.md §10.3).
    /// </summary>
    public static unsafe (Tensor U, Tensor S, Tensor Vt) Svd(Tensor a)
    {
        const string op = "Linalg.Svd";
        Checks.Alive(a, op, nameof(a));
        (long m, long n) = Checks.Matrix(op, nameof(a), a, "m, n");
        Checks.Fp32(op, nameof(a), a);
        Checks.AllFinite(op, nameof(a), a, "an SVD of a matrix holding NaN or Inf has no meaning (LAPACK rejects NaN and spins on Inf).");
        long k = Math.Min(m, n);
        Device device = a.Device;

        Tensor? u = null, s = null, vt = null;
        try
        {
            u = Tensor.Empty(device, DType.F32, m, k);
            s = Tensor.Empty(device, DType.F32, k);
            vt = Tensor.Empty(device, DType.F32, k, n);
            using var leases = new BufferLeases();
            ulong aAddress = leases.Address(a), uAddress = leases.Address(u), sAddress = leases.Address(s), vtAddress = leases.Address(vt);
            switch (device)
            {
                case CpuDevice:
                    Check.Cpu(NativeCpu.lk_cpu_svd(m, n, (float*)aAddress, (float*)uAddress, (float*)sAddress, (float*)vtAddress));
                    break;
                case SimtDevice simt:
                    simt.KernelDevice.VendorMath.Svd((int)m, (int)n, aAddress, uAddress, sAddress, vtAddress);
                    break;
                case CudaDevice cuda:
                    cuda.KernelDevice.VendorMath.Svd((int)m, (int)n, aAddress, uAddress, sAddress, vtAddress);
                    break;
                default:
                    throw new NotSupportedException($"{op}: no SVD on {device}.");
            }
            return (u, s, vt);
        }
        catch
        {
            Checks.DisposeAll(u, s, vt);
            throw;
        }
    }
}
