// Writes a safetensors file the way safetensors' own writer does (REFERENCE.md §9.3): tensors laid
// out contiguously from offset 0, sorted by dtype (largest alignment first) and then by name, so
// every tensor of a file holding only whole-byte dtypes stays aligned to its element size; the
// header JSON with "__metadata__" first, padded with spaces to a multiple of 8 bytes so the data
// section starts 8-byte aligned. Tensor data may be given as bytes, floats, a Tensor, or a
// callback that streams exactly the tensor's bytes when its turn comes (the merge writes each
// merged weight that way, so a whole model never sits in memory). The header is checked by the
// reader's own validation before it is written, and the file is written atomically (AtomicFile).
using System.Buffers;
using System.Text.Json;

namespace LoraKernels.IO;

public sealed class SafeTensorsWriter
{
    private const int ChunkBytes = 4 << 20;

    private readonly Dictionary<string, Entry> _entries = new(StringComparer.Ordinal);
    private readonly Dictionary<string, string> _metadata = new(StringComparer.Ordinal);

    private sealed record Entry(string Name, SafeTensorDType DType, long[] Shape, long ByteLength, Action<Stream> Write);

    public SafeTensorsWriter(IReadOnlyDictionary<string, string>? metadata = null)
    {
        if (metadata is not null)
            foreach (var (key, value) in metadata) SetMetadata(key, value);
    }

    /// <summary>The "__metadata__" entries written (string → string).</summary>
    public IReadOnlyDictionary<string, string> Metadata => _metadata;

    /// <summary>Names added so far.</summary>
    public IReadOnlyCollection<string> Names => _entries.Keys;

    public void SetMetadata(string key, string value)
    {
        ArgumentNullException.ThrowIfNull(key);
        ArgumentNullException.ThrowIfNull(value);
        _metadata[key] = value;
    }

    /// <summary>A tensor of <paramref name="dtype"/> and <paramref name="shape"/> whose little-endian bytes are <paramref name="data"/>.</summary>
    public void Add(string name, SafeTensorDType dtype, long[] shape, ReadOnlyMemory<byte> data)
    {
        long byteLength = CheckEntry(name, dtype, shape);
        if (data.Length != byteLength)
            throw new ArgumentException($"Tensor \"{name}\" is {dtype}[{string.Join(", ", shape)}] = {byteLength} bytes, but {data.Length} bytes were given.", nameof(data));
        _entries.Add(name, new Entry(name, dtype, (long[])shape.Clone(), byteLength, stream => stream.Write(data.Span)));
    }

    /// <summary>
    /// A tensor whose bytes <paramref name="writeData"/> writes to the stream it is given when the file is
    /// written; it must write exactly dtype size × elements bytes (else the write fails and nothing is replaced).
    /// </summary>
    public void Add(string name, SafeTensorDType dtype, long[] shape, Action<Stream> writeData)
    {
        ArgumentNullException.ThrowIfNull(writeData);
        long byteLength = CheckEntry(name, dtype, shape);
        _entries.Add(name, new Entry(name, dtype, (long[])shape.Clone(), byteLength, writeData));
    }

    /// <summary>Float values stored as <paramref name="dtype"/> (F32, F16 or BF16; rounded to nearest even).</summary>
    public void AddSingles(string name, float[] values, long[] shape, SafeTensorDType dtype = SafeTensorDType.F32)
    {
        ArgumentNullException.ThrowIfNull(values);
        if (dtype is not (SafeTensorDType.F32 or SafeTensorDType.F16 or SafeTensorDType.BF16))
            throw new ArgumentException($"Tensor \"{name}\": floats are written as F32, F16 or BF16, not {dtype}.", nameof(dtype));
        long byteLength = CheckEntry(name, dtype, shape);
        if (byteLength / (dtype.BitSize() / 8) != values.Length)
            throw new ArgumentException($"Tensor \"{name}\" has shape [{string.Join(", ", shape)}] but {values.Length} values were given.", nameof(values));
        float[] copy = (float[])values.Clone();
        _entries.Add(name, new Entry(name, dtype, (long[])shape.Clone(), byteLength, stream => WriteSingles(stream, dtype, copy)));
    }

    /// <summary>
    /// <paramref name="tensor"/>'s values, downloaded in chunks when the file is written (keep it alive until
    /// then), stored as <paramref name="dtype"/> (default: the tensor's own, F32 or BF16).
    /// </summary>
    public void Add(string name, Tensor tensor, SafeTensorDType? dtype = null)
    {
        ArgumentNullException.ThrowIfNull(tensor);
        tensor.ThrowIfDisposed(nameof(tensor));
        SafeTensorDType format = dtype ?? (tensor.DType == DType.BF16 ? SafeTensorDType.BF16 : SafeTensorDType.F32);
        if (format is not (SafeTensorDType.F32 or SafeTensorDType.F16 or SafeTensorDType.BF16))
            throw new ArgumentException($"Tensor \"{name}\": a Tensor is written as F32, F16 or BF16, not {format}.", nameof(dtype));
        long[] shape = tensor.Shape.ToArray();
        long byteLength = CheckEntry(name, format, shape);
        _entries.Add(name, new Entry(name, format, shape, byteLength, stream => WriteTensor(stream, tensor, format)));
    }

    /// <summary>Writes the file to <paramref name="path"/> atomically (temporary file, fsync, rename).</summary>
    public void Save(string path) => AtomicFile.Write(path, stream => WriteTo(stream, path));

    /// <summary>Writes the file to <paramref name="stream"/> (not atomic; <paramref name="description"/> names it in errors).</summary>
    public void WriteTo(Stream stream, string description = "<stream>")
    {
        ArgumentNullException.ThrowIfNull(stream);
        if (!BitConverter.IsLittleEndian)
            throw new PlatformNotSupportedException("safetensors data is little-endian; this library writes it only on little-endian machines.");
        List<Entry> layout = Layout();
        byte[] header = Header(layout);
        // The reader's validation, on exactly what is about to be written.
        SafeTensorsFile.ParseHeader(description, header, layout.Sum(e => e.ByteLength));
        Span<byte> length = stackalloc byte[8];
        System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(length, (ulong)header.Length);
        stream.Write(length);
        stream.Write(header);
        foreach (Entry entry in layout)
        {
            var counted = new CountingStream(stream, entry.ByteLength);
            entry.Write(counted);
            if (counted.Written != entry.ByteLength)
                throw new InvalidOperationException($"Tensor \"{entry.Name}\" ({entry.DType}[{string.Join(", ", entry.Shape)}]) needs {entry.ByteLength} bytes; its data source wrote {counted.Written}.");
        }
    }

    /// <summary>The header bytes (JSON padded with spaces to a multiple of 8) for the current entries.</summary>
    internal byte[] Header() => Header(Layout());

    /// <summary>safetensors' order: dtype descending (largest alignment first), then name (ordinal).</summary>
    private List<Entry> Layout() =>
        _entries.Values.OrderByDescending(e => e.DType).ThenBy(e => e.Name, StringComparer.Ordinal).ToList();

    private byte[] Header(List<Entry> layout)
    {
        var buffer = new ArrayBufferWriter<byte>();
        using (var json = new Utf8JsonWriter(buffer, new JsonWriterOptions { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            json.WriteStartObject();
            if (_metadata.Count > 0)
            {
                json.WriteStartObject("__metadata__");
                foreach (var (key, value) in _metadata.OrderBy(p => p.Key, StringComparer.Ordinal)) json.WriteString(key, value);
                json.WriteEndObject();
            }
            long offset = 0;
            foreach (Entry entry in layout)
            {
                json.WriteStartObject(entry.Name);
                json.WriteString("dtype", entry.DType.ToString());
                json.WriteStartArray("shape");
                foreach (long dimension in entry.Shape) json.WriteNumberValue(dimension);
                json.WriteEndArray();
                json.WriteStartArray("data_offsets");
                json.WriteNumberValue(offset);
                json.WriteNumberValue(offset + entry.ByteLength);
                json.WriteEndArray();
                json.WriteEndObject();
                offset += entry.ByteLength;
            }
            json.WriteEndObject();
        }
        int padded = (buffer.WrittenCount + 7) / 8 * 8;
        byte[] header = new byte[padded];
        buffer.WrittenSpan.CopyTo(header);
        header.AsSpan(buffer.WrittenCount).Fill((byte)' ');
        return header;
    }

    private long CheckEntry(string name, SafeTensorDType dtype, long[] shape)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        ArgumentNullException.ThrowIfNull(shape);
        if (name == "__metadata__") throw new ArgumentException("\"__metadata__\" is reserved for the header's metadata.", nameof(name));
        if (_entries.ContainsKey(name)) throw new ArgumentException($"Tensor \"{name}\" was already added.", nameof(name));
        if (!Enum.IsDefined(dtype)) throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "Unknown safetensors dtype.");
        long elements;
        try
        {
            elements = Tensor.CountElements(shape);
        }
        catch (ArgumentException e)
        {
            throw new ArgumentException($"Tensor \"{name}\": {e.Message}", nameof(shape), e);
        }
        return dtype.ByteLength(elements)
            ?? throw new ArgumentException($"Tensor \"{name}\": {elements} elements of {dtype} are not a whole number of bytes, or overflow.", nameof(shape));
    }

    private static void WriteSingles(Stream stream, SafeTensorDType dtype, ReadOnlySpan<float> values)
    {
        int size = dtype.BitSize() / 8;
        int chunkElements = ChunkBytes / 4;
        byte[] staging = ArrayPool<byte>.Shared.Rent(Math.Min(ChunkBytes, Math.Max(values.Length * size, 1)));
        try
        {
            for (int done = 0; done < values.Length; done += chunkElements)
            {
                ReadOnlySpan<float> chunk = values.Slice(done, Math.Min(chunkElements, values.Length - done));
                Span<byte> bytes = staging.AsSpan(0, chunk.Length * size);
                ElementConversion.FromSingle(dtype, chunk, bytes);
                stream.Write(bytes);
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(staging);
        }
    }

    private static void WriteTensor(Stream stream, Tensor tensor, SafeTensorDType format)
    {
        tensor.ThrowIfDisposed(nameof(tensor));
        SafeTensorDType stored = tensor.DType == DType.BF16 ? SafeTensorDType.BF16 : SafeTensorDType.F32;
        int storedSize = DTypeInfo.SizeOf(tensor.DType);
        int chunkElements = ChunkBytes / 4;
        byte[] raw = ArrayPool<byte>.Shared.Rent((int)Math.Min(ChunkBytes, Math.Max(tensor.SizeInBytes, 1)));
        float[] values = ArrayPool<float>.Shared.Rent((int)Math.Min(chunkElements, Math.Max(tensor.ElementCount, 1)));
        try
        {
            for (long done = 0; done < tensor.ElementCount; done += chunkElements)
            {
                int count = (int)Math.Min(chunkElements, tensor.ElementCount - done);
                Span<byte> bytes = raw.AsSpan(0, count * storedSize);
                tensor.Device.Download(tensor.Buffer, done * storedSize, bytes);
                if (format == stored)
                {
                    stream.Write(bytes);
                    continue;
                }
                ElementConversion.ToSingle(stored, bytes, values.AsSpan(0, count));
                WriteSingles(stream, format, values.AsSpan(0, count));
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(raw);
            ArrayPool<float>.Shared.Return(values);
        }
    }

    /// <summary>Passes writes through and counts them, refusing any byte past the tensor's length.</summary>
    private sealed class CountingStream(Stream inner, long limit) : Stream
    {
        public long Written { get; private set; }
        public override bool CanRead => false;
        public override bool CanSeek => false;
        public override bool CanWrite => true;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => Written; set => throw new NotSupportedException(); }
        public override void Flush() => inner.Flush();
        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

        public override void Write(ReadOnlySpan<byte> buffer)
        {
            if (buffer.Length > limit - Written)
                throw new InvalidOperationException($"A tensor's data source wrote more than its {limit} bytes.");
            inner.Write(buffer);
            Written += buffer.Length;
        }
    }
}
