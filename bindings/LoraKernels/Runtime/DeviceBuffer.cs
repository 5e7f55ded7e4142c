// Device memory owned by one buffer and lent to native calls. The buffer is reference-counted as a
// SafeHandle is: its owner holds one reference until Dispose, and every native call that reads or
// writes it holds another through a BufferLeases scope for the call's duration. The memory is freed
// when the last reference goes, so neither a Dispose on another thread nor a collection of the
// owning tensor (whose last managed use may precede the native call's end in optimised code) can
// free memory a kernel is using. A lease taken after Dispose fails with ObjectDisposedException.
namespace LoraKernels.Runtime;

/// <summary>
/// A block of memory owned by one device: host memory for the CPU and the emulator, device
/// memory for CUDA. Disposing gives up the owner's reference; the memory is freed once no
/// native call holds it any more. The owning device is kept alive by the buffer.
/// </summary>
public abstract class DeviceBuffer : IDisposable
{
    // 1 for the owner until Dispose, plus one per lease; the memory goes when it reaches 0.
    private int _references = 1;
    private int _disposed;

    protected DeviceBuffer(long sizeInBytes, MemoryKind kind = MemoryKind.Device)
    {
        SizeInBytes = sizeInBytes;
        Kind = kind;
    }

    public long SizeInBytes { get; }

    /// <summary>Where the memory lives (the kind it was allocated as).</summary>
    public MemoryKind Kind { get; }

    /// <summary>
    /// The address kernels see (a host address on the CPU and under the emulator). Valid only while
    /// the caller holds a lease (<see cref="BufferLeases"/>) or owns the buffer and keeps it alive.
    /// </summary>
    public abstract ulong Address { get; }

    /// <summary>True once the owner has disposed the buffer (its memory may still serve a call in flight).</summary>
    public bool IsDisposed => Volatile.Read(ref _disposed) != 0;

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        Release();
    }

    /// <summary>Adds a reference for a native call, or returns false when the buffer is disposed.</summary>
    internal bool TryAddReference()
    {
        while (true)
        {
            int references = Volatile.Read(ref _references);
            if (references == 0 || IsDisposed) return false;
            if (Interlocked.CompareExchange(ref _references, references + 1, references) == references) return true;
        }
    }

    /// <summary>Drops a reference taken by <see cref="TryAddReference"/> (or the owner's); the last one frees the memory.</summary>
    internal void Release()
    {
        int references = Interlocked.Decrement(ref _references);
        if (references > 0) return;
        if (references < 0) throw new InvalidOperationException("DeviceBuffer: a reference was released twice.");
        Free();
        GC.SuppressFinalize(this);
    }

    /// <summary>Releases the memory; called exactly once, when the last reference goes. Never throws.</summary>
    protected abstract void Free();
}
