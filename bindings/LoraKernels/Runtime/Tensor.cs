// A dense, row-major array of F32 or BF16 values on one device. The tensor owns its buffer:
// Dispose frees it (twice is harmless) and any later use throws ObjectDisposedException. Host
// transfers convert between float and the tensor's dtype with the kernels' bf16 rounding, and
// move data in chunks so tensors beyond 2 GiB and small host buffers both work.
using System.Buffers;
using System.Collections.ObjectModel;
using System.Runtime.InteropServices;
using LoraKernels.Runtime;

namespace LoraKernels;

public sealed class Tensor : IDisposable
{
    // Host transfers go through buffers of at most this many elements (4 MiB of fp32).
    private const int ChunkElements = 1 << 20;

    private readonly long[] _shape;
    private DeviceBuffer? _buffer;

    private Tensor(Device device, DType dtype, long[] shape, DeviceBuffer? buffer = null, MemoryKind kind = MemoryKind.Device)
    {
        ArgumentNullException.ThrowIfNull(device);
        ArgumentNullException.ThrowIfNull(shape);
        _ = DTypeInfo.SizeOf(dtype);
        _shape = (long[])shape.Clone();
        ElementCount = CountElements(_shape);
        long bytes;
        try
        {
            bytes = checked(ElementCount * DTypeInfo.SizeOf(dtype));
        }
        catch (OverflowException)
        {
            throw new ArgumentException($"A {dtype} tensor of shape [{string.Join(", ", _shape)}] does not fit in 2^63 bytes.", nameof(shape));
        }
        Device = device;
        DType = dtype;
        Shape = new ReadOnlyCollection<long>(_shape);
        if (buffer is not null && buffer.SizeInBytes != bytes)
            throw new ArgumentException($"The buffer holds {buffer.SizeInBytes} bytes; a {dtype} tensor of shape [{string.Join(", ", _shape)}] needs {bytes}.", nameof(buffer));
        _buffer = buffer ?? (kind == MemoryKind.Device ? device.Allocate(bytes) : device.Allocate(bytes, kind));
    }

    public IReadOnlyList<long> Shape { get; }
    public int Rank => _shape.Length;
    public long ElementCount { get; }
    public DType DType { get; }
    public Device Device { get; }
    public bool IsDisposed => _buffer is null;

    /// <summary>Bytes of storage: ElementCount × the dtype's size.</summary>
    public long SizeInBytes => ElementCount * DTypeInfo.SizeOf(DType);

    /// <summary>"F32[7, 33] on simt", the form error messages use.</summary>
    public string Describe() => $"{DType}[{string.Join(", ", _shape)}] on {Device}{(IsDisposed ? " (disposed)" : "")}";

    public override string ToString() => Describe();

    /// <summary>A tensor whose contents are undefined.</summary>
    public static Tensor Empty(Device device, DType dtype, params long[] shape) => new(device, dtype, shape);

    /// <summary>
    /// A tensor in memory of <paramref name="kind"/> (contents undefined; a MappedFile tensor starts as zeros).
    /// Throws <see cref="NotSupportedException"/> where the device has no such memory.
    /// </summary>
    public static Tensor Empty(Device device, DType dtype, MemoryKind kind, params long[] shape) => new(device, dtype, shape, kind: kind);

    /// <summary>Where the tensor's memory lives.</summary>
    public MemoryKind MemoryKind => Buffer.Kind;

    /// <summary>
    /// A tensor over an existing buffer of <paramref name="device"/> holding exactly its bytes (a
    /// memory-mapped view from IO/SafeTensorsFile), taking ownership of the buffer.
    /// </summary>
    internal static Tensor Wrap(Device device, DType dtype, long[] shape, DeviceBuffer buffer) => new(device, dtype, shape, buffer);

    public static Tensor Zeros(Device device, DType dtype, params long[] shape)
    {
        var tensor = new Tensor(device, dtype, shape);
        // All-zero bytes are +0.0 in fp32 and in bf16.
        device.Memset(tensor.Buffer, 0, tensor.SizeInBytes, 0);
        return tensor;
    }

    public static Tensor FromArray(Device device, float[] data, params long[] shape) => FromArray(device, data, DType.F32, shape);

    /// <summary>A tensor holding <paramref name="data"/> (row-major), rounded to bf16 when <paramref name="dtype"/> is BF16.</summary>
    public static Tensor FromArray(Device device, float[] data, DType dtype, params long[] shape)
    {
        ArgumentNullException.ThrowIfNull(data);
        ArgumentNullException.ThrowIfNull(shape);
        long count = CountElements(shape);
        if (count != data.Length)
            throw new ArgumentException($"data has {data.Length} elements but shape [{string.Join(", ", shape)}] has {count}.", nameof(data));
        var tensor = new Tensor(device, dtype, shape);
        try
        {
            tensor.CopyFrom(data);
            return tensor;
        }
        catch
        {
            tensor.Dispose();
            throw;
        }
    }

    /// <summary>The values as floats (bf16 widened exactly).</summary>
    public float[] ToArray()
    {
        ThrowIfDisposed("tensor");
        if (ElementCount > Array.MaxLength)
            throw new InvalidOperationException($"{Describe()} has more elements than a .NET array can hold; use CopyTo on a slice.");
        float[] values = new float[ElementCount];
        CopyTo(values);
        return values;
    }

    /// <summary>Element <paramref name="index"/> of the row-major flattening, as a float (one small download).</summary>
    internal float ElementAt(long index)
    {
        ThrowIfDisposed("tensor");
        ArgumentOutOfRangeException.ThrowIfNegative(index);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(index, ElementCount);
        int size = DTypeInfo.SizeOf(DType);
        Span<byte> bytes = stackalloc byte[4];
        Device.Download(Buffer, index * size, bytes[..size]);
        return DType == DType.F32 ? BitConverter.ToSingle(bytes) : BFloat16.ToSingle(BitConverter.ToUInt16(bytes));
    }

    /// <summary>Overwrites the tensor with <paramref name="values"/> (exactly ElementCount of them), converted to its dtype.</summary>
    public void CopyFrom(ReadOnlySpan<float> values)
    {
        ThrowIfDisposed("tensor");
        if (values.Length != ElementCount)
            throw new ArgumentException($"{Describe()} holds {ElementCount} elements, got {values.Length} values.", nameof(values));
        if (DType == DType.F32)
        {
            for (int done = 0; done < values.Length; done += ChunkElements)
            {
                ReadOnlySpan<float> chunk = values.Slice(done, Math.Min(ChunkElements, values.Length - done));
                Device.Upload(Buffer, (long)done * sizeof(float), MemoryMarshal.AsBytes(chunk));
            }
            return;
        }
        ushort[] staging = ArrayPool<ushort>.Shared.Rent(Math.Min(ChunkElements, values.Length));
        try
        {
            for (int done = 0; done < values.Length; done += ChunkElements)
            {
                ReadOnlySpan<float> chunk = values.Slice(done, Math.Min(ChunkElements, values.Length - done));
                Span<ushort> bits = staging.AsSpan(0, chunk.Length);
                BFloat16.FromSingle(chunk, bits);
                Device.Upload(Buffer, (long)done * sizeof(ushort), MemoryMarshal.AsBytes(bits));
            }
        }
        finally
        {
            ArrayPool<ushort>.Shared.Return(staging);
        }
    }

    /// <summary>Copies the values, as floats, into the first ElementCount elements of <paramref name="destination"/>.</summary>
    public void CopyTo(Span<float> destination)
    {
        ThrowIfDisposed("tensor");
        if (destination.Length < ElementCount)
            throw new ArgumentException($"{Describe()} holds {ElementCount} elements; the destination has room for {destination.Length}.", nameof(destination));
        int count = (int)ElementCount;
        if (DType == DType.F32)
        {
            for (int done = 0; done < count; done += ChunkElements)
            {
                Span<float> chunk = destination.Slice(done, Math.Min(ChunkElements, count - done));
                Device.Download(Buffer, (long)done * sizeof(float), MemoryMarshal.AsBytes(chunk));
            }
            return;
        }
        ushort[] staging = ArrayPool<ushort>.Shared.Rent(Math.Min(ChunkElements, Math.Max(count, 1)));
        try
        {
            for (int done = 0; done < count; done += ChunkElements)
            {
                int length = Math.Min(ChunkElements, count - done);
                Span<ushort> bits = staging.AsSpan(0, length);
                Device.Download(Buffer, (long)done * sizeof(ushort), MemoryMarshal.AsBytes(bits));
                BFloat16.ToSingle(bits, destination.Slice(done, length));
            }
        }
        finally
        {
            ArrayPool<ushort>.Shared.Return(staging);
        }
    }

    /// <summary>A copy on <paramref name="device"/> with the same dtype and shape (a plain clone when it is this tensor's device).</summary>
    public Tensor To(Device device)
    {
        ArgumentNullException.ThrowIfNull(device);
        ThrowIfDisposed("tensor");
        if (ReferenceEquals(device, Device)) return Clone();
        var copy = new Tensor(device, DType, _shape);
        try
        {
            const int chunkBytes = 4 << 20;
            byte[] staging = ArrayPool<byte>.Shared.Rent((int)Math.Min(chunkBytes, Math.Max(SizeInBytes, 1)));
            try
            {
                for (long done = 0; done < SizeInBytes; done += chunkBytes)
                {
                    Span<byte> chunk = staging.AsSpan(0, (int)Math.Min(chunkBytes, SizeInBytes - done));
                    Device.Download(Buffer, done, chunk);
                    device.Upload(copy.Buffer, done, chunk);
                }
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(staging);
            }
            return copy;
        }
        catch
        {
            copy.Dispose();
            throw;
        }
    }

    /// <summary>A copy on the same device.</summary>
    public Tensor Clone()
    {
        ThrowIfDisposed("tensor");
        var copy = new Tensor(Device, DType, _shape);
        Device.Copy(Buffer, 0, copy.Buffer, 0, SizeInBytes);
        return copy;
    }

    /// <summary>Frees the storage. Safe to call more than once.</summary>
    public void Dispose() => Interlocked.Exchange(ref _buffer, null)?.Dispose();

    internal DeviceBuffer Buffer => _buffer ?? throw new ObjectDisposedException(nameof(Tensor), $"The tensor ({Describe()}) has been disposed.");

    /// <summary>Throws ObjectDisposedException naming <paramref name="paramName"/> when the tensor has been disposed.</summary>
    internal void ThrowIfDisposed(string paramName)
    {
        if (_buffer is null)
            throw new ObjectDisposedException(paramName, $"{paramName} ({DType}[{string.Join(", ", _shape)}] on {Device}) has been disposed.");
    }

    /// <summary>The product of the dimensions (1 for rank 0); every dimension must be ≥ 0 and the product fit in a long.</summary>
    internal static long CountElements(long[] shape)
    {
        long count = 1;
        foreach (long dimension in shape)
        {
            if (dimension < 0) throw new ArgumentException($"Shape [{string.Join(", ", shape)}] has a negative dimension.", nameof(shape));
            try
            {
                count = checked(count * dimension);
            }
            catch (OverflowException)
            {
                throw new ArgumentException($"Shape [{string.Join(", ", shape)}] has more than 2^63 elements.", nameof(shape));
            }
        }
        return count;
    }
}
