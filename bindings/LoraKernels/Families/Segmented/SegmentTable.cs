// Which rows of a batch use which adapter (native/include/lora_kernels_segmented.h): segments of
// consecutive rows, each with an adapter index into a table of adapters, -1 meaning none. Built from
// explicit segments (Punica's SGMV form, any order) or from one adapter index per row (BGMV's form,
// PEFT's adapter_names), and checked once, here, before any op allocates or launches: every segment
// inside the rows, no row in two segments, every index in [-1, adapters). The ops then only compare
// its row and adapter counts with their tensors.
using System.Collections.ObjectModel;

namespace LoraKernels.Ops;

/// <summary>Rows [Start, Start + Length) use adapter <see cref="Adapter"/> (-1: no adapter).</summary>
public readonly record struct Segment(int Start, int Length, int Adapter);

public sealed class SegmentTable
{
    private SegmentTable(int rows, int adapters, Segment[] segments)
    {
        Rows = rows;
        Adapters = adapters;
        Segments = new ReadOnlyCollection<Segment>(segments);
        Triples = new int[3 * segments.Length];
        var rowAdapters = new int[rows];
        Array.Fill(rowAdapters, -1);
        for (int s = 0; s < segments.Length; s++)
        {
            (Triples[3 * s], Triples[3 * s + 1], Triples[3 * s + 2]) = (segments[s].Start, segments[s].Length, segments[s].Adapter);
            LongestSegment = Math.Max(LongestSegment, segments[s].Length);
            for (int m = segments[s].Start; m < segments[s].Start + segments[s].Length; m++) rowAdapters[m] = segments[s].Adapter;
        }
        RowAdapters = new ReadOnlyCollection<int>(rowAdapters);
        EveryRowHasAdapter = rowAdapters.All(a => a >= 0);
    }

    /// <summary>The batch's row count M.</summary>
    public int Rows { get; }

    /// <summary>How many adapters the indices address (the tables' first dimension).</summary>
    public int Adapters { get; }

    /// <summary>The segments, in the order given.</summary>
    public IReadOnlyList<Segment> Segments { get; }

    /// <summary>The adapter of each row (-1: none).</summary>
    public IReadOnlyList<int> RowAdapters { get; }

    /// <summary>The most rows in one segment (the GPU launchers spread a segment's row tiles over that many slots).</summary>
    public int LongestSegment { get; }

    /// <summary>Whether every row lies in a segment with an adapter ≥ 0 (what a per-adapter base, grouped experts, needs).</summary>
    public bool EveryRowHasAdapter { get; }

    /// <summary>(start, length, adapter) per segment, as the kernels read them.</summary>
    internal int[] Triples { get; }

    /// <summary>
    /// A table over <paramref name="rows"/> rows and <paramref name="adapters"/> adapters from explicit
    /// segments (any order; rows in no segment get no adapter; empty segments are allowed).
    /// </summary>
    /// <exception cref="ArgumentException">A segment lies outside the rows, overlaps another, or names an adapter outside [-1, adapters).</exception>
    public static SegmentTable FromSegments(int rows, int adapters, IEnumerable<Segment> segments)
    {
        const string op = "SegmentTable.FromSegments";
        ArgumentNullException.ThrowIfNull(segments);
        CheckCounts(op, rows, adapters);
        Segment[] list = segments.ToArray();
        var owner = new int[rows];
        Array.Fill(owner, -1);
        for (int s = 0; s < list.Length; s++)
        {
            var (start, length, adapter) = list[s];
            if (start < 0 || length < 0 || (long)start + length > rows)
                throw new ArgumentException(
                    $"{op}: segments[{s}] = (start {start}, length {length}) is not inside the {rows} rows of the batch (it needs 0 <= start, 0 <= length, start + length <= {rows}).",
                    nameof(segments));
            if (adapter < -1 || adapter >= adapters)
                throw new ArgumentException(
                    $"{op}: segments[{s}] uses adapter {adapter}; an adapter index is -1 (none) or in [0, {adapters}).", nameof(segments));
            for (int m = start; m < start + length; m++)
            {
                if (owner[m] >= 0)
                    throw new ArgumentException($"{op}: segments[{owner[m]}] and segments[{s}] overlap at row {m}; each row belongs to one segment.",
                                                nameof(segments));
                owner[m] = s;
            }
        }
        return new SegmentTable(rows, adapters, list);
    }

    /// <summary>
    /// A table from one adapter index per row (-1: none), as PEFT's <c>adapter_names</c> gives them:
    /// each run of equal indices becomes one segment, so rows that share an adapter and sit together
    /// share its staged weights.
    /// </summary>
    /// <exception cref="ArgumentException">An index lies outside [-1, adapters).</exception>
    public static SegmentTable FromRowAdapters(ReadOnlySpan<int> rowAdapters, int adapters)
    {
        const string op = "SegmentTable.FromRowAdapters";
        CheckCounts(op, rowAdapters.Length, adapters);
        var segments = new List<Segment>();
        for (int m = 0; m < rowAdapters.Length;)
        {
            int adapter = rowAdapters[m];
            if (adapter < -1 || adapter >= adapters)
                throw new ArgumentException($"{op}: rowAdapters[{m}] = {adapter}; an adapter index is -1 (none) or in [0, {adapters}).",
                                            nameof(rowAdapters));
            int end = m + 1;
            while (end < rowAdapters.Length && rowAdapters[end] == adapter) end++;
            if (adapter >= 0) segments.Add(new Segment(m, end - m, adapter));
            m = end;
        }
        return new SegmentTable(rowAdapters.Length, adapters, segments.ToArray());
    }

    private static void CheckCounts(string op, int rows, int adapters)
    {
        if (rows < 0) throw new ArgumentOutOfRangeException(nameof(rows), rows, $"{op}: the row count must be >= 0.");
        if (adapters < 0) throw new ArgumentOutOfRangeException(nameof(adapters), adapters, $"{op}: the adapter count must be >= 0.");
    }

    public override string ToString() =>
        $"SegmentTable({Rows} rows, {Adapters} adapters: {string.Join(", ", Segments.Select(s => $"[{s.Start}, {s.Start + s.Length}) -> {s.Adapter}"))})";
}
