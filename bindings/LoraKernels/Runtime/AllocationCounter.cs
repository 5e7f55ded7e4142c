// Live allocations and bytes of one device, updated by every buffer it hands out and frees
// (from Dispose or a finalizer), so tests can prove that a sequence of ops leaks nothing.
namespace LoraKernels.Runtime;

internal sealed class AllocationCounter
{
    private long _allocations;
    private long _bytes;

    public long Allocations => Interlocked.Read(ref _allocations);
    public long Bytes => Interlocked.Read(ref _bytes);

    public void Add(long bytes)
    {
        Interlocked.Increment(ref _allocations);
        Interlocked.Add(ref _bytes, bytes);
    }

    public void Remove(long bytes)
    {
        Interlocked.Decrement(ref _allocations);
        Interlocked.Add(ref _bytes, -bytes);
    }
}
