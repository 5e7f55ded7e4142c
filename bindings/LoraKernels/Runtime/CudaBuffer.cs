// Device memory of a CUDA device, owned through a CudaMemoryHandle (freed on Dispose, or by the
// handle's finalizer if a tensor is dropped without Dispose).
namespace LoraKernels.Runtime;

internal sealed class CudaBuffer : DeviceBuffer
{
    private readonly CudaMemoryHandle _memory;

    public CudaBuffer(CudaContextHandle context, AllocationCounter counter, long bytes) : base(bytes)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(bytes);
        _memory = CudaMemoryHandle.Allocate(context, counter, bytes);
    }

    public override ulong Address => _memory.Address;

    protected override void Free() => _memory.Dispose();
}
