// Paged state on the CPU: the state lives in memory-mapped files (MemoryKind.MappedFile) and is
// updated in place, one chunk of half the RAM budget at a time. While chunk c is updated, a worker
// populates chunk c + 1's pages (MADV_POPULATE_WRITE: read from the file or the page cache and mapped
// writable, so the update takes no page faults); after the update chunk c's pages are released
// (MADV_DONTNEED: the data stays in the file, the process stops holding it). So at most about two
// chunks are resident, and a state larger than the RAM still trains: the OS writes released dirty
// pages back and evicts them under memory pressure, at the disk's speed.
using LoraKernels.Interop;
using LoraKernels.Runtime;

namespace LoraKernels.Optim;

internal sealed unsafe class MappedStatePager(long workingBytes) : StatePager
{
    public override void Run(IReadOnlyList<ParameterState> entries, Action<IReadOnlyList<StatePiece>> update)
    {
        List<List<PlannedPiece>> chunks = Plan(entries, workingBytes / 2);
        if (chunks.Count == 0) return;
        using var leases = new BufferLeases();
        var pieces = chunks.Select(chunk => InPlace(entries, chunk, leases)).ToList();
        Populate(entries, pieces[0]);
        Task? next = null;
        try
        {
            for (int c = 0; c < chunks.Count; c++)
            {
                List<StatePiece> ahead = c + 1 < chunks.Count ? pieces[c + 1] : [];
                next = ahead.Count > 0 ? Task.Run(() => Populate(entries, ahead)) : null;
                update(pieces[c]);
                Release(entries, pieces[c]);
                next?.GetAwaiter().GetResult();
                next = null;
            }
        }
        finally
        {
            // A failed update must not leave the worker touching pages whose leases are about to go.
            try
            {
                next?.Wait();
            }
            catch (AggregateException)
            {
                // The update's exception is the one to report.
            }
        }
    }

    private static void Populate(IReadOnlyList<ParameterState> entries, List<StatePiece> chunk) =>
        ForEachRange(entries, chunk, (address, bytes) => Check.Cpu(NativeCpu.lk_cpu_pages_populate((void*)address, bytes)));

    private static void Release(IReadOnlyList<ParameterState> entries, List<StatePiece> chunk) =>
        ForEachRange(entries, chunk, (address, bytes) => Check.Cpu(NativeCpu.lk_cpu_pages_release((void*)address, bytes)));

    private static void ForEachRange(IReadOnlyList<ParameterState> entries, List<StatePiece> chunk, Action<ulong, long> action)
    {
        foreach (StatePiece piece in chunk)
        {
            IReadOnlyList<StateBuffer> buffers = entries[piece.Entry].Buffers;
            for (int b = 0; b < buffers.Count; b++)
            {
                if (buffers[b].Buffer.Kind != MemoryKind.MappedFile)
                    throw new InvalidOperationException($"Paged CPU state must be memory-mapped; {buffers[b].Name} is {buffers[b].Buffer.Kind}.");
                action(piece.StateAddresses[b], buffers[b].Range(piece.First, piece.Count).Bytes);
            }
        }
    }
}
