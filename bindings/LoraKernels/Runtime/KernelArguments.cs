using System.Runtime.InteropServices;

namespace LoraKernels.Runtime;

/// <summary>
/// The parameter list of one kernel launch, packed as <c>cuLaunchKernel</c> wants it: a block
/// of 8-byte slots holding the values and an array of pointers to those slots. The same
/// <c>void**</c> goes to the CUDA driver and to the SIMT emulator. Add values in the order of
/// the kernel's parameters; each slot is 8 bytes wide and holds the value at its start, which
/// is what the ABI reads for 4-byte and 8-byte parameters alike. Buffers passed as pointers are
/// leased (<see cref="BufferLeases"/>) until the arguments are disposed, after the launch: a tensor
/// collected or disposed meanwhile keeps its memory until then.
/// </summary>
public sealed unsafe class KernelArguments : IDisposable
{
    private const int MaxArguments = 32;
    private readonly ulong* _slots;
    private readonly void** _pointers;
    private readonly BufferLeases _leases = new();
    private int _count;
    private bool _disposed;

    public KernelArguments()
    {
        _slots = (ulong*)NativeMemory.AllocZeroed(MaxArguments, sizeof(ulong));
        _pointers = (void**)NativeMemory.AllocZeroed(MaxArguments, (nuint)sizeof(void*));
    }

    public int Count => _count;

    private ulong* Next()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_count == MaxArguments)
            throw new InvalidOperationException($"A kernel launch takes at most {MaxArguments} arguments.");
        ulong* slot = _slots + _count;
        _pointers[_count] = slot;
        _count++;
        return slot;
    }

    /// <summary>The address of <paramref name="tensor"/>'s element 0, leased until Dispose; a null pointer for null.</summary>
    internal KernelArguments Pointer(Tensor? tensor) { *Next() = _leases.Address(tensor); return this; }

    /// <summary>The address of element <paramref name="elementOffset"/> of <paramref name="tensor"/> (a column slice of its rows), leased until Dispose.</summary>
    internal KernelArguments Pointer(Tensor tensor, long elementOffset)
    {
        if ((ulong)elementOffset > (ulong)tensor.ElementCount)
            throw new ArgumentOutOfRangeException(nameof(elementOffset), elementOffset, $"The offset lies outside {tensor.Describe()}.");
        *Next() = _leases.Address(tensor) + (ulong)(elementOffset * DTypeInfo.SizeOf(tensor.DType));
        return this;
    }

    /// <summary>The address of <paramref name="buffer"/>, leased until Dispose; a null pointer for null.</summary>
    public KernelArguments Pointer(DeviceBuffer? buffer) { *Next() = _leases.Address(buffer); return this; }

    /// <summary>A null pointer (an absent optional input).</summary>
    public KernelArguments NullPointer() { *Next() = 0; return this; }

    public KernelArguments Int(int value) { *(int*)Next() = value; return this; }
    public KernelArguments Long(long value) { *(long*)Next() = value; return this; }
    public KernelArguments ULong(ulong value) { *Next() = value; return this; }
    public KernelArguments Float(float value) { *(float*)Next() = value; return this; }

    /// <summary>The <c>void**</c> array for the launch; valid until this object is disposed.</summary>
    public IntPtr ArgumentArray
    {
        get { ObjectDisposedException.ThrowIf(_disposed, this); return (IntPtr)_pointers; }
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _leases.Dispose();
        NativeMemory.Free(_slots);
        NativeMemory.Free(_pointers);
    }
}
