// AdapterSet: many adapters of different ranks over one frozen base, mixed per row as PEFT's
// adapter_names (null or "__base__": the base alone), on the CPU and under the SIMT emulator, against
// each row through the single-adapter LoRA reference in double with the adapter's own (unpadded) rank;
// load, swap and unload write one slot in place (no allocation, the other slots untouched).
//
// Tolerances: Tolerance.Bounds with K = in + r + 2 (as SegmentedTests), F32.
using LoraKernels.Layers;

namespace LoraKernels.Tests.SegmentedAdapters;

[TestFixture]
public sealed class AdapterSetTests
{
    private const int InFeatures = 33, OutFeatures = 20, MaxRank = 8;
    private static readonly int[] Ranks = [2, 5, 8];

    /// <summary>One adapter's values: A [r, in], B [out, r], scale.</summary>
    private sealed record AdapterValues(string Name, int Rank, float[] A, float[] B, float Scale);

    private static (float[] W0, float[] Bias, AdapterValues[] Adapters) MakeModel(ulong seed)
    {
        var data = new TestData(seed);
        float[] w0 = data.NonZero(OutFeatures * InFeatures, 1f / MathF.Sqrt(InFeatures));
        float[] bias = data.NonZero(OutFeatures, 0.5f);
        var adapters = Ranks.Select((r, i) => new AdapterValues($"task{i}", r, data.NonZero(r * InFeatures, 1f / MathF.Sqrt(InFeatures)),
                                                               data.NonZero(OutFeatures * r, 1f / MathF.Sqrt(r)), 0.5f + i)).ToArray();
        return (w0, bias, adapters);
    }

    private static AdapterSet Load(Device device, float[] w0, float[] bias, IEnumerable<AdapterValues> adapters, int capacity = 4)
    {
        using Tensor w = Tensor.FromArray(device, w0, OutFeatures, InFeatures);
        using Tensor b = Tensor.FromArray(device, bias, OutFeatures);
        var set = new AdapterSet(device, w, b, capacity, MaxRank);
        foreach (AdapterValues adapter in adapters) Load(set, adapter);
        return set;
    }

    private static void Load(AdapterSet set, AdapterValues adapter)
    {
        using Tensor a = Tensor.FromArray(Device.Cpu, adapter.A, adapter.Rank, InFeatures);  // another device: values are copied
        using Tensor b = Tensor.FromArray(Device.Cpu, adapter.B, OutFeatures, adapter.Rank);
        set.Load(adapter.Name, a, b, adapter.Scale);
    }

    /// <summary>y and its Σ|terms| for rows using the named adapters (null: none), each row by the single-adapter LoRA reference.</summary>
    private static (double[] Y, double[] Abs) Reference_(float[] x, float[] w0, float[] bias, IReadOnlyList<AdapterValues?> rows)
    {
        var y = new double[rows.Count * OutFeatures];
        var abs = new double[y.Length];
        for (int m = 0; m < rows.Count; m++)
        {
            AdapterValues? a = rows[m];
            var row = Reference.LoraForward(1, InFeatures, OutFeatures, a?.Rank ?? 0, x[(m * InFeatures)..((m + 1) * InFeatures)], w0, bias,
                                            a?.A ?? [], a?.B ?? [], a?.Scale ?? 0f, 0f, 0);
            row.Y.CopyTo(y, m * OutFeatures);
            row.YAbs.CopyTo(abs, m * OutFeatures);
        }
        return (y, abs);
    }

    [TestCase(DeviceKind.Cpu, 5)]
    [TestCase(DeviceKind.Simt, 5)]
    [TestCase(DeviceKind.Cpu, 40)]
    [TestCase(DeviceKind.Simt, 40)]
    public void MixedBatchMatchesEachRowsOwnAdapter(DeviceKind kind, int m)
    {
        Device device = kind == DeviceKind.Cpu ? Device.Cpu : Device.Simt;
        var (w0, bias, adapters) = MakeModel(11);
        var data = new TestData(12);
        float[] x = data.NonZero(m * InFeatures);
        // Row m: task(m mod 3), except every fifth row the base (alternately null and "__base__").
        var names = new string?[m];
        var rows = new AdapterValues?[m];
        for (int i = 0; i < m; i++)
        {
            bool none = i % 5 == 4;
            names[i] = none ? (i % 10 == 4 ? null : AdapterSet.BaseName) : adapters[i % 3].Name;
            rows[i] = none ? null : adapters[i % 3];
        }
        var (reference, abs) = Reference_(x, w0, bias, rows);
        Expect.NotVacuous("y", reference);
        using AdapterSet set = Load(device, w0, bias, adapters);
        Assert.That(set.Names, Is.EqualTo(adapters.Select(a => a.Name)));
        Assert.That(Enumerable.Range(0, 3).Select(set.RankOf), Is.EqualTo(Ranks));
        using Tensor xs = Tensor.FromArray(device, x, m, InFeatures);
        using Tensor y = set.Forward(xs, names);
        Expect.Close($"{device} mixed batch", y.ToArray(), reference, Tolerance.Bounds(reference, abs, InFeatures + MaxRank + 2, DType.F32));
    }

    [TestCase(DeviceKind.Cpu)]
    [TestCase(DeviceKind.Simt)]
    public void SwapAndUnloadTouchOneSlotWithoutReallocating(DeviceKind kind)
    {
        Device device = kind == DeviceKind.Cpu ? Device.Cpu : Device.Simt;
        var (w0, bias, adapters) = MakeModel(21);
        using AdapterSet set = Load(device, w0, bias, adapters);
        Tensor aTable = set.ATable, bTable = set.BTable;
        float[] aBefore = aTable.ToArray(), bBefore = bTable.ToArray();
        long allocations = device.LiveAllocations;

        // Swap task1 for a rank-3 adapter: only slot 1 changes (its padding included); no buffer is allocated.
        var replacement = new AdapterValues("task1", 3, new TestData(22).NonZero(3 * InFeatures), new TestData(23).NonZero(OutFeatures * 3), -1.5f);
        using (Tensor a = Tensor.FromArray(device, replacement.A, 3, InFeatures))
        using (Tensor b = Tensor.FromArray(device, replacement.B, OutFeatures, 3))
        {
            long withInputs = device.LiveAllocations;
            set.Swap("task1", a, b, replacement.Scale);
            Assert.That(device.LiveAllocations, Is.EqualTo(withInputs), "Swap allocates nothing that outlives it");
        }
        Assert.That(device.LiveAllocations, Is.EqualTo(allocations));
        Assert.That(set.ATable, Is.SameAs(aTable));
        Assert.That(set.BTable, Is.SameAs(bTable));
        Assert.That(set.RankOf(1), Is.EqualTo(3));
        float[] aAfter = aTable.ToArray(), bAfter = bTable.ToArray();
        int aSlot = MaxRank * InFeatures, bSlot = OutFeatures * MaxRank;
        foreach (int slot in new[] { 0, 2 })
        {
            Expect.Exact($"A slot {slot} untouched", aAfter[(slot * aSlot)..((slot + 1) * aSlot)], aBefore[(slot * aSlot)..((slot + 1) * aSlot)]);
            Expect.Exact($"B slot {slot} untouched", bAfter[(slot * bSlot)..((slot + 1) * bSlot)], bBefore[(slot * bSlot)..((slot + 1) * bSlot)]);
        }
        Assert.That(aAfter[(aSlot + 3 * InFeatures)..(2 * aSlot)].All(v => v == 0f), Is.True, "A's rows past rank 3 are zero padding");
        for (int j = 0; j < OutFeatures; j++)
            Assert.That(bAfter[(bSlot + j * MaxRank + 3)..(bSlot + (j + 1) * MaxRank)].All(v => v == 0f), Is.True, $"B row {j} padding");

        var data = new TestData(24);
        float[] x = data.NonZero(3 * InFeatures);
        var (reference, abs) = Reference_(x, w0, bias, [adapters[0], replacement, adapters[2]]);
        using (Tensor xs = Tensor.FromArray(device, x, 3, InFeatures))
        using (Tensor y = set.Forward(xs, ["task0", "task1", "task2"]))
            Expect.Close($"{device} after swap", y.ToArray(), reference, Tolerance.Bounds(reference, abs, InFeatures + MaxRank + 2, DType.F32));

        // Unload: the name is gone, a stale table that still points at the slot adds nothing, and the slot is reused.
        SegmentTable stale = set.Segments(["task0", "task1", "task2"]);
        set.Unload("task1");
        Assert.That(set.Names, Is.EqualTo(new[] { "task0", "task2" }));
        Assert.That(() => set.Segments(["task1"]), Throws.ArgumentException.With.Message.Contains("adapterNames[0] = 'task1' is not loaded"));
        (reference, abs) = Reference_(x, w0, bias, [adapters[0], null, adapters[2]]);
        using (Tensor xs = Tensor.FromArray(device, x, 3, InFeatures))
        using (Tensor y = set.Forward(xs, stale))
            Expect.Close($"{device} after unload", y.ToArray(), reference, Tolerance.Bounds(reference, abs, InFeatures + MaxRank + 2, DType.F32));
        Load(set, adapters[1] with { Name = "again" });
        Assert.That(set.SlotOf("again"), Is.EqualTo(1), "the freed slot is reused");
        Assert.That(device.LiveAllocations, Is.EqualTo(allocations));
    }

    [Test]
    public void LoadsATrainedLoraLayerAndMatchesIt()
    {
        var (w0, bias, _) = MakeModel(31);
        using Tensor w = Tensor.FromArray(Device.Cpu, w0, OutFeatures, InFeatures);
        using Tensor b = Tensor.FromArray(Device.Cpu, bias, OutFeatures);
        using var layer = new LoraLinear(Device.Cpu, w, b, r: 4, alpha: 8, seed: 5) { Training = false };
        layer.B.Value.CopyFrom(new TestData(32).NonZero(OutFeatures * 4, 0.5f));  // a trained-looking B
        using var set = new AdapterSet(Device.Cpu, w, b, capacity: 2, maxRank: MaxRank);
        set.Load("trained", layer);
        float[] x = new TestData(33).NonZero(6 * InFeatures);
        var trained = new AdapterValues("trained", 4, layer.A.Value.ToArray(), layer.B.Value.ToArray(), layer.Scale);
        var (reference, abs) = Reference_(x, w0, bias, Enumerable.Repeat<AdapterValues?>(trained, 6).ToArray());
        Expect.NotVacuous("y", reference);
        double[] bound = Tolerance.Bounds(reference, abs, InFeatures + MaxRank + 2, DType.F32);
        using Tensor xs = Tensor.FromArray(Device.Cpu, x, 6, InFeatures);
        using Tensor expected = layer.Forward(xs);
        using Tensor y = set.Forward(xs, Enumerable.Repeat<string?>("trained", 6).ToArray());
        Expect.Close("LoraLinear", expected.ToArray(), reference, bound);
        Expect.Close("AdapterSet", y.ToArray(), reference, bound);
    }

    [Test]
    public void BadLoadsAreRefused()
    {
        var (w0, bias, adapters) = MakeModel(41);
        using AdapterSet set = Load(Device.Cpu, w0, bias, adapters.Take(2), capacity: 2);
        using Tensor a = Tensor.FromArray(Device.Cpu, adapters[2].A, adapters[2].Rank, InFeatures);
        using Tensor b = Tensor.FromArray(Device.Cpu, adapters[2].B, OutFeatures, adapters[2].Rank);
        Assert.That(() => set.Load("third", a, b, 1f), Throws.InvalidOperationException.With.Message.Contains("all 2 slots hold adapters"));
        Assert.That(() => set.Load("task0", a, b, 1f), Throws.ArgumentException.With.Message.Contains("already loaded"));
        Assert.That(() => set.Load(AdapterSet.BaseName, a, b, 1f), Throws.ArgumentException.With.Message.Contains("other than \"__base__\""));
        set.Unload("task0");
        using Tensor tooWide = Tensor.Zeros(Device.Cpu, DType.F32, MaxRank + 1, InFeatures);
        Assert.That(() => set.Load("wide", tooWide, b, 1f), Throws.ArgumentException.With.Message.Contains("1 <= r <= 8"));
        using Tensor wrongB = Tensor.Zeros(Device.Cpu, DType.F32, OutFeatures, adapters[2].Rank + 1);
        Assert.That(() => set.Load("b", a, wrongB, 1f), Throws.ArgumentException.With.Message.Contains("b must be [out, r] = [20, 8]"));
        Assert.That(() => set.Load("nan-scale", a, b, float.NaN), Throws.TypeOf<ArgumentOutOfRangeException>());
        float[] poisoned = (float[])adapters[2].A.Clone();
        poisoned[InFeatures + 3] = float.PositiveInfinity;
        using Tensor infA = Tensor.FromArray(Device.Cpu, poisoned, adapters[2].Rank, InFeatures);
        Assert.That(() => set.Load("inf", infA, b, 1f), Throws.ArgumentException.With.Message.Contains("element 36 (row 1, column 3)"));
        Assert.That(set.Names, Is.EqualTo(new[] { "task1" }), "refused loads leave the set as it was");
        using Tensor x = Tensor.Zeros(Device.Cpu, DType.F32, 2, InFeatures);
        Assert.That(() => set.Forward(x, ["task1", "nope"]), Throws.ArgumentException.With.Message.Contains("adapterNames[1] = 'nope' is not loaded"));
    }
}
