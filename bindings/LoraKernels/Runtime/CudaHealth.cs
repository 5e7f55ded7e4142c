// Whether a CUDA device can still run work. Some driver errors are sticky: after an illegal
// address, a device-side trap or assert, a misaligned access, an illegal instruction or a failed
// launch, every later call in the context returns the same code (CUDA programming guide, "Error
// Checking"). Without a record of that, the process-wide device singleton would fail each later
// call obscurely, blaming a copy or a launch that did nothing wrong. CudaKernelDevice passes every
// driver status through here: the first sticky one marks the device lost, and every later entry
// point throws CudaDeviceLostException naming that first failure and the kernel launched last.
namespace LoraKernels.Runtime;

internal sealed class CudaHealth(string device)
{
    // CUresult codes after which the context is unusable (cuda.h: "the process must be terminated
    // and relaunched" or "the context cannot be used").
    private static readonly HashSet<int> StickyStatuses =
    [
        214,  // CUDA_ERROR_ECC_UNCORRECTABLE
        700,  // CUDA_ERROR_ILLEGAL_ADDRESS
        702,  // CUDA_ERROR_LAUNCH_TIMEOUT
        710,  // CUDA_ERROR_ASSERT
        714,  // CUDA_ERROR_HARDWARE_STACK_ERROR
        715,  // CUDA_ERROR_ILLEGAL_INSTRUCTION
        716,  // CUDA_ERROR_MISALIGNED_ADDRESS
        717,  // CUDA_ERROR_INVALID_ADDRESS_SPACE
        718,  // CUDA_ERROR_INVALID_PC
        719,  // CUDA_ERROR_LAUNCH_FAILED
    ];

    private CudaDeviceLostException? _lost;
    private string? _lastKernel;

    public static bool IsSticky(int status) => StickyStatuses.Contains(status);

    /// <summary>Null while the device is usable; else why not.</summary>
    public CudaDeviceLostException? Lost => Volatile.Read(ref _lost);

    /// <summary>Records the kernel just launched, for the message of a sticky error that surfaces later.</summary>
    public void Launched(string kernel) => Volatile.Write(ref _lastKernel, kernel);

    /// <summary>Throws the recorded failure when the device is lost; called before every driver call.</summary>
    public void ThrowIfLost()
    {
        if (Lost is { } lost) throw lost;
    }

    /// <summary>
    /// The exception to throw for a failed call: <paramref name="error"/> itself, or, when its status
    /// is sticky, a <see cref="CudaDeviceLostException"/> that the device keeps and throws from then on.
    /// </summary>
    public CudaException Failed(CudaException error)
    {
        if (!IsSticky(error.Status)) return error;
        var lost = new CudaDeviceLostException(device, error, Volatile.Read(ref _lastKernel));
        return Interlocked.CompareExchange(ref _lost, lost, null) ?? lost;
    }
}
