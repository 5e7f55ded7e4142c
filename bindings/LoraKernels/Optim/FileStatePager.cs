// Paged state on the CPU: the state lives in files (MemoryKind.MappedFile buffers) and each chunk of
// the RAM budget is read into one resident window, updated there and written back, by positioned reads
// and writes (the kernel copies through its own mapping of the page cache). While chunk c is updated the
// kernel is already reading chunk c + 1 from disk (MADV_WILLNEED on its range), and the copies run
// natively on the library's threads in runs of 4 MiB (lk_cpu_file_read/_write: pread/pwrite). A state
// larger than the RAM trains at the disk's speed: the OS writes written pages back and evicts them
// under memory pressure.
// Rejected, measured (docs/DECISIONS.md): updating the mapping in place, populating each chunk's pages
// before its update and releasing them after. It moves no bytes, but remaps every page every step, and
// a page-table change costs 4-7 µs a page on a virtual machine without nested paging (this CI's kind):
// 13-15x the resident step there, against 2.6-2.9x with the two copies.
using LoraKernels.Interop;
using LoraKernels.Runtime;

namespace LoraKernels.Optim;

internal sealed unsafe class FileStatePager(Device device, long workingBytes) : StatePager
{
    // Copies are cut into runs of this many bytes so that two threads share one chunk's copies evenly.
    private const long CopyRunBytes = 4 << 20;

    private DeviceBuffer? _window;

    public override long WorkingBytes => _window?.SizeInBytes ?? 0;

    public override void Run(IReadOnlyList<ParameterState> entries, Action<IReadOnlyList<StatePiece>> update)
    {
        List<List<PlannedPiece>> chunks = Plan(entries, workingBytes);
        if (chunks.Count == 0) return;
        long needed = chunks.Max(chunk => chunk[^1].End(entries[chunk[^1].Entry]));
        if (_window is null || _window.SizeInBytes < needed)
        {
            _window?.Dispose();
            _window = null;
            _window = device.Allocate(needed);
        }
        using var leases = new BufferLeases();
        ulong window = leases.Address(_window);
        // Pages a checkpoint or a test mapped through the buffer's own address stay resident until told otherwise.
        // The leases taken here also keep every paging file open, so the descriptors Copy passes stay valid.
        foreach (ParameterState state in entries)
            foreach (StateBuffer buffer in state.Buffers)
                Check.Cpu(NativeCpu.lk_cpu_pages_release((void*)leases.Address(FileOf(buffer)), buffer.Buffer.SizeInBytes));
        for (int c = 0; c < chunks.Count; c++)
        {
            Copy(entries, chunks[c], window, toWindow: true);
            if (c + 1 < chunks.Count) ReadAhead(entries, chunks[c + 1], leases);
            update(Staged(entries, chunks[c], window));
            Copy(entries, chunks[c], window, toWindow: false);
        }
    }

    public override void Dispose()
    {
        _window?.Dispose();
        _window = null;
    }

    private static FileBackedBuffer FileOf(StateBuffer buffer) =>
        buffer.Buffer as FileBackedBuffer
        ?? throw new InvalidOperationException($"Paged CPU state must live in a paging file; {buffer.Name} is {buffer.Buffer.Kind}.");

    /// <summary>
    /// Moves one chunk's state between its files and the window, in runs spread over the library's threads.
    /// The runs of different files alternate in the list: writes to one file take its inode lock in turn,
    /// so two threads writing neighbouring runs of the same file would queue behind each other.
    /// </summary>
    private static void Copy(IReadOnlyList<ParameterState> entries, List<PlannedPiece> chunk, ulong window, bool toWindow)
    {
        var runs = new List<(long Order, FileRun Run)>();
        foreach (PlannedPiece piece in chunk)
        {
            IReadOnlyList<StateBuffer> buffers = entries[piece.Entry].Buffers;
            for (int b = 0; b < buffers.Count; b++)
            {
                var (offset, bytes) = buffers[b].Range(piece.First, piece.Count);
                int fd = FileOf(buffers[b]).FileDescriptor;
                for (long done = 0; done < bytes; done += CopyRunBytes)
                    runs.Add((done / CopyRunBytes, new FileRun
                    {
                        FileOffset = offset + done, Memory = window + (ulong)(piece.ChunkOffsets[b] + done),
                        Bytes = Math.Min(CopyRunBytes, bytes - done), Fd = fd,
                    }));
            }
        }
        FileRun[] list = runs.OrderBy(r => r.Order).Select(r => r.Run).ToArray();  // stable: file order within a rank
        fixed (FileRun* first = list)
            Check.Cpu(toWindow ? NativeCpu.lk_cpu_file_read(first, list.Length) : NativeCpu.lk_cpu_file_write(first, list.Length));
    }

    /// <summary>Starts the disk reads of a chunk's state without waiting for them (nothing to do while it is in the page cache).</summary>
    private static void ReadAhead(IReadOnlyList<ParameterState> entries, List<PlannedPiece> chunk, BufferLeases leases)
    {
        foreach (PlannedPiece piece in chunk)
        {
            IReadOnlyList<StateBuffer> buffers = entries[piece.Entry].Buffers;
            for (int b = 0; b < buffers.Count; b++)
            {
                var (offset, bytes) = buffers[b].Range(piece.First, piece.Count);
                Check.Cpu(NativeCpu.lk_cpu_pages_readahead((void*)(leases.Address(FileOf(buffers[b])) + (ulong)offset), bytes));
            }
        }
    }
}
