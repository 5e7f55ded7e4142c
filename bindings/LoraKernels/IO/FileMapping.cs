// A read-only file mapped into the address space, copy-on-write, shared by a SafeTensorsFile and
// every tensor view handed out from it. Reference-counted: the mapping stays alive while the file
// object or any view uses it, and is unmapped when the last one lets go (Dispose or finalizer of
// the view buffer). Copy-on-write means a view may be written (kernels write outputs in place):
// the pages are then copied privately and the file never changes. Mapping touches no data: pages
// are read from disk only when a view or a span is read, so opening a large file costs address
// space, not memory. As with any mapping, the file must not be truncated while it is mapped.
using System.IO.MemoryMappedFiles;
using LoraKernels.Runtime;

namespace LoraKernels.IO;

internal sealed unsafe class FileMapping
{
    private readonly MemoryMappedFile _file;
    private readonly MemoryMappedViewAccessor _view;
    private byte* _pointer;
    private int _references = 1;

    /// <summary>Maps the whole of <paramref name="path"/> (which must be non-empty) copy-on-write; one reference for the caller.</summary>
    public FileMapping(string path, long length)
    {
        Path = path;
        Length = length;
        _file = MemoryMappedFile.CreateFromFile(path, FileMode.Open, mapName: null, capacity: 0, MemoryMappedFileAccess.CopyOnWrite);
        try
        {
            _view = _file.CreateViewAccessor(0, length, MemoryMappedFileAccess.CopyOnWrite);
            byte* pointer = null;
            _view.SafeMemoryMappedViewHandle.AcquirePointer(ref pointer);
            _pointer = pointer + _view.PointerOffset;
        }
        catch
        {
            _view?.Dispose();
            _file.Dispose();
            throw;
        }
    }

    public string Path { get; }
    public long Length { get; }

    /// <summary>The first byte of the file in memory.</summary>
    public byte* Pointer => _pointer != null ? _pointer : throw new ObjectDisposedException(nameof(FileMapping), $"The mapping of {Path} has been released.");

    /// <summary>Takes one more reference (a view being handed out).</summary>
    public void AddReference()
    {
        while (true)
        {
            int current = Volatile.Read(ref _references);
            if (current <= 0) throw new ObjectDisposedException(nameof(FileMapping), $"The mapping of {Path} has been released.");
            if (Interlocked.CompareExchange(ref _references, current + 1, current) == current) return;
        }
    }

    /// <summary>Drops one reference; the last one unmaps the file. Never throws (called from finalizers).</summary>
    public void Release()
    {
        if (Interlocked.Decrement(ref _references) != 0) return;
        _pointer = null;
        try
        {
            _view.SafeMemoryMappedViewHandle.ReleasePointer();
            _view.Dispose();
            _file.Dispose();
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException or InvalidOperationException)
        {
            // Unmapping failed only if the handles are already gone; nothing is left to release.
        }
    }
}

/// <summary>
/// A tensor's bytes inside a <see cref="FileMapping"/>, as a device buffer of the CPU device: the
/// tensor reads the file's pages directly. Holds one reference on the mapping until freed, and is
/// counted by the device's live-allocation counters like any buffer.
/// </summary>
internal sealed unsafe class MappedFileBuffer : DeviceBuffer
{
    private FileMapping? _mapping;
    private readonly AllocationCounter _counter;
    private readonly ulong _address;

    public MappedFileBuffer(FileMapping mapping, long offset, long bytes, AllocationCounter counter) : base(bytes)
    {
        if (offset < 0 || bytes < 0 || offset > mapping.Length || bytes > mapping.Length - offset)
            throw new ArgumentOutOfRangeException(nameof(offset), $"[{offset}, {offset} + {bytes}) is outside the {mapping.Length}-byte mapping of {mapping.Path}.");
        mapping.AddReference();
        _mapping = mapping;
        _address = (ulong)(mapping.Pointer + offset);
        _counter = counter;
        _counter.Add(bytes);
    }

    ~MappedFileBuffer() => ReleaseMapping();

    public override ulong Address => _mapping is not null ? _address : throw new ObjectDisposedException(nameof(MappedFileBuffer));

    protected override void Free() => ReleaseMapping();

    private void ReleaseMapping()
    {
        FileMapping? mapping = Interlocked.Exchange(ref _mapping, null);
        if (mapping is null) return;
        _counter.Remove(SizeInBytes);
        mapping.Release();
    }
}
