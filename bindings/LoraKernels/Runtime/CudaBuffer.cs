// Memory of a CUDA device, owned through a CudaMemoryHandle (freed on Dispose, or by the handle's
// finalizer if a tensor is dropped without Dispose): device memory from the device's CudaAllocator,
// managed memory, or pinned host memory, whose address the host and, through unified addressing,
// the device both use.
namespace LoraKernels.Runtime;

internal sealed class CudaBuffer : DeviceBuffer
{
    private readonly CudaMemoryHandle _memory;

    public CudaBuffer(CudaContextHandle context, AllocationCounter counter, CudaAllocator allocator, long bytes,
                      MemoryKind kind = MemoryKind.Device)
        : base(bytes, kind)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(bytes);
        _memory = CudaMemoryHandle.Allocate(context, counter, allocator, bytes, kind);
    }

    public override ulong Address => _memory.Address;

    protected override void Free() => _memory.Dispose();
}
