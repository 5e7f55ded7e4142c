// Paged state on a GPU device (CUDA; the emulator runs the same code): the state lives in pinned host
// memory and each chunk moves through one of two device staging buffers of half the working window.
// Per chunk c: the kernels wait for c's copy in, the update launches, the copy of chunk c + 1 into the
// other buffer is queued (it overlaps this update), the copy queue waits for the update, and c is
// copied back out (overlapping the next update). With one copy queue, c + 1's copy in is ordered after
// c - 1's copy out of the same buffer. Under the emulator copies and launches complete in order as
// issued, so CI runs the whole sequence, but not its overlap.
using LoraKernels.Runtime;

namespace LoraKernels.Optim;

internal sealed class StagedStatePager(Device device, long workingBytes) : StatePager
{
    private readonly DeviceBuffer?[] _slots = new DeviceBuffer?[2];
    private ITransferQueue? _queue;

    public override long WorkingBytes => _slots.Sum(s => s?.SizeInBytes ?? 0);

    public override void Run(IReadOnlyList<ParameterState> entries, Action<IReadOnlyList<StatePiece>> update)
    {
        List<List<PlannedPiece>> chunks = Plan(entries, workingBytes / 2);
        if (chunks.Count == 0) return;
        EnsureSlots(chunks.Max(chunk => chunk[^1].End(entries[chunk[^1].Entry])));
        ITransferQueue queue = _queue ??= device.CreateTransferQueue();
        using var leases = new BufferLeases();
        ulong[] slotAddresses = [leases.Address(_slots[0]), leases.Address(_slots[1])];
        TransferMark? pending = null;
        try
        {
            Move(entries, chunks[0], _slots[0]!, toSlot: true);
            pending = queue.Mark();
            for (int c = 0; c < chunks.Count; c++)
            {
                using (TransferMark loaded = pending!)
                {
                    pending = null;
                    queue.LaunchesWaitFor(loaded);
                }
                update(Staged(entries, chunks[c], slotAddresses[c % 2]));
                if (c + 1 < chunks.Count)
                {
                    Move(entries, chunks[c + 1], _slots[(c + 1) % 2]!, toSlot: true);
                    pending = queue.Mark();
                }
                queue.WaitForLaunches();
                Move(entries, chunks[c], _slots[c % 2]!, toSlot: false);
            }
        }
        finally
        {
            pending?.Dispose();
            queue.Synchronize();
        }
    }

    public override void Dispose()
    {
        _queue?.Dispose();
        _queue = null;
        for (int i = 0; i < _slots.Length; i++)
        {
            _slots[i]?.Dispose();
            _slots[i] = null;
        }
    }

    private void EnsureSlots(long bytes)
    {
        for (int i = 0; i < _slots.Length; i++)
        {
            if (_slots[i] is { } slot && slot.SizeInBytes >= bytes) continue;
            _slots[i]?.Dispose();
            _slots[i] = null;
            _slots[i] = device.Allocate(bytes);
        }
    }

    /// <summary>Queues the copies of one chunk's state between its pinned home and <paramref name="slot"/>.</summary>
    private void Move(IReadOnlyList<ParameterState> entries, List<PlannedPiece> chunk, DeviceBuffer slot, bool toSlot)
    {
        foreach (PlannedPiece piece in chunk)
        {
            IReadOnlyList<StateBuffer> buffers = entries[piece.Entry].Buffers;
            for (int b = 0; b < buffers.Count; b++)
            {
                var (offset, bytes) = buffers[b].Range(piece.First, piece.Count);
                if (toSlot) _queue!.Copy(buffers[b].Buffer, offset, slot, piece.ChunkOffsets[b], bytes);
                else _queue!.Copy(slot, piece.ChunkOffsets[b], buffers[b].Buffer, offset, bytes);
            }
        }
    }
}
