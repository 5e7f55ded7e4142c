// The segmented op family: many LoRA adapters over one batch (Punica's SGMV, S-LoRA, vLLM multi-LoRA,
// PEFT's adapter_names mixed batch, fused), and grouped expert products (MoE: each segment's base from
// a table too). A batch x [M, in] is split by a SegmentTable into segments of rows, each with an
// adapter index into tables A [n, r, in], B [n, out, r] and scales s [n] (F32); -1 means no adapter.
//   Forward:        y = x W0ᵀ + bias + s_a·(x Aᵀ_a) Bᵀ_a   (one dense base for the whole batch)
//   GroupedForward: y = x W_aᵀ + s_a·(x Aᵀ_a) Bᵀ_a          (W_a from a table [n, out, in]; every row needs an adapter)
// Ranks differ by padding: an adapter of rank r_a < r keeps zeros in rows r_a.. of its A and columns r_a..
// of its B (AdapterSet does this), and its gradients there stay zero. No dropout. Checks every argument,
// allocates the outputs, then dispatches to the device's kernels (native/cpu/segmented.cpp or
// kernels/segmented.cu).
using LoraKernels.Families.Segmented;

namespace LoraKernels.Ops;

public static class Segmented
{
    /// <summary>
    /// y = x W0ᵀ + bias + s_a·u Bᵀ_a with u = x Aᵀ_a for each row's adapter a (no adapter: the base alone).
    /// x [M, in], W0 [out, in], bias [out] or null, aTable [n, r, in] with r ≥ 1, bTable [n, out, r], all of
    /// W0's dtype and device; scales [n] F32; <paramref name="segments"/> over M rows and n adapters.
    /// Returns Y [M, out] and U [M, r] (F32, zero on rows without an adapter), which <see cref="Backward"/> needs.
    /// </summary>
    public static ForwardResult Forward(Tensor x, Tensor w0, Tensor? bias, Tensor aTable, Tensor bTable, Tensor scales,
                                               SegmentTable segments)
    {
        const string op = "Segmented.Forward";
        Dims d = Dense(op, x, w0, aTable, bTable, scales, segments);
        AdapterChecks.Bias(op, bias, new AdapterDims(d.M, d.In, d.Out, d.R, d.DType, d.Device));
        var (y, u) = RunForward(op, d, x, w0, null, bias, aTable, bTable, scales, segments);
        return new(y, u!);  // r >= 1: U exists
    }

    /// <summary>
    /// Gradients of <see cref="Forward"/> given dy [M, out] (W0's dtype) and the forward's u [M, r]: dx [M, in],
    /// dA [n, r, in] and dB [n, out, r] (each adapter's sum over its rows; zero for an adapter without rows),
    /// each only when requested (null otherwise). W0 is frozen.
    /// </summary>
    public static LoraGradients Backward(Tensor x, Tensor w0, Tensor aTable, Tensor bTable, Tensor scales,
                                                               Tensor u, Tensor dy, SegmentTable segments, bool needDx = true,
                                                               bool needDA = true, bool needDB = true)
    {
        const string op = "Segmented.Backward";
        Dims d = Dense(op, x, w0, aTable, bTable, scales, segments);
        return RunBackward(op, d, x, w0, null, aTable, bTable, scales, u, dy, segments, needDx, needDA, needDB);
    }

    /// <summary>
    /// Grouped expert products: y = x W_aᵀ (+ s_a·(x Aᵀ_a) Bᵀ_a when adapter tables are given) with W_a from
    /// <paramref name="w0Table"/> [n, out, in]; every row must lie in a segment with an adapter ≥ 0 (MoE tokens
    /// sorted by expert: one segment per expert). aTable, bTable and scales are given together or not at all
    /// (then U is null). Returns Y [M, out] and U [M, r] (F32).
    /// </summary>
    public static (Tensor Y, Tensor? U) GroupedForward(Tensor x, Tensor w0Table, Tensor? aTable, Tensor? bTable, Tensor? scales,
                                                       SegmentTable segments)
    {
        const string op = "Segmented.GroupedForward";
        Dims d = Grouped(op, x, w0Table, aTable, bTable, scales, segments);
        return RunForward(op, d, x, null, w0Table, null, aTable, bTable, scales, segments);
    }

    /// <summary>Gradients of <see cref="GroupedForward"/>: dx = dy W_a + du A_a, and the adapter tables' dA, dB (when given and requested).</summary>
    public static LoraGradients GroupedBackward(Tensor x, Tensor w0Table, Tensor? aTable, Tensor? bTable,
                                                                      Tensor? scales, Tensor? u, Tensor dy, SegmentTable segments,
                                                                      bool needDx = true, bool needDA = true, bool needDB = true)
    {
        const string op = "Segmented.GroupedBackward";
        Dims d = Grouped(op, x, w0Table, aTable, bTable, scales, segments);
        return RunBackward(op, d, x, null, w0Table, aTable, bTable, scales, u, dy, segments, needDx, needDA && d.R > 0,
                           needDB && d.R > 0);
    }

    /// <summary>The dimensions every op validates once: rows, features, rank (0 without adapter tables), adapters.</summary>
    private readonly record struct Dims(long M, long In, long Out, long R, long Adapters, DType DType, Device Device);

    private static (Tensor Y, Tensor? U) RunForward(string op, Dims d, Tensor x, Tensor? w0, Tensor? w0Table, Tensor? bias,
                                                    Tensor? aTable, Tensor? bTable, Tensor? scales, SegmentTable segments)
    {
        AdapterChecks.OutputSize(op, "y", d.M, d.Out);
        AdapterChecks.OutputSize(op, "u", d.M, d.R);
        Tensor y = Tensor.Empty(d.Device, d.DType, d.M, d.Out);
        Tensor? u = null;
        try
        {
            if (d.R > 0) u = Tensor.Empty(d.Device, DType.F32, d.M, d.R);
            ISegmentedKernels.On(d.Device).Forward(x, w0, w0Table, bias, aTable, bTable, scales, segments, y, u);
            return (y, u);
        }
        catch
        {
            Checks.DisposeAll(y, u);
            throw;
        }
    }

    private static LoraGradients RunBackward(string op, Dims d, Tensor x, Tensor? w0, Tensor? w0Table,
                                                                   Tensor? aTable, Tensor? bTable, Tensor? scales, Tensor? u,
                                                                   Tensor dy, SegmentTable segments, bool needDx, bool needDA,
                                                                   bool needDB)
    {
        Checks.Alive(dy, op, nameof(dy));
        Checks.Shape(op, nameof(dy), dy, "M, out", [d.M, d.Out], d.DType, d.Device);
        if (d.R > 0)
        {
            Checks.Alive(u, op, nameof(u));
            Checks.Shape(op, nameof(u), u!, "M, r", [d.M, d.R], DType.F32, d.Device);
        }
        if (!needDx && !needDA && !needDB) return new(null, null, null);
        Tensor? dx = null, dA = null, dB = null;
        try
        {
            if (needDx) dx = Tensor.Empty(d.Device, d.DType, d.M, d.In);
            if (needDA) dA = Tensor.Empty(d.Device, d.DType, d.Adapters, d.R, d.In);
            if (needDB) dB = Tensor.Empty(d.Device, d.DType, d.Adapters, d.Out, d.R);
            ISegmentedKernels.On(d.Device).Backward(x, w0, w0Table, aTable, bTable, scales, u, dy, segments, dx, dA, dB);
            return new(dx, dA, dB);
        }
        catch
        {
            Checks.DisposeAll(dx, dA, dB);
            throw;
        }
    }

    /// <summary>W0 [out, in] sets dtype and device; x [M, in]; the adapter tables with r ≥ 1; the segment table over M rows and n adapters.</summary>
    private static Dims Dense(string op, Tensor x, Tensor w0, Tensor aTable, Tensor bTable, Tensor scales, SegmentTable segments)
    {
        Checks.Alive(w0, op, nameof(w0));
        (long outFeatures, long inFeatures) = Checks.Matrix(op, nameof(w0), w0, "out, in");
        long m = AdapterChecks.Activations(op, x, inFeatures, w0.DType, w0.Device, nameof(w0));
        Checks.Alive(aTable, op, nameof(aTable));
        var (n, r) = AdapterTables(op, aTable, bTable, scales, inFeatures, outFeatures, w0.DType, w0.Device);
        Table(op, segments, m, n);
        return new Dims(m, inFeatures, outFeatures, r, n, w0.DType, w0.Device);
    }

    /// <summary>W0 table [n, out, in] sets dtype, device and n; x [M, in]; the adapter tables (all or none); every row covered.</summary>
    private static Dims Grouped(string op, Tensor x, Tensor w0Table, Tensor? aTable, Tensor? bTable, Tensor? scales,
                                SegmentTable segments)
    {
        Checks.Alive(w0Table, op, nameof(w0Table));
        if (w0Table.Rank != 3 || w0Table.Shape[1] < 1 || w0Table.Shape[2] < 1)
            throw new ArgumentException(
                $"{op}: w0Table must be [adapters, out, in] with out, in >= 1, got {w0Table.Describe()}", nameof(w0Table));
        Checks.Size(op, nameof(w0Table), w0Table);
        long n = w0Table.Shape[0], outFeatures = w0Table.Shape[1], inFeatures = w0Table.Shape[2];
        long m = AdapterChecks.Activations(op, x, inFeatures, w0Table.DType, w0Table.Device, nameof(w0Table));
        long r = 0;
        if (aTable is not null || bTable is not null || scales is not null)
        {
            if (aTable is null || bTable is null || scales is null)
                throw new ArgumentException(
                    $"{op}: aTable, bTable and scales come together (LoRA on every expert) or not at all; got aTable {Given(aTable)}, bTable {Given(bTable)}, scales {Given(scales)}.",
                    aTable is null ? nameof(aTable) : bTable is null ? nameof(bTable) : nameof(scales));
            Checks.Alive(aTable, op, nameof(aTable));
            long tables;
            (tables, r) = AdapterTables(op, aTable, bTable, scales, inFeatures, outFeatures, w0Table.DType, w0Table.Device);
            if (tables != n)
                throw new ArgumentException($"{op}: aTable holds {tables} adapters but w0Table holds {n} bases; one adapter per base.", nameof(aTable));
        }
        Table(op, segments, m, n);
        if (!segments.EveryRowHasAdapter)
            throw new ArgumentException(
                $"{op}: every row's base is its segment's adapter's, but row {segments.RowAdapters.ToList().FindIndex(a => a < 0)} is in no segment with an adapter ({segments}).",
                nameof(segments));
        return new Dims(m, inFeatures, outFeatures, r, n, w0Table.DType, w0Table.Device);
    }

    private static string Given(Tensor? tensor) => tensor is null ? "null" : "given";

    /// <summary>aTable [n, r, in] with r ≥ 1, bTable [n, out, r] of the base's dtype and device, scales [n] F32; returns (n, r).</summary>
    private static (long N, long R) AdapterTables(string op, Tensor aTable, Tensor bTable, Tensor scales, long inFeatures,
                                                  long outFeatures, DType dtype, Device device)
    {
        if (aTable.Rank != 3 || aTable.Shape[2] != inFeatures || aTable.DType != dtype || !ReferenceEquals(aTable.Device, device))
            throw new ArgumentException(
                $"{op}: aTable must be [adapters, r, in] = [adapters, r, {inFeatures}] with dtype {dtype} on {device}, got {aTable.Describe()}",
                nameof(aTable));
        Checks.Size(op, nameof(aTable), aTable);
        long n = aTable.Shape[0], r = aTable.Shape[1];
        if (r == 0)
            throw new ArgumentOutOfRangeException(nameof(aTable), $"{op}: aTable is {aTable.Describe()}, so r = 0; segmented LoRA needs rank r >= 1.");
        Checks.Alive(bTable, op, nameof(bTable));
        Checks.Shape(op, nameof(bTable), bTable, "adapters, out, r", [n, outFeatures, r], dtype, device);
        Checks.Alive(scales, op, nameof(scales));
        Checks.Shape(op, nameof(scales), scales, "adapters", [n], DType.F32, device);
        return (n, r);
    }

    /// <summary>The segment table must describe these M rows and index these n adapters.</summary>
    private static void Table(string op, SegmentTable segments, long m, long n)
    {
        ArgumentNullException.ThrowIfNull(segments);
        if (segments.Rows != m)
            throw new ArgumentException($"{op}: the segment table is over {segments.Rows} rows, but x has M = {m} rows.", nameof(segments));
        if (segments.Adapters != n)
            throw new ArgumentException(
                $"{op}: the segment table indexes {segments.Adapters} adapters, but the tables hold {n}; build it with the tables' adapter count.",
                nameof(segments));
    }
}
