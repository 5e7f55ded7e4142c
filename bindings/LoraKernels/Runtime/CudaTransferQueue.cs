// ITransferQueue on a CUDA device: copies on a second, non-blocking stream (so they neither wait for
// nor hold up the legacy stream), ordered against the device's kernel stream by events: a mark is an
// event recorded on the copy stream, which the kernel stream waits for; WaitForLaunches records one
// on the kernel stream for the copy stream. cuMemcpyAsync between pinned host and device memory runs
// on a copy engine while kernels run. Not exercised in CI (no GPU); the emulator runs the same
// pipeline through HostTransferQueue.
using LoraKernels.Interop;

namespace LoraKernels.Runtime;

internal sealed class CudaTransferQueue : ITransferQueue
{
    private readonly CudaKernelDevice _device;
    private readonly CudaStream _copies;
    private BufferLeases _leases = new();

    public CudaTransferQueue(CudaKernelDevice device)
    {
        _device = device;
        _copies = CudaStream.Create(device.Context, CudaDriver.StreamNonBlocking);
    }

    public void Copy(DeviceBuffer source, long sourceOffsetBytes, DeviceBuffer destination, long destinationOffsetBytes, long bytes)
    {
        BufferRange.Check(source, sourceOffsetBytes, bytes, nameof(source));
        BufferRange.Check(destination, destinationOffsetBytes, bytes, nameof(destination));
        ulong from = _leases.Address(source) + (ulong)sourceOffsetBytes;
        ulong target = _leases.Address(destination) + (ulong)destinationOffsetBytes;
        if (bytes == 0) return;
        _device.Enter();
        Check.Cuda(CudaDriver.cuMemcpyAsync(target, from, (nuint)bytes, _copies.DangerousGetHandle()));
    }

    public TransferMark Mark()
    {
        _device.Enter();
        var mark = new EventMark(CudaEvent.Create(_device.Context));
        Check.Cuda(CudaDriver.cuEventRecord(mark.Event.Raw, _copies.DangerousGetHandle()));
        return mark;
    }

    public void LaunchesWaitFor(TransferMark mark)
    {
        if (mark is not EventMark recorded) throw new ArgumentException("The mark is not one of this CUDA transfer queue's.", nameof(mark));
        _device.Enter();
        Check.Cuda(CudaDriver.cuStreamWaitEvent(_device.Stream.DangerousGetHandle(), recorded.Event.Raw, 0));
    }

    public void WaitForLaunches()
    {
        _device.Enter();
        using CudaEvent launched = CudaEvent.Create(_device.Context);
        Check.Cuda(CudaDriver.cuEventRecord(launched.Raw, _device.Stream.DangerousGetHandle()));
        Check.Cuda(CudaDriver.cuStreamWaitEvent(_copies.DangerousGetHandle(), launched.Raw, 0));
    }

    public void Synchronize()
    {
        _device.Enter();
        Check.Cuda(CudaDriver.cuStreamSynchronize(_copies.DangerousGetHandle()));
        _leases.Dispose();
        _leases = new BufferLeases();
    }

    /// <summary>Waits for the queued copies (their buffers stay leased until then) and destroys the stream.</summary>
    public void Dispose()
    {
        if (_copies.IsClosed) return;
        try
        {
            _device.Enter();
            CudaDriver.cuStreamSynchronize(_copies.DangerousGetHandle());
        }
        finally
        {
            _leases.Dispose();
            _copies.Dispose();
        }
    }

    // An event may be destroyed while work waiting on it is still queued: the driver releases it when done.
    private sealed class EventMark(CudaEvent evt) : TransferMark
    {
        public CudaEvent Event { get; } = evt;

        public override void Dispose() => Event.Dispose();
    }
}
