// The one place LoraKernels writes a file atomically: into a temporary file in the target's
// folder (same file system, so the rename cannot degrade into a copy), flushed to the disk
// (fsync through FileStream.Flush(true)), then renamed over the target. A reader sees the old
// file or the whole new one, never a half-written one; on any failure the temporary is deleted
// and the previous file is untouched (Runtime/ModuleCache.cs writes cached cubins through it too).
// The folder entry itself is not
// fsynced: .NET cannot open a directory for fsync, so a power cut right after the rename may
// still show the old file, though never a torn one.
namespace LoraKernels.IO;

public static class AtomicFile
{
    /// <summary>
    /// Creates or replaces <paramref name="path"/> with what <paramref name="write"/> writes to the
    /// stream it is given (positioned at 0, seekable). Parent folders are created.
    /// </summary>
    public static void Write(string path, Action<FileStream> write)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        ArgumentNullException.ThrowIfNull(write);
        string full = Path.GetFullPath(path);
        string folder = Path.GetDirectoryName(full) ?? throw new ArgumentException($"\"{path}\" has no parent folder.", nameof(path));
        Directory.CreateDirectory(folder);
        string temporary = Path.Combine(folder, $".{Path.GetFileName(full)}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp");
        try
        {
            using (var stream = new FileStream(temporary, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None, 1 << 16))
            {
                write(stream);
                stream.Flush(flushToDisk: true);
            }
            File.Move(temporary, full, overwrite: true);
        }
        catch
        {
            TryDelete(temporary);
            throw;
        }
    }

    /// <summary>Creates or replaces <paramref name="path"/> with <paramref name="bytes"/>, atomically.</summary>
    public static void WriteAllBytes(string path, ReadOnlySpan<byte> bytes)
    {
        byte[] copy = bytes.ToArray();
        Write(path, stream => stream.Write(copy));
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
