// Copies that run beside a kernel device's launches, for state that lives outside device memory
// (a paged optimizer's pinned host state moving through the GPU in chunks): the copy of the next
// chunk overlaps the kernels of this one. Marks order the two queues both ways without waiting on
// the host. On CUDA a second stream and events (CudaTransferQueue); under the emulator every copy
// and launch completes when it is issued, so the queue is plain copies (HostTransferQueue) and the
// same pipeline runs, in order, on every CI machine.
namespace LoraKernels.Runtime;

internal interface ITransferQueue : IDisposable
{
    /// <summary>
    /// Queues a copy of <paramref name="bytes"/>; either side may be device memory or pinned host memory of
    /// the queue's device. Both buffers are leased until <see cref="Synchronize"/> or Dispose.
    /// </summary>
    void Copy(DeviceBuffer source, long sourceOffsetBytes, DeviceBuffer destination, long destinationOffsetBytes, long bytes);

    /// <summary>A point on this queue: the copies queued so far.</summary>
    TransferMark Mark();

    /// <summary>Kernels launched on the device from now on wait until the copies before <paramref name="mark"/> are done.</summary>
    void LaunchesWaitFor(TransferMark mark);

    /// <summary>Copies queued from now on wait until every kernel launched on the device so far is done.</summary>
    void WaitForLaunches();

    /// <summary>Waits on the host until every queued copy is done, then releases the buffers' leases.</summary>
    void Synchronize();
}

/// <summary>A point on a transfer queue (a CUDA event; nothing under the emulator). Dispose once waited for.</summary>
internal class TransferMark : IDisposable
{
    /// <summary>The mark of a queue whose copies are done when issued.</summary>
    public static readonly TransferMark Done = new();

    public virtual void Dispose() { }
}
