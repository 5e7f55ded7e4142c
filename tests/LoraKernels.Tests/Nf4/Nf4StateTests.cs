using System.Text;

namespace LoraKernels.Tests.Nf4;

/// <summary>bitsandbytes' serialised 4-bit state (REFERENCE.md §8.5): keys in bnb's order, dtypes, shapes, the JSON byte for byte, and a round trip.</summary>
[TestFixture(DeviceKind.Cpu)]
[TestFixture(DeviceKind.Simt)]
public sealed class Nf4StateTests(DeviceKind kind)
{
    private Device Device => kind == DeviceKind.Cpu ? Device.Cpu : Device.Simt;

    [Test]
    public void PlainStateHasBnbKeysAndJson()
    {
        float[] values = new TestData(31).NonZero(13 * 33);
        using Tensor w = Tensor.FromArray(Device, values, 13, 33);
        using QuantizedWeight q = Ops.Nf4.Quantize(w, QuantType.Nf4, 64);
        IReadOnlyList<StateTensor> state = Ops.Nf4.ExportState(q);
        Assert.That(state.Select(t => t.Key), Is.EqualTo(new[] { "weight", "weight.absmax", "weight.quant_map", "weight.quant_state.bitsandbytes__nf4" }));
        Assert.That(state[0].Shape, Is.EqualTo(new long[] { (13 * 33 + 1) / 2, 1 }));
        Assert.That(state[0].DType, Is.EqualTo("U8"));
        Assert.That(state[1].DType, Is.EqualTo("F32"));
        Assert.That(state[1].Shape, Is.EqualTo(new long[] { 7 }));
        Assert.That(state[2].Data, Is.EqualTo(Nf4Reference.Table(QuantType.Nf4)));
        Assert.That(Encoding.UTF8.GetString((byte[])state[3].Data),
                    Is.EqualTo("{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float32\", \"shape\": [13, 33]}"));
        RoundTrip(q, state, values);
    }

    [Test]
    public void NestedBf16StateRoundTrips()
    {
        float[] values = new TestData(32).NonZero(300 * 64, 1f, DType.BF16);
        using Tensor w = Tensor.FromArray(Device, values, DType.BF16, 300, 64);
        using QuantizedWeight q = Ops.Nf4.Quantize(w, QuantType.Nf4, 64, doubleQuant: true);
        IReadOnlyList<StateTensor> state = Ops.Nf4.ExportState(q);
        Assert.That(state.Select(t => t.Key), Is.EqualTo(new[]
        {
            "weight", "weight.absmax", "weight.quant_map", "weight.nested_absmax", "weight.nested_quant_map", "weight.quant_state.bitsandbytes__nf4",
        }));
        Assert.That(state[1].DType, Is.EqualTo("U8"));
        Assert.That(state[3].Shape, Is.EqualTo(new long[] { 2 }));
        Assert.That(state[4].Data, Is.EqualTo(Nf4Reference.DynamicSigned()));
        string json = Encoding.UTF8.GetString((byte[])state[5].Data);
        Assert.That(json, Is.EqualTo("{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": [300, 64], " +
                                     $"\"nested_blocksize\": 256, \"nested_dtype\": \"float32\", \"nested_offset\": {Ops.Nf4.PythonFloat(q.Offset)}}}"));
        RoundTrip(q, state, values);
    }

    [TestCase(1f, "1.0")]
    [TestCase(0.5f, "0.5")]
    [TestCase(0.1f, "0.10000000149011612")]
    [TestCase(7.62939453125e-06f, "7.62939453125e-06")]  // 2^-17: exact in float, Python repr switches to exponent below 1e-4
    [TestCase(0f, "0.0")]
    public void OffsetsAreWrittenAsPythonsRepr(float value, string repr) => Assert.That(Ops.Nf4.PythonFloat(value), Is.EqualTo(repr));

    [Test]
    public void MalformedStateIsRejected()
    {
        using Tensor w = Tensor.FromArray(Device, new TestData(33).NonZero(64), 8, 8);
        using QuantizedWeight q = Ops.Nf4.Quantize(w);
        List<StateTensor> state = [.. Ops.Nf4.ExportState(q)];
        long before = Device.LiveAllocations;
        var wrongTable = state.Select(t => t.Key == "weight.quant_map" ? t with { Data = Nf4Reference.Table(QuantType.Fp4) } : t).ToList();
        Assert.That(Assert.Throws<InvalidFileException>(() => Ops.Nf4.ImportState(Device, wrongTable))!.Key, Is.EqualTo("weight.quant_map"));
        var shortCodes = state.Select(t => t.Key == "weight" ? t with { Data = new byte[3] } : t).ToList();
        Assert.That(Assert.Throws<InvalidFileException>(() => Ops.Nf4.ImportState(Device, shortCodes))!.Message, Does.Contain("codes"));
        Assert.That(Assert.Throws<InvalidFileException>(() => Ops.Nf4.ImportState(Device, state.Where(t => t.Key != "weight.absmax")))!.Key,
                    Is.EqualTo("weight.absmax"));
        Assert.That(Device.LiveAllocations, Is.EqualTo(before), "nothing left behind by a rejected import");
    }

    private void RoundTrip(QuantizedWeight q, IReadOnlyList<StateTensor> state, float[] values)
    {
        using QuantizedWeight back = Ops.Nf4.ImportState(Device, state);
        Assert.That(back.Shape, Is.EqualTo(q.Shape));
        Assert.That(back.DType, Is.EqualTo(q.DType));
        Assert.That(back.IsNested, Is.EqualTo(q.IsNested));
        Assert.That(back.Offset, Is.EqualTo(q.Offset));
        using Tensor original = Ops.Nf4.Dequantize(q), restored = Ops.Nf4.Dequantize(back);
        Expect.Exact("round trip", restored.ToArray(), original.ToArray());
        Assert.That(original.ToArray().Zip(values).Max(p => Math.Abs(p.First - p.Second)), Is.GreaterThan(0f), "lossy: not a copy of the input");
    }
}
