// A CUDA device whose context hit a sticky error (an illegal address, a trap, a misaligned access, an
// illegal instruction, a failed launch): the driver fails every later call in that context with the
// same code, whatever the call, until the process exits. The device refuses further work with this
// exception, which tells the first failure, the kernel launched last before it, and what to do.
namespace LoraKernels;

public sealed class CudaDeviceLostException : CudaException
{
    internal CudaDeviceLostException(string device, CudaException first, string? lastKernel)
        : base(first.Library, first.Function, first.Status, first.StatusName, first.Description, Describe(device, first, lastKernel))
    {
        FirstFailure = first;
        LastKernel = lastKernel;
    }

    /// <summary>The call where the sticky error surfaced first (often a later copy or synchronisation, not the faulting kernel).</summary>
    public CudaException FirstFailure { get; }

    /// <summary>The kernel launched last before the failure surfaced, if any.</summary>
    public string? LastKernel { get; }

    private static string Describe(string device, CudaException first, string? lastKernel) =>
        $"{device} is unusable: {first.Message}. This error is sticky: the driver fails every later call in this context, " +
        "so no further work runs on this device in this process; restart the process to use the GPU again. " +
        (lastKernel is null ? "No kernel had been launched." : $"The last kernel launched before it surfaced was {lastKernel}. ") +
        "Set LORAKERNELS_SYNC_LAUNCHES=1 (or CudaDevice.SynchronizeEveryLaunch) to synchronise after every launch and name the kernel that faults.";
}
