// The one way a native call reaches tensor memory: a scope that takes a lease on every buffer whose
// address it hands out and releases them all on Dispose, after the call has returned. Holding the
// buffer objects keeps them reachable (so no finalizer can free them mid-call), and each lease is a
// reference (so a Dispose on another thread defers the free instead of pulling the memory away).
// KernelArguments (GPU launches) and the CPU backend's staging both lease through one of these.
namespace LoraKernels.Runtime;

internal sealed class BufferLeases : IDisposable
{
    private readonly List<DeviceBuffer> _leased = new(8);

    /// <summary>The address of <paramref name="tensor"/>'s element 0, leased until Dispose; 0 for null.</summary>
    /// <exception cref="ObjectDisposedException">The tensor was disposed (possibly by another thread).</exception>
    public ulong Address(Tensor? tensor) => tensor is null ? 0 : Address(tensor.Buffer, tensor);

    /// <summary>The address of <paramref name="buffer"/>, leased until Dispose; 0 for null.</summary>
    public ulong Address(DeviceBuffer? buffer) => buffer is null ? 0 : Address(buffer, owner: null);

    /// <summary>Takes a lease on <paramref name="buffer"/> (no address needed, e.g. a buffer a vendor call reads by handle).</summary>
    public DeviceBuffer Hold(DeviceBuffer buffer)
    {
        Address(buffer, owner: null);
        return buffer;
    }

    private ulong Address(DeviceBuffer buffer, Tensor? owner)
    {
        if (!buffer.TryAddReference())
        {
            string what = owner is null ? $"A device buffer of {buffer.SizeInBytes} bytes" : $"The tensor ({owner.Describe()})";
            throw new ObjectDisposedException(owner is null ? nameof(DeviceBuffer) : nameof(Tensor),
                                              $"{what} was disposed before or while an operation used it.");
        }
        _leased.Add(buffer);
        return buffer.Address;
    }

    public void Dispose()
    {
        foreach (DeviceBuffer buffer in _leased) buffer.Release();
        _leased.Clear();
    }
}
