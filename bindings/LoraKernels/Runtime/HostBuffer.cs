// Host memory for the CPU device and the SIMT emulator (for them every kind but MappedFile is this
// memory, marked with the kind it was asked for): 64-byte aligned (a cache line and an
// AVX-512 vector) so native kernels may use aligned loads on whole tensors. Freed when the last
// reference goes (DeviceBuffer), or by the finalizer when a tensor is dropped without Dispose: the
// finalizer can only run once nothing, leases included, refers to the buffer. Freeing never throws.
using System.Runtime.InteropServices;

namespace LoraKernels.Runtime;

internal sealed unsafe class HostBuffer : DeviceBuffer
{
    public const int Alignment = 64;
    private readonly AllocationCounter _counter;
    private void* _memory;

    public HostBuffer(long bytes, AllocationCounter counter, MemoryKind kind = MemoryKind.Device) : base(bytes, kind)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(bytes);
        // A zero-byte tensor still gets a distinct, valid address.
        try
        {
            _memory = NativeMemory.AlignedAlloc((nuint)Math.Max(bytes, 1), Alignment);
        }
        catch (OutOfMemoryException)
        {
            _memory = null;
        }
        if (_memory is null)
        {
            GC.SuppressFinalize(this);
            throw new OutOfMemoryException($"LoraKernels could not allocate {bytes} bytes ({bytes / (1024.0 * 1024.0):F1} MiB) of host memory.");
        }
        _counter = counter;
        _counter.Add(bytes);
        if (bytes > 0) GC.AddMemoryPressure(bytes);
    }

    ~HostBuffer() => FreeMemory();

    public override ulong Address => (ulong)_memory;

    protected override void Free() => FreeMemory();

    private void FreeMemory()
    {
        void* memory = _memory;
        if (memory is null) return;
        _memory = null;
        NativeMemory.AlignedFree(memory);
        _counter.Remove(SizeInBytes);
        if (SizeInBytes > 0) GC.RemoveMemoryPressure(SizeInBytes);
    }
}
