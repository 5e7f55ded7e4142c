// Reads a safetensors file (REFERENCE.md §9.3): an 8-byte little-endian header length N, N bytes
// of UTF-8 JSON naming every tensor's dtype, shape and [begin, end) offsets into the data section
// that follows, and optionally "__metadata__" (string → string). Everything in the header is
// checked before any tensor byte is used: N against the 100,000,000-byte limit and the file's
// length, the JSON, every dtype and shape (overflow included), every offset pair inside the data
// section, byte length = dtype size × elements, no duplicate names, and the tensors tiling the data
// section exactly (no overlap, no gap, no trailing bytes), as safetensors' own reader requires.
//
// Memory: only the header is read into memory. The file is memory-mapped copy-on-write, so a
// tensor can be handed out as a view into the file's pages (ToTensor on the CPU device, for F32
// and BF16 tensors whose bytes are aligned to their element size: the CPU kernels load user
// tensors with unaligned-safe loads, but element alignment is still required). Elsewhere (other
// devices, F16/F64 sources, misaligned data) the tensor is copied and converted in 4 MiB chunks.
// ReadBytes/ReadSingles go through positioned reads, not the mapping, so streaming over a large
// file keeps the resident set bounded by what the caller holds.
using System.Buffers;
using System.Buffers.Binary;
using System.Collections.ObjectModel;
using System.Runtime.InteropServices;
using System.Text.Json;
using Microsoft.Win32.SafeHandles;

namespace LoraKernels.IO;

/// <summary>One tensor's entry in a safetensors header.</summary>
/// <param name="Name">The tensor's key.</param>
/// <param name="DType">Its element type.</param>
/// <param name="Shape">Its dimensions (row-major; empty for a scalar).</param>
/// <param name="Begin">Offset of its first byte from the start of the data section.</param>
/// <param name="ByteLength">Bytes it occupies: dtype size × elements.</param>
public sealed record SafeTensorInfo(string Name, SafeTensorDType DType, IReadOnlyList<long> Shape, long Begin, long ByteLength)
{
    /// <summary>The product of the dimensions (1 for a scalar).</summary>
    public long ElementCount => Shape.Aggregate(1L, (product, dimension) => product * dimension);

    /// <summary>"F32[4096, 8]".</summary>
    public string Describe() => $"{DType}[{string.Join(", ", Shape)}]";
}

public sealed unsafe class SafeTensorsFile : IDisposable
{
    /// <summary>The largest header safetensors accepts (its reader's limit).</summary>
    public const long MaxHeaderBytes = 100_000_000;

    private const string MetadataKey = "__metadata__";
    private const int ChunkBytes = 4 << 20;

    private readonly Dictionary<string, SafeTensorInfo> _byName;
    private readonly SafeFileHandle _handle;
    private FileMapping? _mapping;

    private SafeTensorsFile(string path, SafeFileHandle handle, long fileLength, long headerLength, List<SafeTensorInfo> tensors,
                            Dictionary<string, string> metadata)
    {
        Path = path;
        _handle = handle;
        FileLength = fileLength;
        HeaderLength = headerLength;
        Tensors = tensors.AsReadOnly();
        _byName = tensors.ToDictionary(t => t.Name, StringComparer.Ordinal);
        Metadata = new ReadOnlyDictionary<string, string>(metadata);
    }

    /// <summary>The file's path as given to <see cref="Open"/>.</summary>
    public string Path { get; }

    public long FileLength { get; }

    /// <summary>N: bytes of the JSON header (padding included).</summary>
    public long HeaderLength { get; }

    /// <summary>Where the data section starts in the file: 8 + N.</summary>
    public long DataStart => 8 + HeaderLength;

    /// <summary>The tensors in the order of their data (by offset).</summary>
    public IReadOnlyList<SafeTensorInfo> Tensors { get; }

    /// <summary>The header's "__metadata__" (empty when absent).</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    public bool Contains(string name) => _byName.ContainsKey(name);

    /// <summary>The entry of tensor <paramref name="name"/>.</summary>
    /// <exception cref="ArgumentException">The file has no such tensor (the message names the file).</exception>
    public SafeTensorInfo this[string name] =>
        _byName.TryGetValue(name ?? throw new ArgumentNullException(nameof(name)), out SafeTensorInfo? info)
            ? info
            : throw new ArgumentException($"{Path} has no tensor \"{name}\".", nameof(name));

    /// <summary>Opens and validates <paramref name="path"/>; only the header is read.</summary>
    /// <exception cref="SafeTensorsFormatException">The file breaks the format; the message names the file, the key and the fault.</exception>
    /// <exception cref="FileNotFoundException">No such file.</exception>
    public static SafeTensorsFile Open(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        if (!BitConverter.IsLittleEndian)
            throw new PlatformNotSupportedException("safetensors data is little-endian; this library reads it only on little-endian machines.");
        SafeFileHandle handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read);
        try
        {
            long fileLength = RandomAccess.GetLength(handle);
            if (fileLength < 8)
                throw Format(path, null, $"the file is {fileLength} bytes; a safetensors file starts with an 8-byte header length (truncated header)");
            Span<byte> prefix = stackalloc byte[8];
            ReadExactly(handle, prefix, 0);
            ulong declared = BinaryPrimitives.ReadUInt64LittleEndian(prefix);
            if (declared > MaxHeaderBytes)
                throw Format(path, null, $"header length {declared} exceeds the {MaxHeaderBytes:N0}-byte limit");
            long headerLength = (long)declared;
            if (headerLength > fileLength - 8)
                throw Format(path, null, $"header length {headerLength} runs past the end of the file ({fileLength} bytes, so at most {fileLength - 8} are left after the length)");
            if (headerLength < 2)
                throw Format(path, null, $"header length {headerLength} is too short to hold a JSON object");
            byte[] header = new byte[headerLength];
            ReadExactly(handle, header, 8);
            long dataLength = fileLength - 8 - headerLength;
            var (tensors, metadata) = ParseHeader(path, header, dataLength);
            return new SafeTensorsFile(path, handle, fileLength, headerLength, tensors, metadata);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Validates <paramref name="header"/> against a data section of <paramref name="dataLength"/> bytes and
    /// returns the tensors sorted by offset. Public to the assembly so the writer can check what it writes.
    /// </summary>
    internal static (List<SafeTensorInfo> Tensors, Dictionary<string, string> Metadata) ParseHeader(string path, byte[] header, long dataLength)
    {
        if (header[0] != (byte)'{')
            throw Format(path, null, $"the header must start with '{{' (got byte 0x{header[0]:X2})");
        if (!System.Text.Unicode.Utf8.IsValid(header))
            throw Format(path, null, "the header is not well-formed JSON: it is not valid UTF-8");
        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(header, new JsonDocumentOptions { MaxDepth = 16 });
        }
        catch (JsonException e)
        {
            throw Format(path, null, $"the header is not well-formed JSON (line {e.LineNumber + 1}, byte {e.BytePositionInLine + 1}): {FirstSentence(e.Message)}", e);
        }
        using (document)
        {
            JsonElement root = document.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
                throw Format(path, null, $"the header is a JSON {root.ValueKind.ToString().ToLowerInvariant()}, not an object");
            var names = new HashSet<string>(StringComparer.Ordinal);
            var tensors = new List<SafeTensorInfo>();
            var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (JsonProperty property in root.EnumerateObject())
            {
                if (!names.Add(property.Name))
                    throw Format(path, property.Name, "the name appears more than once in the header (duplicate names are not allowed)");
                if (property.Name == MetadataKey)
                {
                    ParseMetadata(path, property.Value, metadata);
                    continue;
                }
                tensors.Add(ParseEntry(path, property.Name, property.Value, dataLength));
            }
            CheckTiling(path, tensors, dataLength);
            return (tensors, metadata);
        }
    }

    private static void ParseMetadata(string path, JsonElement value, Dictionary<string, string> metadata)
    {
        if (value.ValueKind != JsonValueKind.Object)
            throw Format(path, MetadataKey, $"must be an object of strings, got a JSON {value.ValueKind.ToString().ToLowerInvariant()}");
        foreach (JsonProperty entry in value.EnumerateObject())
        {
            if (entry.Value.ValueKind != JsonValueKind.String)
                throw Format(path, MetadataKey, $"entry \"{entry.Name}\" must be a string, got a JSON {entry.Value.ValueKind.ToString().ToLowerInvariant()}");
            if (!metadata.TryAdd(entry.Name, entry.Value.GetString()!))
                throw Format(path, MetadataKey, $"entry \"{entry.Name}\" appears more than once");
        }
    }

    private static SafeTensorInfo ParseEntry(string path, string name, JsonElement entry, long dataLength)
    {
        if (entry.ValueKind != JsonValueKind.Object)
            throw Format(path, name, $"the entry must be an object with dtype, shape and data_offsets, got a JSON {entry.ValueKind.ToString().ToLowerInvariant()}");
        if (!entry.TryGetProperty("dtype", out JsonElement dtypeElement) || dtypeElement.ValueKind != JsonValueKind.String)
            throw Format(path, name, "has no \"dtype\" string");
        string dtypeName = dtypeElement.GetString()!;
        SafeTensorDType dtype = (dtypeName.Length > 0 ? SafeTensorDTypes.Parse(dtypeName) : null)
            ?? throw Format(path, name, $"unknown dtype \"{dtypeName}\" (known: {string.Join(", ", Enum.GetNames<SafeTensorDType>())})");
        long[] shape = IntegerArray(path, name, entry, "shape", expectedLength: null);
        long[] offsets = IntegerArray(path, name, entry, "data_offsets", expectedLength: 2);
        long elements = 1;
        foreach (long dimension in shape)
        {
            try
            {
                elements = checked(elements * dimension);
            }
            catch (OverflowException)
            {
                throw Format(path, name, $"shape [{string.Join(", ", shape)}] has more elements than fit in 64 bits (overflow)");
            }
        }
        long byteLength = dtype.ByteLength(elements)
            ?? throw Format(path, name, $"{elements} elements of {dtype} ({dtype.BitSize()} bits each) are not a whole number of bytes, or overflow 64 bits");
        long begin = offsets[0], end = offsets[1];
        if (end < begin)
            throw Format(path, name, $"data_offsets [{begin}, {end}] end before they begin");
        if (end > dataLength)
            throw Format(path, name, $"data_offsets [{begin}, {end}] lie outside the data section ({dataLength} bytes; offset out of range)");
        if (end - begin != byteLength)
            throw Format(path, name, $"data_offsets [{begin}, {end}] hold {end - begin} bytes, but {dtype}[{string.Join(", ", shape)}] needs {byteLength} (wrong byte length)");
        return new SafeTensorInfo(name, dtype, Array.AsReadOnly(shape), begin, byteLength);
    }

    private static long[] IntegerArray(string path, string name, JsonElement entry, string field, int? expectedLength)
    {
        if (!entry.TryGetProperty(field, out JsonElement array) || array.ValueKind != JsonValueKind.Array)
            throw Format(path, name, $"has no \"{field}\" array");
        int length = array.GetArrayLength();
        if (expectedLength is int expected && length != expected)
            throw Format(path, name, $"\"{field}\" must have {expected} entries, got {length}");
        var values = new long[length];
        int i = 0;
        foreach (JsonElement item in array.EnumerateArray())
        {
            if (item.ValueKind != JsonValueKind.Number || !item.TryGetInt64(out long value) || value < 0)
                throw Format(path, name, $"\"{field}\"[{i}] = {item.GetRawText()} is not an integer in [0, 2^63)");
            values[i++] = value;
        }
        return values;
    }

    /// <summary>Sorted by offset, the tensors must cover [0, dataLength) exactly once.</summary>
    private static void CheckTiling(string path, List<SafeTensorInfo> tensors, long dataLength)
    {
        tensors.Sort((x, y) => x.Begin != y.Begin ? x.Begin.CompareTo(y.Begin) : (x.Begin + x.ByteLength).CompareTo(y.Begin + y.ByteLength));
        long covered = 0;
        SafeTensorInfo? previous = null;
        foreach (SafeTensorInfo tensor in tensors)
        {
            if (tensor.Begin < covered)
                throw Format(path, tensor.Name,
                    $"bytes [{tensor.Begin}, {tensor.Begin + tensor.ByteLength}) overlap tensor \"{previous!.Name}\" [{previous.Begin}, {covered})");
            if (tensor.Begin > covered)
                throw Format(path, tensor.Name,
                    $"starts at {tensor.Begin}, leaving bytes [{covered}, {tensor.Begin}) of the data section unused (a gap)");
            covered = tensor.Begin + tensor.ByteLength;
            previous = tensor;
        }
        if (covered != dataLength)
            throw Format(path, null, $"the data section holds {dataLength} bytes but the tensors cover only [0, {covered}) (trailing or missing bytes)");
    }

    /// <summary>Copies <paramref name="destination"/>.Length bytes of tensor <paramref name="name"/>, from byte <paramref name="offset"/> of it, by positioned reads.</summary>
    public void ReadBytes(string name, long offset, Span<byte> destination)
    {
        SafeTensorInfo info = this[name];
        ThrowIfDisposed();
        if (offset < 0 || offset > info.ByteLength || destination.Length > info.ByteLength - offset)
            throw new ArgumentOutOfRangeException(nameof(offset), $"[{offset}, {offset} + {destination.Length}) lies outside tensor \"{name}\" ({info.ByteLength} bytes) of {Path}.");
        ReadExactly(_handle, destination, DataStart + info.Begin + offset);
    }

    /// <summary>The raw bytes of tensor <paramref name="name"/> (little-endian, row-major), copied.</summary>
    public byte[] ReadBytes(string name)
    {
        SafeTensorInfo info = this[name];
        if (info.ByteLength > Array.MaxLength)
            throw new InvalidOperationException($"Tensor \"{name}\" of {Path} has {info.ByteLength} bytes, more than an array holds; read it in parts with ReadBytes(name, offset, span).");
        byte[] bytes = new byte[info.ByteLength];
        ReadBytes(name, 0, bytes);
        return bytes;
    }

    /// <summary>
    /// The bytes of tensor <paramref name="name"/> inside the mapping (no copy); valid until this file is
    /// disposed or collected, so keep the file referenced (a using block) for as long as the span is read.
    /// </summary>
    public ReadOnlySpan<byte> GetSpan(string name)
    {
        SafeTensorInfo info = this[name];
        if (info.ByteLength > int.MaxValue)
            throw new InvalidOperationException($"Tensor \"{name}\" of {Path} has {info.ByteLength} bytes, more than a span holds; use ReadBytes(name, offset, span).");
        if (info.ByteLength == 0) return ReadOnlySpan<byte>.Empty;
        return new ReadOnlySpan<byte>(Mapping().Pointer + DataStart + info.Begin, (int)info.ByteLength);
    }

    /// <summary>The values of tensor <paramref name="name"/>, whose dtype must be stored as <typeparamref name="T"/> (float for F32, Half for F16, ushort for BF16/U16, long for I64, byte for U8/BOOL, ...).</summary>
    public T[] Read<T>(string name) where T : unmanaged
    {
        SafeTensorInfo info = this[name];
        if (!StoredAs<T>(info.DType))
            throw new ArgumentException($"Tensor \"{name}\" of {Path} is {info.DType}, which is not stored as {typeof(T).Name}.", nameof(T));
        T[] values = new T[checked((int)info.ElementCount)];
        ReadBytes(name, 0, MemoryMarshal.AsBytes(values.AsSpan()));
        return values;
    }

    /// <summary>The values of tensor <paramref name="name"/> as floats (any dtype with a float meaning; see SafeTensorDTypes.ConvertsToFloat).</summary>
    public float[] ReadSingles(string name)
    {
        SafeTensorInfo info = this[name];
        if (!info.DType.ConvertsToFloat())
            throw new ArgumentException($"Tensor \"{name}\" of {Path} is {info.DType}, which has no float conversion here.", nameof(name));
        if (info.ElementCount > Array.MaxLength)
            throw new InvalidOperationException($"Tensor \"{name}\" of {Path} has {info.ElementCount} elements, more than an array holds.");
        float[] values = new float[info.ElementCount];
        ReadSingles(name, 0, values);
        return values;
    }

    /// <summary>Elements [<paramref name="first"/>, first + destination.Length) of tensor <paramref name="name"/>, as floats.</summary>
    public void ReadSingles(string name, long first, Span<float> destination)
    {
        SafeTensorInfo info = this[name];
        if (!info.DType.ConvertsToFloat())
            throw new ArgumentException($"Tensor \"{name}\" of {Path} is {info.DType}, which has no float conversion here.", nameof(name));
        if (first < 0 || first > info.ElementCount || destination.Length > info.ElementCount - first)
            throw new ArgumentOutOfRangeException(nameof(first), $"Elements [{first}, {first} + {destination.Length}) lie outside tensor \"{name}\" ({info.ElementCount} elements) of {Path}.");
        int size = info.DType.BitSize() / 8;
        int chunkElements = ChunkBytes / size;
        byte[] staging = ArrayPool<byte>.Shared.Rent(Math.Min(ChunkBytes, Math.Max(destination.Length * size, 1)));
        try
        {
            for (int done = 0; done < destination.Length; done += chunkElements)
            {
                int count = Math.Min(chunkElements, destination.Length - done);
                Span<byte> bytes = staging.AsSpan(0, count * size);
                ReadBytes(name, (first + done) * size, bytes);
                ElementConversion.ToSingle(info.DType, bytes, destination.Slice(done, count));
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(staging);
        }
    }

    /// <summary>
    /// Whether <see cref="ToTensor"/> hands out a view into the file (no copy): the CPU device, a stored
    /// dtype equal to the tensor's (F32 or BF16), and data aligned to the element size.
    /// </summary>
    public bool CanMap(string name, Device device, DType dtype)
    {
        SafeTensorInfo info = this[name];
        ArgumentNullException.ThrowIfNull(device);
        SafeTensorDType wanted = dtype == DType.BF16 ? SafeTensorDType.BF16 : SafeTensorDType.F32;
        return device.Kind == DeviceKind.Cpu && info.DType == wanted && (DataStart + info.Begin) % DTypeInfo.SizeOf(dtype) == 0;
    }

    /// <summary>
    /// Tensor <paramref name="name"/> on <paramref name="device"/> in <paramref name="dtype"/> (default: BF16
    /// for a BF16 tensor, else F32). A view into the mapped file where <see cref="CanMap"/> says so (the
    /// mapping lives as long as the view, even after this object is disposed; writes to the view stay in
    /// this process); otherwise a copy, converted from F32, F16, BF16 or F64.
    /// </summary>
    public Tensor ToTensor(string name, Device device, DType? dtype = null)
    {
        SafeTensorInfo info = this[name];
        ArgumentNullException.ThrowIfNull(device);
        ThrowIfDisposed();
        if (info.DType is not (SafeTensorDType.F32 or SafeTensorDType.F16 or SafeTensorDType.BF16 or SafeTensorDType.F64))
            throw new ArgumentException($"Tensor \"{name}\" of {Path} is {info.DType}; only floating-point tensors become Tensors (read it with Read<T>).", nameof(name));
        DType target = dtype ?? (info.DType == SafeTensorDType.BF16 ? DType.BF16 : DType.F32);
        long[] shape = info.Shape.ToArray();
        if (CanMap(name, device, target))
        {
            var view = new MappedFileBuffer(Mapping(), DataStart + info.Begin, info.ByteLength, device.Counter);
            try
            {
                return Tensor.Wrap(device, target, shape, view);
            }
            catch
            {
                view.Dispose();
                throw;
            }
        }
        Tensor tensor = Tensor.Empty(device, target, shape);
        try
        {
            int chunkElements = ChunkBytes / 4;
            float[] values = ArrayPool<float>.Shared.Rent((int)Math.Min(chunkElements, Math.Max(info.ElementCount, 1)));
            byte[] converted = ArrayPool<byte>.Shared.Rent((int)Math.Min(ChunkBytes, Math.Max(info.ElementCount * 4, 1)));
            try
            {
                int targetSize = DTypeInfo.SizeOf(target);
                SafeTensorDType targetFormat = target == DType.BF16 ? SafeTensorDType.BF16 : SafeTensorDType.F32;
                for (long done = 0; done < info.ElementCount; done += chunkElements)
                {
                    int count = (int)Math.Min(chunkElements, info.ElementCount - done);
                    ReadSingles(name, done, values.AsSpan(0, count));
                    Span<byte> bytes = converted.AsSpan(0, count * targetSize);
                    ElementConversion.FromSingle(targetFormat, values.AsSpan(0, count), bytes);
                    device.Upload(tensor.Buffer, done * targetSize, bytes);
                }
            }
            finally
            {
                ArrayPool<float>.Shared.Return(values);
                ArrayPool<byte>.Shared.Return(converted);
            }
            return tensor;
        }
        catch
        {
            tensor.Dispose();
            throw;
        }
    }

    /// <summary>Closes the file. Views handed out by ToTensor keep the mapping alive until they are disposed.</summary>
    public void Dispose()
    {
        Interlocked.Exchange(ref _mapping, null)?.Release();
        _handle.Dispose();
    }

    /// <summary>Whether values of <paramref name="dtype"/> are stored exactly as <typeparamref name="T"/>.</summary>
    internal static bool StoredAs<T>(SafeTensorDType dtype) where T : unmanaged => dtype switch
    {
        SafeTensorDType.F32 => typeof(T) == typeof(float),
        SafeTensorDType.F64 => typeof(T) == typeof(double),
        SafeTensorDType.F16 => typeof(T) == typeof(Half) || typeof(T) == typeof(ushort),
        SafeTensorDType.BF16 or SafeTensorDType.U16 => typeof(T) == typeof(ushort),
        SafeTensorDType.I16 => typeof(T) == typeof(short),
        SafeTensorDType.I32 => typeof(T) == typeof(int),
        SafeTensorDType.U32 => typeof(T) == typeof(uint),
        SafeTensorDType.I64 => typeof(T) == typeof(long),
        SafeTensorDType.U64 => typeof(T) == typeof(ulong),
        SafeTensorDType.I8 => typeof(T) == typeof(sbyte),
        SafeTensorDType.BOOL => typeof(T) == typeof(bool) || typeof(T) == typeof(byte),
        _ => typeof(T) == typeof(byte) && dtype.BitSize() == 8,
    };

    private FileMapping Mapping()
    {
        ThrowIfDisposed();
        if (_mapping is not null) return _mapping;
        var mapping = new FileMapping(Path, FileLength);
        if (Interlocked.CompareExchange(ref _mapping, mapping, null) is not null) mapping.Release();
        return _mapping!;
    }

    private void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(_handle.IsClosed, this);

    private static void ReadExactly(SafeFileHandle handle, Span<byte> destination, long position)
    {
        while (destination.Length > 0)
        {
            int read = RandomAccess.Read(handle, destination, position);
            if (read == 0) throw new EndOfStreamException($"The file ended at byte {position} while {destination.Length} more bytes were expected (was it truncated while open?).");
            destination = destination[read..];
            position += read;
        }
    }

    private static string FirstSentence(string message)
    {
        int end = message.IndexOf(" Path:", StringComparison.Ordinal);
        return end > 0 ? message[..end].TrimEnd() : message;
    }

    internal static SafeTensorsFormatException Format(string path, string? key, string problem, Exception? inner = null) =>
        new(path, key, problem, inner);
}
