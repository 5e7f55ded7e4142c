// The transfer queue of a device whose kernels run to completion when launched (the SIMT
// emulator): each copy is done when issued, so marks and waits have nothing to order.
namespace LoraKernels.Runtime;

internal sealed class HostTransferQueue : ITransferQueue
{
    public void Copy(DeviceBuffer source, long sourceOffsetBytes, DeviceBuffer destination, long destinationOffsetBytes, long bytes) =>
        HostMemory.Copy(source, sourceOffsetBytes, destination, destinationOffsetBytes, bytes);

    public TransferMark Mark() => TransferMark.Done;

    public void LaunchesWaitFor(TransferMark mark) => ArgumentNullException.ThrowIfNull(mark);

    public void WaitForLaunches() { }

    public void Synchronize() { }

    public void Dispose() { }
}
