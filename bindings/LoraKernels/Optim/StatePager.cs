// How a step reaches the optimizer state: the optimizer hands the pager the state of the parameters
// it updates and a callback that launches the update for one chunk; the pager calls it with pieces
// (runs of a parameter's elements) whose state addresses are valid for the call. Resident state is one
// chunk of whole parameters, in place. Paged state is cut into chunks of a working window, only at
// multiples of each state's granule (so blockwise 8-bit blocks stay whole), and moved through it by
// StagedStatePager (GPU: two staging buffers of half the window) or FileStatePager (CPU: one window
// filled and emptied by positioned reads and writes of the paging files). The update runs the same
// kernel on every element either way, so paged and resident steps give the same bits.
using LoraKernels.Runtime;

namespace LoraKernels.Optim;

/// <summary>
/// <see cref="Count"/> elements of entry <see cref="Entry"/> starting at <see cref="First"/>, and for each of
/// its state buffers (in order) the address of the byte holding element <see cref="First"/>'s state.
/// </summary>
internal sealed record StatePiece(int Entry, long First, long Count, ulong[] StateAddresses);

internal abstract class StatePager : IDisposable
{
    // Each buffer's bytes start 16-byte aligned inside a staging chunk.
    private const long Alignment = 16;

    /// <summary>The pager for an optimizer on <paramref name="device"/>: resident state without <paramref name="paging"/>.</summary>
    public static StatePager Create(Device device, StatePaging? paging) =>
        paging is null ? new ResidentStatePager()
        : device.Kind == DeviceKind.Cpu ? new FileStatePager(device, paging.WorkingBytes)
        : new StagedStatePager(device, paging.WorkingBytes);

    /// <summary>Runs <paramref name="update"/> over the state of <paramref name="entries"/>, chunk by chunk.</summary>
    public abstract void Run(IReadOnlyList<ParameterState> entries, Action<IReadOnlyList<StatePiece>> update);

    /// <summary>Bytes of the pager's own buffers (the staging buffers of a GPU's paged state), measured.</summary>
    public virtual long WorkingBytes => 0;

    public virtual void Dispose() { }

    /// <summary>A planned piece: its entry, elements, and each buffer's offset inside its chunk (packed, aligned).</summary>
    protected sealed record PlannedPiece(int Entry, long First, long Count, long[] ChunkOffsets)
    {
        /// <summary>Bytes the piece's chunk uses up to the end of this piece.</summary>
        public long End(ParameterState state) =>
            ChunkOffsets.Length == 0 ? 0 : ChunkOffsets[^1] + state.Buffers[^1].Range(First, Count).Bytes;
    }

    /// <summary>
    /// Cuts the entries' state into chunks of at most <paramref name="capacity"/> bytes, greedily, each
    /// parameter at multiples of its granule; every buffer's part of a piece starts 16-byte aligned.
    /// </summary>
    protected static List<List<PlannedPiece>> Plan(IReadOnlyList<ParameterState> entries, long capacity)
    {
        var chunks = new List<List<PlannedPiece>>();
        var current = new List<PlannedPiece>();
        long used = 0;
        for (int e = 0; e < entries.Count; e++)
        {
            ParameterState state = entries[e];
            long granuleBytes = state.Buffers.Sum(b => b.Range(0, state.Granule).Bytes);
            long slack = Alignment * state.Buffers.Count;
            for (long first = 0; first < state.Elements;)
            {
                long room = capacity - used - slack;
                long granules = room >= granuleBytes ? room / granuleBytes : 0;
                if (granules == 0)
                {
                    if (current.Count == 0)
                        throw new InvalidOperationException(
                            $"The paging window's chunks of {capacity} bytes cannot hold one block ({granuleBytes + slack} bytes) of {state.Parameter.Name}'s state.");
                    chunks.Add(current);
                    current = [];
                    used = 0;
                    continue;
                }
                long count = Math.Min(state.Elements - first, granules * state.Granule);
                var offsets = new long[state.Buffers.Count];
                for (int b = 0; b < offsets.Length; b++)
                {
                    used = (used + Alignment - 1) / Alignment * Alignment;
                    offsets[b] = used;
                    used += state.Buffers[b].Range(first, count).Bytes;
                }
                current.Add(new PlannedPiece(e, first, count, offsets));
                first += count;
            }
        }
        if (current.Count > 0) chunks.Add(current);
        return chunks;
    }

    /// <summary>Pieces whose state addresses are their places in a staging window at <paramref name="window"/>.</summary>
    protected static List<StatePiece> Staged(IReadOnlyList<ParameterState> entries, List<PlannedPiece> chunk, ulong window) =>
        chunk.Select(p => new StatePiece(p.Entry, p.First, p.Count, p.ChunkOffsets.Select(o => window + (ulong)o).ToArray())).ToList();

    /// <summary>Pieces whose state addresses are each buffer's own bytes (leased by <paramref name="leases"/>): the state in place.</summary>
    protected static List<StatePiece> InPlace(IReadOnlyList<ParameterState> entries, IEnumerable<PlannedPiece> chunk, BufferLeases leases) =>
        chunk.Select(p => new StatePiece(p.Entry, p.First, p.Count,
                                         entries[p.Entry].Buffers.Select(b => leases.Address(b.Buffer) + (ulong)b.Range(p.First, p.Count).Offset).ToArray()))
             .ToList();
}

/// <summary>State in the device's own memory: one chunk of whole parameters, in place.</summary>
internal sealed class ResidentStatePager : StatePager
{
    public override void Run(IReadOnlyList<ParameterState> entries, Action<IReadOnlyList<StatePiece>> update)
    {
        if (entries.Count == 0) return;
        using var leases = new BufferLeases();
        update(InPlace(entries, entries.Select((s, e) => new PlannedPiece(e, 0, s.Elements, [])), leases));
    }
}
