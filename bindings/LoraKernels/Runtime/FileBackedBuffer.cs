// MemoryKind.MappedFile on the CPU device: a buffer whose memory is a file mapped read-write and
// shared, so the OS pages it to and from disk and it may be larger than the RAM. The file is created
// in LORAKERNELS_PAGING_DIR (default: the temporary folder) and, on Unix, unlinked as soon as it is
// mapped, so nothing is left behind even if the process dies; on Windows it is deleted on close. A
// fresh file reads as zeros without touching a page. Kernels and copies may use the mapping like any
// host memory; Optim's paged state instead moves through a resident window by positioned reads and
// writes of the file (FileDescriptor; lk_cpu_file_read/_write), which go through the kernel's own
// mapping of the page cache and so change none of the process's page tables (Optim/FileStatePager.cs
// says why that matters).
using System.IO.MemoryMappedFiles;

namespace LoraKernels.Runtime;

internal sealed unsafe class FileBackedBuffer : DeviceBuffer
{
    public const string DirectoryVariable = "LORAKERNELS_PAGING_DIR";

    private readonly AllocationCounter _counter;
    private readonly FileStream _stream;
    private MemoryMappedFile? _file;
    private MemoryMappedViewAccessor? _view;
    private readonly byte* _pointer;

    private FileBackedBuffer(long bytes, AllocationCounter counter, FileStream stream, MemoryMappedFile file, MemoryMappedViewAccessor view, byte* pointer)
        : base(bytes, MemoryKind.MappedFile)
    {
        _counter = counter;
        _stream = stream;
        _file = file;
        _view = view;
        _pointer = pointer;
        _counter.Add(bytes);
    }

    ~FileBackedBuffer() => Unmap();

    /// <summary>The folder paging files are created in.</summary>
    public static string Folder =>
        Environment.GetEnvironmentVariable(DirectoryVariable) is { Length: > 0 } folder ? folder : Path.GetTempPath();

    /// <summary>A zero-filled mapping of <paramref name="bytes"/> (at least one byte is mapped, so an empty tensor has an address).</summary>
    public static FileBackedBuffer Create(long bytes, AllocationCounter counter)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(bytes);
        string folder = Folder;
        string path = Path.Combine(folder, $"lorakernels-paged-{Environment.ProcessId}-{Guid.NewGuid():N}.bin");
        FileStream stream;
        try
        {
            stream = new FileStream(path, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None, 1,
                                    OperatingSystem.IsWindows() ? FileOptions.DeleteOnClose : FileOptions.None);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new IOException($"Could not create a paging file of {bytes} bytes in {folder} (set {DirectoryVariable} to another folder): {e.Message}", e);
        }
        MemoryMappedFile? file = null;
        MemoryMappedViewAccessor? view = null;
        try
        {
            long mapped = Math.Max(bytes, 1);
            stream.SetLength(mapped);
            file = MemoryMappedFile.CreateFromFile(stream, mapName: null, mapped, MemoryMappedFileAccess.ReadWrite,
                                                   HandleInheritability.None, leaveOpen: true);
            view = file.CreateViewAccessor(0, mapped, MemoryMappedFileAccess.ReadWrite);
            byte* pointer = null;
            view.SafeMemoryMappedViewHandle.AcquirePointer(ref pointer);
            if (!OperatingSystem.IsWindows()) File.Delete(path);
            return new FileBackedBuffer(bytes, counter, stream, file, view, pointer + view.PointerOffset);
        }
        catch (Exception e)
        {
            view?.Dispose();
            file?.Dispose();
            stream.Dispose();
            TryDelete(path);
            if (e is IOException) throw new IOException($"Could not map a paging file of {bytes} bytes in {folder} (set {DirectoryVariable} to another folder): {e.Message}", e);
            throw;
        }
    }

    public override ulong Address => _view is not null ? (ulong)_pointer : throw new ObjectDisposedException(nameof(FileBackedBuffer));

    /// <summary>
    /// The file's descriptor, for positioned reads and writes of its bytes (Unix). Valid while the buffer is
    /// leased: the descriptor closes when the buffer is freed, which a lease defers.
    /// </summary>
    public int FileDescriptor =>
        _view is not null ? (int)_stream.SafeFileHandle.DangerousGetHandle() : throw new ObjectDisposedException(nameof(FileBackedBuffer));

    protected override void Free() => Unmap();

    private void Unmap()
    {
        MemoryMappedViewAccessor? view = Interlocked.Exchange(ref _view, null);
        if (view is null) return;
        try
        {
            view.SafeMemoryMappedViewHandle.ReleasePointer();
            view.Dispose();
            _file?.Dispose();
            _stream.Dispose();
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException or InvalidOperationException)
        {
            // The handles are already gone; nothing is left to release.
        }
        _file = null;
        _counter.Remove(SizeInBytes);
    }

    private static void TryDelete(string path)
    {
        try
        {
            File.Delete(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // Best effort: the original exception is the one the caller needs.
        }
    }
}
