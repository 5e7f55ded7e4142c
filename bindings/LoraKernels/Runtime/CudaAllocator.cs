// Where a CUDA device's buffers come from. cuMemFree synchronises the whole device, and the GPU
// backend frees temporaries in every call (LoRA's du, the reductions' partials, DoRA's P, G and H),
// so each call stalled the host until the GPU drained. Where the driver offers stream-ordered
// allocation (CUDA 11.2+, memory pools supported), buffers come from the device's default memory
// pool on the device's one stream instead: cuMemFreeAsync queues the free after every launch
// already queued (the only work that may still read the buffer: leases keep a buffer alive until
// its launches are queued), nothing synchronises, and the pool keeps freed memory cached (release
// threshold unlimited) so the next temporary of that size reuses it without a driver allocation.
// An allocation that finds the device full trims the pool's cached memory and tries once more.
// Elsewhere the plain cuMemAlloc / cuMemFree.
using LoraKernels.Interop;

namespace LoraKernels.Runtime;

internal sealed unsafe class CudaAllocator
{
    private const int FirstStreamOrderedDriver = 11020;  // cuDriverGetVersion of CUDA 11.2
    private readonly CudaStream? _stream;
    private readonly IntPtr _pool;

    private CudaAllocator(CudaStream? stream, IntPtr pool)
    {
        _stream = stream;
        _pool = pool;
    }

    /// <summary>True when buffers come from the stream-ordered pool; false for cuMemAlloc / cuMemFree.</summary>
    public bool StreamOrdered => _stream is not null;

    /// <summary>The device's allocator: the stream-ordered pool when the driver has one (the context must be current).</summary>
    public static CudaAllocator Create(int device, CudaStream stream, int driverVersion)
    {
        if (driverVersion < FirstStreamOrderedDriver) return new CudaAllocator(null, IntPtr.Zero);
        int supported;
        if (CudaDriver.cuDeviceGetAttribute(&supported, CudaDriver.AttributeMemoryPoolsSupported, device) != CudaDriver.Success || supported == 0)
            return new CudaAllocator(null, IntPtr.Zero);
        IntPtr pool;
        Check.Cuda(CudaDriver.cuDeviceGetDefaultMemPool(&pool, device));
        ulong keepEverything = ulong.MaxValue;
        Check.Cuda(CudaDriver.cuMemPoolSetAttribute(pool, CudaDriver.MemPoolAttributeReleaseThreshold, &keepEverything));
        return new CudaAllocator(stream, pool);
    }

    /// <summary>Allocates <paramref name="bytes"/> (at least 1); the caller holds the context current.</summary>
    public int Allocate(ulong* pointer, nuint bytes)
    {
        if (_stream is null) return CudaDriver.cuMemAlloc(pointer, bytes);
        IntPtr stream = _stream.DangerousGetHandle();
        int result = CudaDriver.cuMemAllocAsync(pointer, bytes, stream);
        if (result != CudaDriver.ErrorOutOfMemory) return result;
        // Memory the pool caches counts as used; give it back (after the frees queued so far) and retry.
        result = CudaDriver.cuStreamSynchronize(stream);
        if (result != CudaDriver.Success) return result;
        result = CudaDriver.cuMemPoolTrimTo(_pool, 0);
        return result != CudaDriver.Success ? result : CudaDriver.cuMemAllocAsync(pointer, bytes, stream);
    }

    /// <summary>Frees a pointer from <see cref="Allocate"/>; never throws (finalizers call it). The context must be current.</summary>
    public int Free(ulong pointer) =>
        _stream is null ? CudaDriver.cuMemFree(pointer) : CudaDriver.cuMemFreeAsync(pointer, _stream.DangerousGetHandle());

    /// <summary>Keeps the stream alive while a buffer it frees on exists.</summary>
    public void AddStreamReference(ref bool added) => _stream?.DangerousAddRef(ref added);

    public void ReleaseStreamReference()
    {
        _stream?.DangerousRelease();
    }
}
