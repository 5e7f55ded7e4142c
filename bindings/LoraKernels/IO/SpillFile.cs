// Tensors computed ahead of a safetensors write, parked on disk until the writer reaches them.
// safetensors' layout sorts tensors by dtype, so one module's 4-bit state (F32 absmax, U8 codes,
// U8 quant_state JSON) is spread across the output; computing each module once, into this file,
// keeps memory bounded by one module while the output keeps the canonical layout. The file sits
// beside the output (same file system) and is deleted on Dispose.
using System.Buffers;
using System.Runtime.InteropServices;
using LoraKernels.Ops;

namespace LoraKernels.IO;

internal sealed class SpillFile : IDisposable
{
    private const int ChunkBytes = 4 << 20;

    private readonly Dictionary<string, Entry> _entries = new(StringComparer.Ordinal);
    private FileStream? _stream;

    private sealed record Entry(SafeTensorDType DType, long[] Shape, long Offset, long Length);

    /// <summary>A spill file for the output <paramref name="outputPath"/> (created on the first Add).</summary>
    public SpillFile(string outputPath)
    {
        Path = System.IO.Path.Combine(System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(outputPath))!,
                                      $".{System.IO.Path.GetFileName(outputPath)}.{Environment.ProcessId}.{Guid.NewGuid():N}.spill");
    }

    public string Path { get; }

    public bool Contains(string key) => _entries.ContainsKey(key);

    /// <summary>Bytes of the spilled tensor <paramref name="key"/>.</summary>
    public long Length(string key) => _entries[key].Length;

    /// <summary>Appends a bitsandbytes state (Nf4.ExportState) under its keys.</summary>
    public void Add(IEnumerable<StateTensor> state)
    {
        foreach (StateTensor tensor in state)
        {
            ReadOnlySpan<byte> bytes = tensor.Data switch
            {
                byte[] raw => raw,
                float[] floats => MemoryMarshal.AsBytes(floats.AsSpan()),
                _ => throw new InvalidOperationException($"{tensor.Key}: unexpected state data {tensor.Data.GetType().Name}"),
            };
            Add(tensor.Key, Enum.Parse<SafeTensorDType>(tensor.DType), tensor.Shape, bytes);
        }
    }

    public void Add(string key, SafeTensorDType dtype, long[] shape, ReadOnlySpan<byte> bytes)
    {
        _stream ??= new FileStream(Path, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.Read, 1 << 16);
        _stream.Seek(0, SeekOrigin.End);
        _entries.Add(key, new Entry(dtype, (long[])shape.Clone(), _stream.Position, bytes.Length));
        _stream.Write(bytes);
    }

    /// <summary>Adds the spilled tensor <paramref name="key"/> to <paramref name="writer"/>; <paramref name="written"/> runs after its bytes are copied.</summary>
    public void AddTo(SafeTensorsWriter writer, string key, Action? written = null)
    {
        Entry entry = _entries[key];
        writer.Add(key, entry.DType, entry.Shape, output =>
        {
            FileStream stream = _stream!;
            stream.Flush();
            byte[] staging = ArrayPool<byte>.Shared.Rent((int)Math.Min(ChunkBytes, Math.Max(entry.Length, 1)));
            try
            {
                for (long done = 0; done < entry.Length;)
                {
                    int read = RandomAccess.Read(stream.SafeFileHandle, staging.AsSpan(0, (int)Math.Min(ChunkBytes, entry.Length - done)), entry.Offset + done);
                    if (read == 0) throw new EndOfStreamException($"The spill file {Path} ended early.");
                    output.Write(staging.AsSpan(0, read));
                    done += read;
                }
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(staging);
            }
            written?.Invoke();
        });
    }

    public void Dispose()
    {
        _stream?.Dispose();
        _stream = null;
        try
        {
            File.Delete(Path);
        }
        catch (IOException)
        {
        }
    }
}
