// Many LoRA adapters over one frozen base layer, for batches that mix them: PEFT's mixed-batch inference
// (model(..., adapter_names=[...]), REFERENCE.md 7.4) fused into one call, as Punica, S-LoRA and vLLM's
// multi-LoRA serve them. The adapters live in fixed tables allocated once at construction, one slot each:
// A [capacity, maxRank, in], B [capacity, out, maxRank], scales [capacity] (F32). Load, Swap and Unload
// write one slot in place (a host round trip of that adapter's r·(in + out) values), so the other
// adapters are neither copied nor reallocated. Ranks up to maxRank share the tables by padding: an
// adapter of rank r keeps zeros in rows r.. of its A slot and columns r.. of its B slot, which add
// nothing. Forward runs Ops.Segmented.Forward: one dense base product x·W0ᵀ for the whole batch, then
// each row's adapter.
using LoraKernels.Ops;

namespace LoraKernels.Layers;

public sealed class AdapterSet : IDisposable
{
    /// <summary>The name PEFT gives a row that uses no adapter (adapter_names' "__base__"); null means the same.</summary>
    public const string BaseName = "__base__";

    private readonly string?[] _slots;
    private readonly int[] _ranks;
    private bool _disposed;

    /// <summary>
    /// A set of up to <paramref name="capacity"/> adapters of rank ≤ <paramref name="maxRank"/> over the frozen
    /// <paramref name="w0"/> [out, in] and <paramref name="bias"/> [out] (copied to <paramref name="device"/> in
    /// <paramref name="dtype"/>; finite, as every frozen base). Every slot starts empty (zeros).
    /// </summary>
    public AdapterSet(Device device, Tensor w0, Tensor? bias, int capacity, int maxRank, DType dtype = DType.F32)
    {
        const string op = "AdapterSet";
        ArgumentNullException.ThrowIfNull(device);
        if (capacity < 1) throw new ArgumentOutOfRangeException(nameof(capacity), capacity, $"{op}: capacity must be >= 1.");
        if (maxRank < 1) throw new ArgumentOutOfRangeException(nameof(maxRank), maxRank, $"{op}: maxRank must be >= 1.");
        Base = DenseLinear.Create(op, device, w0, bias, dtype, (outFeatures, inFeatures) =>
        {
            if ((long)capacity * maxRank * Math.Max(inFeatures, outFeatures) > Checks.MaxElements)
                throw new ArgumentOutOfRangeException(nameof(capacity), capacity,
                    $"{op}: tables of {capacity} adapters of rank {maxRank} over [{outFeatures}, {inFeatures}] exceed 2^31 - 1 elements, the kernels' 32-bit indexing.");
        });
        try
        {
            ATable = Tensor.Zeros(device, dtype, capacity, maxRank, InFeatures);
            BTable = Tensor.Zeros(device, dtype, capacity, OutFeatures, maxRank);
            Scales = Tensor.Zeros(device, DType.F32, capacity);
        }
        catch
        {
            Dispose();
            throw;
        }
        _slots = new string?[capacity];
        _ranks = new int[capacity];
    }

    /// <summary>The frozen base (owned).</summary>
    public DenseLinear Base { get; }

    public Device Device => Base.Device;
    public DType DType => Base.DType;
    public int InFeatures => Base.InFeatures;
    public int OutFeatures => Base.OutFeatures;
    public int Capacity => _slots.Length;
    public int MaxRank => (int)ATable!.Shape[1];

    /// <summary>A of every slot [capacity, maxRank, in] (zero rows past each adapter's rank, zero for empty slots).</summary>
    public Tensor ATable { get; } = null!;

    /// <summary>B of every slot [capacity, out, maxRank] (zero columns past each adapter's rank).</summary>
    public Tensor BTable { get; } = null!;

    /// <summary>The scale s of every slot [capacity] (F32; 0 for empty slots).</summary>
    public Tensor Scales { get; } = null!;

    /// <summary>The loaded adapters' names, in slot order.</summary>
    public IReadOnlyList<string> Names => _slots.Where(n => n is not null).Select(n => n!).ToArray();

    /// <summary>The slot holding <paramref name="name"/> (the index a SegmentTable uses for it).</summary>
    /// <exception cref="ArgumentException">No adapter of that name is loaded.</exception>
    public int SlotOf(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        int slot = Array.IndexOf(_slots, name);
        if (slot < 0)
            throw new ArgumentException(
                $"AdapterSet: no adapter '{name}' is loaded (loaded: {(Names.Count == 0 ? "none" : string.Join(", ", Names))}).", nameof(name));
        return slot;
    }

    /// <summary>The rank of the adapter in <paramref name="slot"/> (0 when empty).</summary>
    public int RankOf(int slot) => _ranks[slot];

    /// <summary>
    /// Loads an adapter A [r, in], B [out, r] (1 ≤ r ≤ MaxRank, any dtype and device: the values are copied) with
    /// scale s (alpha/r, or alpha/√r for rsLoRA) into a free slot, which it returns. Nothing else moves.
    /// </summary>
    public int Load(string name, Tensor a, Tensor b, float scale)
    {
        const string op = "AdapterSet.Load";
        ThrowIfDisposed();
        CheckName(op, name);
        if (Array.IndexOf(_slots, name) >= 0)
            throw new ArgumentException($"{op}: an adapter '{name}' is already loaded; Swap replaces it, Unload removes it.", nameof(name));
        int slot = Array.IndexOf(_slots, null);
        if (slot < 0)
            throw new InvalidOperationException($"{op}: all {Capacity} slots hold adapters ({string.Join(", ", Names)}); unload one first.");
        Write(op, slot, a, b, scale);
        _slots[slot] = name;
        return slot;
    }

    /// <summary>Loads a trained LoRA layer's adapter (its A, B and scale; its base must be this set's base, only the shapes are checked).</summary>
    public int Load(string name, LoraLinear layer)
    {
        ArgumentNullException.ThrowIfNull(layer);
        return Load(name, layer.A.Value, layer.B.Value, layer.Scale);
    }

    /// <summary>Replaces the adapter <paramref name="name"/> in its own slot (another rank up to MaxRank is fine); the other slots are untouched.</summary>
    public void Swap(string name, Tensor a, Tensor b, float scale)
    {
        ThrowIfDisposed();
        Write("AdapterSet.Swap", SlotOf(name), a, b, scale);
    }

    /// <summary>Removes the adapter <paramref name="name"/>: its slot is zeroed (a stale index to it adds nothing) and free again.</summary>
    public void Unload(string name)
    {
        ThrowIfDisposed();
        int slot = SlotOf(name);
        ZeroSlot(slot);
        _slots[slot] = null;
        _ranks[slot] = 0;
    }

    /// <summary>
    /// The segment table of a batch whose row m uses adapter <paramref name="adapterNames"/>[m] (null or
    /// <see cref="BaseName"/>: the base alone). Unknown names are an ArgumentException naming the row.
    /// </summary>
    public SegmentTable Segments(IReadOnlyList<string?> adapterNames)
    {
        ArgumentNullException.ThrowIfNull(adapterNames);
        ThrowIfDisposed();
        var slots = new int[adapterNames.Count];
        for (int m = 0; m < slots.Length; m++)
        {
            string? name = adapterNames[m];
            if (name is null || name == BaseName)
            {
                slots[m] = -1;
                continue;
            }
            slots[m] = Array.IndexOf(_slots, name);
            if (slots[m] < 0)
                throw new ArgumentException(
                    $"AdapterSet: adapterNames[{m}] = '{name}' is not loaded (loaded: {(Names.Count == 0 ? "none" : string.Join(", ", Names))}; null or \"{BaseName}\" for none).",
                    nameof(adapterNames));
        }
        return SegmentTable.FromRowAdapters(slots, Capacity);
    }

    /// <summary>y [M, out] = x W0ᵀ + bias + s_a·(x Aᵀ_a) Bᵀ_a, a being row m's adapter (PEFT's adapter_names, fused).</summary>
    public Tensor Forward(Tensor x, IReadOnlyList<string?> adapterNames) => Forward(x, Segments(adapterNames));

    /// <summary>y for a batch whose segments index this set's slots (<see cref="SlotOf"/>; -1: none).</summary>
    public Tensor Forward(Tensor x, SegmentTable segments)
    {
        ThrowIfDisposed();
        var (y, u) = Segmented.Forward(x, Base.Weight, Base.Bias, ATable, BTable, Scales, segments);
        u.Dispose();
        return y;
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        ATable?.Dispose();
        BTable?.Dispose();
        Scales?.Dispose();
        Base?.Dispose();
    }

    private void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(_disposed, this);

    private static void CheckName(string op, string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        if (name.Length == 0 || name == BaseName)
            throw new ArgumentException($"{op}: an adapter needs a non-empty name other than \"{BaseName}\" (which means no adapter).", nameof(name));
    }

    /// <summary>Checks A [r, in], B [out, r] and the scale, then writes slot <paramref name="slot"/>: A and B padded to MaxRank with zeros.</summary>
    private void Write(string op, int slot, Tensor a, Tensor b, float scale)
    {
        Checks.Alive(a, op, nameof(a));
        Checks.Alive(b, op, nameof(b));
        if (a.Rank != 2 || a.Shape[0] < 1 || a.Shape[0] > MaxRank || a.Shape[1] != InFeatures)
            throw new ArgumentException(
                $"{op}: a must be [r, in] = [r, {InFeatures}] with 1 <= r <= {MaxRank} (the set's maxRank), got {a.Describe()}", nameof(a));
        int r = (int)a.Shape[0];
        if (b.Rank != 2 || b.Shape[0] != OutFeatures || b.Shape[1] != r)
            throw new ArgumentException($"{op}: b must be [out, r] = [{OutFeatures}, {r}] (r from a), got {b.Describe()}", nameof(b));
        Checks.Finite(op, nameof(scale), scale);
        float[] aValues = a.ToArray(), bValues = b.ToArray();
        CheckFinite(op, nameof(a), aValues, InFeatures);
        CheckFinite(op, nameof(b), bValues, r);

        int maxRank = MaxRank;
        var aSlot = new float[(long)maxRank * InFeatures];
        Array.Copy(aValues, aSlot, aValues.Length);  // rows r.. stay zero
        var bSlot = new float[(long)OutFeatures * maxRank];
        for (int j = 0; j < OutFeatures; j++) Array.Copy(bValues, (long)j * r, bSlot, (long)j * maxRank, r);  // columns r.. stay zero
        WriteSlot(ATable, slot, aSlot);
        WriteSlot(BTable, slot, bSlot);
        WriteSlot(Scales, slot, [scale]);
        _ranks[slot] = r;
    }

    private void ZeroSlot(int slot)
    {
        WriteSlot(ATable, slot, new float[(long)MaxRank * InFeatures]);
        WriteSlot(BTable, slot, new float[(long)OutFeatures * MaxRank]);
        WriteSlot(Scales, slot, [0f]);
    }

    /// <summary>Copies <paramref name="values"/> (one slot's worth) into slot <paramref name="slot"/> of <paramref name="table"/>, in place.</summary>
    private static void WriteSlot(Tensor table, int slot, float[] values)
    {
        using Tensor staged = Tensor.FromArray(table.Device, values, table.DType, values.Length);
        table.Device.Copy(staged.Buffer, 0, table.Buffer, slot * staged.SizeInBytes, staged.SizeInBytes);
    }

    private static void CheckFinite(string op, string name, float[] values, int columns)
    {
        int index = Array.FindIndex(values, v => !float.IsFinite(v));
        if (index >= 0)
            throw new ArgumentException(
                $"{op}: {name} must be finite, but element {index} (row {index / columns}, column {index % columns}) is {values[index]}; an adapter holding NaN or Inf would poison every row that uses it.",
                name);
    }
}
