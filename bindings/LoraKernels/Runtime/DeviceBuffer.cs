namespace LoraKernels.Runtime;

/// <summary>
/// A block of memory owned by one device: host memory for the CPU and the emulator, device
/// memory for CUDA. Disposing frees it (once); the owning device is kept alive by the buffer.
/// </summary>
public abstract class DeviceBuffer : IDisposable
{
    protected DeviceBuffer(long sizeInBytes) => SizeInBytes = sizeInBytes;

    public long SizeInBytes { get; }

    /// <summary>The address kernels see (a host address on the CPU and under the emulator).</summary>
    public abstract ulong Address { get; }

    public bool IsDisposed { get; private set; }

    public void Dispose()
    {
        if (IsDisposed) return;
        IsDisposed = true;
        Free();
        GC.SuppressFinalize(this);
    }

    /// <summary>Releases the memory; called at most once, never from a finalizer that could throw.</summary>
    protected abstract void Free();
}
