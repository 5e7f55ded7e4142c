// Segment tables: built from segments or from per-row adapter indices, and every malformed table or
// mismatched op argument refused with a message that names it, before anything is allocated or launched
// (the device's live allocations are unchanged by a refused call).
namespace LoraKernels.Tests.SegmentedAdapters;

[TestFixture]
public sealed class SegmentTableTests
{
    [Test]
    public void RowAdaptersBecomeOneSegmentPerRun()
    {
        SegmentTable table = SegmentTable.FromRowAdapters([2, 2, -1, 0, 0, 2, -1], 3);
        Assert.That(table.Segments, Is.EqualTo(new[] { new Segment(0, 2, 2), new Segment(3, 2, 0), new Segment(5, 1, 2) }));
        Assert.That(table.RowAdapters, Is.EqualTo(new[] { 2, 2, -1, 0, 0, 2, -1 }));
        Assert.That(table.LongestSegment, Is.EqualTo(2));
        Assert.That(table.EveryRowHasAdapter, Is.False);
        Assert.That(SegmentTable.FromRowAdapters([1, 0], 2).EveryRowHasAdapter, Is.True);
    }

    [Test]
    public void SegmentsMayComeInAnyOrderAndBeEmpty()
    {
        SegmentTable table = SegmentTable.FromSegments(5, 2, [new Segment(3, 2, 1), new Segment(5, 0, 0), new Segment(0, 3, -1)]);
        Assert.That(table.RowAdapters, Is.EqualTo(new[] { -1, -1, -1, 1, 1 }));
    }

    public static IEnumerable<TestCaseData> BadTables()
    {
        TestCaseData Bad(string name, Segment[] segments, string message) => new TestCaseData(segments, message).SetName($"Rejects_{name}");
        yield return Bad("Overlap", [new Segment(0, 3, 0), new Segment(2, 2, 1)], "segments[0] and segments[1] overlap at row 2");
        yield return Bad("PastM", [new Segment(4, 3, 0)], "segments[0] = (start 4, length 3) is not inside the 6 rows");
        yield return Bad("NegativeStart", [new Segment(-1, 2, 0)], "is not inside the 6 rows");
        yield return Bad("NegativeLength", [new Segment(1, -1, 0)], "is not inside the 6 rows");
        yield return Bad("AdapterPastTable", [new Segment(0, 1, 0), new Segment(1, 1, 3)], "segments[1] uses adapter 3; an adapter index is -1 (none) or in [0, 3)");
        yield return Bad("AdapterBelowMinusOne", [new Segment(0, 1, -2)], "uses adapter -2");
    }

    [TestCaseSource(nameof(BadTables))]
    public void MalformedSegmentsAreRejected(Segment[] segments, string message)
    {
        Assert.That(() => SegmentTable.FromSegments(6, 3, segments),
                    Throws.ArgumentException.With.Message.Contains(message).And.Property("ParamName").EqualTo("segments"));
    }

    [Test]
    public void RowAdapterOutsideTheTableIsRejected()
    {
        Assert.That(() => SegmentTable.FromRowAdapters([0, 1, 4], 3),
                    Throws.ArgumentException.With.Message.Contains("rowAdapters[2] = 4").And.Property("ParamName").EqualTo("rowAdapters"));
        Assert.That(() => SegmentTable.FromRowAdapters([-3], 3), Throws.ArgumentException.With.Message.Contains("rowAdapters[0] = -3"));
    }

    /// <summary>A table that does not fit the op's tensors is refused before anything is allocated, on the CPU and the emulator alike.</summary>
    [TestCase(DeviceKind.Cpu)]
    [TestCase(DeviceKind.Simt)]
    public void MismatchedTableIsRejectedBeforeAnyLaunch(DeviceKind kind)
    {
        Device device = kind == DeviceKind.Cpu ? Device.Cpu : Device.Simt;
        const int m = 4, inFeatures = 5, outFeatures = 3, r = 2, n = 3;
        using Tensor x = Tensor.Zeros(device, DType.F32, m, inFeatures);
        using Tensor w0 = Tensor.Zeros(device, DType.F32, outFeatures, inFeatures);
        using Tensor w0Table = Tensor.Zeros(device, DType.F32, n, outFeatures, inFeatures);
        using Tensor a = Tensor.Zeros(device, DType.F32, n, r, inFeatures);
        using Tensor b = Tensor.Zeros(device, DType.F32, n, outFeatures, r);
        using Tensor scales = Tensor.Zeros(device, DType.F32, n);
        using Tensor u = Tensor.Zeros(device, DType.F32, m, r);
        using Tensor dy = Tensor.Zeros(device, DType.F32, m, outFeatures);
        using Tensor badA = Tensor.Zeros(device, DType.F32, n, r, inFeatures + 1);
        using Tensor badScales = Tensor.Zeros(device, DType.F32, n + 1);
        using Tensor zeroRank = Tensor.Zeros(device, DType.F32, n, 0, inFeatures);
        long before = device.LiveAllocations;
        void Refused(TestDelegate call, string message, string parameter)
        {
            Assert.That(call, Throws.ArgumentException.With.Message.Contains(message).And.Property("ParamName").EqualTo(parameter));
            Assert.That(device.LiveAllocations, Is.EqualTo(before), $"nothing allocated before refusing: {message}");
        }
        SegmentTable wrongRows = SegmentTable.FromRowAdapters([0, 1, 2], n);
        SegmentTable wrongAdapters = SegmentTable.FromRowAdapters([0, 1, 2, 3], 4);
        SegmentTable uncovered = SegmentTable.FromRowAdapters([0, -1, 2, 1], n);
        Refused(() => Segmented.Forward(x, w0, null, a, b, scales, wrongRows), "the segment table is over 3 rows, but x has M = 4", "segments");
        Refused(() => Segmented.Forward(x, w0, null, a, b, scales, wrongAdapters), "indexes 4 adapters, but the tables hold 3", "segments");
        Refused(() => Segmented.Backward(x, w0, a, b, scales, u, dy, wrongRows), "over 3 rows", "segments");
        Refused(() => Segmented.GroupedForward(x, w0Table, a, b, scales, uncovered), "row 1 is in no segment with an adapter", "segments");
        Refused(() => Segmented.GroupedForward(x, w0Table, a, null, scales, uncovered), "come together", "bTable");
        Refused(() => Segmented.Forward(x, w0, null, badA, b, scales, uncovered), "aTable must be [adapters, r, in] = [adapters, r, 5]", "aTable");
        Refused(() => Segmented.Forward(x, w0, null, a, b, badScales, uncovered), "scales must be [adapters] = [3]", "scales");
        Assert.That(() => Segmented.Forward(x, w0, null, zeroRank, b, scales, uncovered),
                    Throws.TypeOf<ArgumentOutOfRangeException>().With.Message.Contains("r = 0"));
    }
}
