// Host memory for the CPU device and the SIMT emulator: 64-byte aligned (a cache line and an
// AVX-512 vector) so native kernels may use aligned loads on whole tensors. Freed by Dispose, or
// by the finalizer when a tensor is dropped without it; freeing never throws.
using System.Runtime.InteropServices;

namespace LoraKernels.Runtime;

internal sealed unsafe class HostBuffer : DeviceBuffer
{
    public const int Alignment = 64;
    private readonly AllocationCounter _counter;
    private void* _memory;

    public HostBuffer(long bytes, AllocationCounter counter) : base(bytes)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(bytes);
        // A zero-byte tensor still gets a distinct, valid address.
        _memory = NativeMemory.AlignedAlloc((nuint)Math.Max(bytes, 1), Alignment);
        if (_memory is null) throw new OutOfMemoryException($"Could not allocate {bytes} bytes of host memory.");
        _counter = counter;
        _counter.Add(bytes);
        if (bytes > 0) GC.AddMemoryPressure(bytes);
    }

    ~HostBuffer() => Release();

    public override ulong Address => (ulong)_memory;

    protected override void Free() => Release();

    private void Release()
    {
        void* memory = _memory;
        if (memory is null) return;
        _memory = null;
        NativeMemory.AlignedFree(memory);
        _counter.Remove(SizeInBytes);
        if (SizeInBytes > 0) GC.RemoveMemoryPressure(SizeInBytes);
    }
}
