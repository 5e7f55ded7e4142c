// Memory operations on host buffers, shared by the CPU device and the SIMT emulator's kernel
// device (whose "device memory" is host memory). Every range is checked against the buffer, since
// a bad offset here would corrupt the process rather than fail a CUDA call.
namespace LoraKernels.Runtime;

internal static unsafe class HostMemory
{
    public static HostBuffer Allocate(long bytes, AllocationCounter counter) => new(bytes, counter);

    /// <summary>
    /// Memory of <paramref name="kind"/> for a device whose memory is host memory (<paramref name="device"/> names
    /// it in errors): MappedFile only where <paramref name="mappedFiles"/>, every other kind plain host memory.
    /// </summary>
    public static DeviceBuffer Allocate(long bytes, MemoryKind kind, AllocationCounter counter, string device, bool mappedFiles) => kind switch
    {
        MemoryKind.Device or MemoryKind.PinnedHost or MemoryKind.Managed => new HostBuffer(bytes, counter, kind),
        MemoryKind.MappedFile when mappedFiles => FileBackedBuffer.Create(bytes, counter),
        _ => throw new NotSupportedException($"The {device} device has no {kind} memory."),
    };

    public static void Upload(DeviceBuffer destination, long destinationOffsetBytes, ReadOnlySpan<byte> source)
    {
        using var leases = new BufferLeases();
        byte* target = Pointer(leases, destination, destinationOffsetBytes, source.Length, nameof(destination));
        fixed (byte* from = source) Buffer.MemoryCopy(from, target, source.Length, source.Length);
    }

    public static void Download(DeviceBuffer source, long sourceOffsetBytes, Span<byte> destination)
    {
        using var leases = new BufferLeases();
        byte* from = Pointer(leases, source, sourceOffsetBytes, destination.Length, nameof(source));
        fixed (byte* target = destination) Buffer.MemoryCopy(from, target, destination.Length, destination.Length);
    }

    public static void Copy(DeviceBuffer source, long sourceOffsetBytes, DeviceBuffer destination, long destinationOffsetBytes, long bytes)
    {
        using var leases = new BufferLeases();
        byte* from = Pointer(leases, source, sourceOffsetBytes, bytes, nameof(source));
        byte* target = Pointer(leases, destination, destinationOffsetBytes, bytes, nameof(destination));
        Buffer.MemoryCopy(from, target, bytes, bytes);
    }

    public static void Memset(DeviceBuffer destination, long offsetBytes, long bytes, byte value)
    {
        using var leases = new BufferLeases();
        byte* target = Pointer(leases, destination, offsetBytes, bytes, nameof(destination));
        for (long done = 0; done < bytes; done += int.MaxValue)
            new Span<byte>(target + done, (int)Math.Min(int.MaxValue, bytes - done)).Fill(value);
    }

    /// <summary>The host address of byte <paramref name="offset"/>, the buffer leased by <paramref name="leases"/>.</summary>
    private static byte* Pointer(BufferLeases leases, DeviceBuffer buffer, long offset, long bytes, string paramName)
    {
        if (buffer is not (HostBuffer or IO.MappedFileBuffer or FileBackedBuffer)) throw new ArgumentException($"{paramName} is not host memory ({buffer.GetType().Name}).", paramName);
        BufferRange.Check(buffer, offset, bytes, paramName);
        return (byte*)leases.Address(buffer) + offset;
    }
}

internal static class BufferRange
{
    /// <summary>Throws unless [offset, offset + bytes) lies inside <paramref name="buffer"/>.</summary>
    public static void Check(DeviceBuffer buffer, long offset, long bytes, string paramName)
    {
        if (offset < 0 || bytes < 0 || offset > buffer.SizeInBytes || bytes > buffer.SizeInBytes - offset)
            throw new ArgumentOutOfRangeException(paramName,
                $"Byte range [{offset}, {offset} + {bytes}) lies outside a buffer of {buffer.SizeInBytes} bytes.");
    }
}
