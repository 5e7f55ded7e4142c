// Paged state on the CPU: the state lives in memory-mapped files (MemoryKind.MappedFile) and is
// updated in place, one chunk of the RAM budget at a time. Before chunk c is updated, chunk c + 1
// is read ahead (MADV_WILLNEED: the kernel starts reading it from the file without waiting) and chunk
// c's pages are mapped writable (MADV_POPULATE_WRITE: from the page cache, so the update takes no page
// faults); after the update they are released (MADV_DONTNEED: the data stays in the file, the process
// stops holding it). So one chunk is resident at a time, and a state larger than the RAM still trains:
// the OS writes released dirty pages back and evicts them under memory pressure, at the disk's speed.
// The hints run on the calling thread: on a machine whose cores the update already uses, a helper
// thread populating ahead would only take turns with it, while the readahead overlaps the disk by
// itself. Chunks are as large as the budget allows: each is one parallel region of the update, and on
// a busy machine every region's join waits for its slowest thread to be scheduled.
using LoraKernels.Interop;
using LoraKernels.Runtime;

namespace LoraKernels.Optim;

internal sealed unsafe class MappedStatePager(long workingBytes) : StatePager
{
    public override void Run(IReadOnlyList<ParameterState> entries, Action<IReadOnlyList<StatePiece>> update)
    {
        List<List<PlannedPiece>> chunks = Plan(entries, workingBytes);
        using var leases = new BufferLeases();
        var pieces = chunks.Select(chunk => InPlace(entries, chunk, leases)).ToList();
        for (int c = 0; c < pieces.Count; c++)
        {
            if (c + 1 < pieces.Count) Advise(entries, pieces[c + 1], (address, bytes) => NativeCpu.lk_cpu_pages_readahead((void*)address, bytes));
            Advise(entries, pieces[c], (address, bytes) => NativeCpu.lk_cpu_pages_populate((void*)address, bytes));
            update(pieces[c]);
            Advise(entries, pieces[c], (address, bytes) => NativeCpu.lk_cpu_pages_release((void*)address, bytes));
        }
    }

    /// <summary>Applies a page hint to every state range of <paramref name="chunk"/> (mapped files only: release discards anything else).</summary>
    private static void Advise(IReadOnlyList<ParameterState> entries, List<StatePiece> chunk, Func<IntPtr, long, int> hint)
    {
        foreach (StatePiece piece in chunk)
        {
            IReadOnlyList<StateBuffer> buffers = entries[piece.Entry].Buffers;
            for (int b = 0; b < buffers.Count; b++)
            {
                if (buffers[b].Buffer.Kind != MemoryKind.MappedFile)
                    throw new InvalidOperationException($"Paged CPU state must be memory-mapped; {buffers[b].Name} is {buffers[b].Buffer.Kind}.");
                Check.Cpu(hint((IntPtr)piece.StateAddresses[b], buffers[b].Range(piece.First, piece.Count).Bytes));
            }
        }
    }
}
