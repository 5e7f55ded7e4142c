namespace LoraKernels.Tests.Nf4;

/// <summary>Malformed 4-bit inputs are rejected before anything is allocated or launched, naming the argument.</summary>
[TestFixture(DeviceKind.Cpu)]
[TestFixture(DeviceKind.Simt)]
public sealed class Nf4BadInputTests(DeviceKind kind)
{
    private Device Device => kind == DeviceKind.Cpu ? Device.Cpu : Device.Simt;

    private TException Rejects<TException>(TestDelegate call) where TException : Exception
    {
        long before = Device.LiveAllocations;
        var e = Assert.Throws<TException>(call)!;
        Assert.That(Device.LiveAllocations, Is.EqualTo(before), "live allocations after the rejected call");
        return e;
    }

    [TestCase(48)]
    [TestCase(16)]
    [TestCase(8192)]
    [TestCase(0)]
    public void BlockSizeMustBeAPowerOfTwoIn32To4096(int blockSize)
    {
        using Tensor w = Tensor.FromArray(Device, new TestData(1).NonZero(64), 8, 8);
        var e = Rejects<ArgumentOutOfRangeException>(() => Ops.Nf4.Quantize(w, QuantType.Nf4, blockSize));
        Assert.That(e.ParamName, Is.EqualTo("blockSize"));
    }

    [TestCase(float.NaN, 37)]
    [TestCase(float.PositiveInfinity, 0)]
    [TestCase(float.NegativeInfinity, 63)]
    public void NonFiniteWeightsNameTheFirstBadIndex(float bad, int index)
    {
        float[] values = new TestData(2).NonZero(64);
        values[index] = bad;
        if (index + 5 < 64) values[index + 5] = float.NaN;
        using Tensor w = Tensor.FromArray(Device, values, 8, 8);
        var e = Rejects<ArgumentException>(() => Ops.Nf4.Quantize(w));
        Assert.That(e.ParamName, Is.EqualTo("weight"));
        Assert.That(e.Message, Does.Contain($"element {index} "));
    }

    [Test]
    public void ShapesDevicesAndDisposalAreChecked()
    {
        var data = new TestData(3);
        using Tensor wDense = Tensor.FromArray(Device, data.NonZero(13 * 33), 13, 33);
        using QuantizedWeight w = Ops.Nf4.Quantize(wDense, QuantType.Nf4, 32);
        using Tensor xWrongIn = Tensor.FromArray(Device, data.NonZero(4 * 32), 4, 32);
        // The quantized base fixes in; an activation of the wrong width is x's fault.
        Assert.That(Rejects<ArgumentException>(() => Ops.Nf4.Matmul(xWrongIn, w, null)).ParamName, Is.EqualTo("x"));

        using Tensor x = Tensor.FromArray(Device, data.NonZero(4 * 33), 4, 33);
        using Tensor badBias = Tensor.FromArray(Device, data.NonZero(12), 12);
        Assert.That(Rejects<ArgumentException>(() => Ops.Nf4.Matmul(x, w, badBias)).ParamName, Is.EqualTo("bias"));

        // A quantized vector is not a matrix: Matmul needs [out, in].
        using Tensor vector = Tensor.FromArray(Device, data.NonZero(33), 33);
        using QuantizedWeight quantizedVector = Ops.Nf4.Quantize(vector, QuantType.Nf4, 32);
        Assert.That(Rejects<ArgumentException>(() => Ops.Nf4.Matmul(x, quantizedVector, null)).ParamName, Is.EqualTo("w"));

        using Tensor a = Tensor.FromArray(Device, data.NonZero(4 * 33), 4, 33);
        using Tensor bWrongRank = Tensor.FromArray(Device, data.NonZero(13 * 3), 13, 3);
        Assert.That(Rejects<ArgumentException>(() => Ops.Qlora.Forward(x, w, null, a, bWrongRank, 1f)).ParamName, Is.EqualTo("b"));
        using Tensor aBf16 = Tensor.FromArray(Device, data.NonZero(4 * 33), DType.BF16, 4, 33);
        Assert.That(Rejects<ArgumentException>(() => Ops.Qlora.Forward(x, w, null, aBf16, bWrongRank, 1f)).ParamName, Is.EqualTo("a"));

        Device other = kind == DeviceKind.Cpu ? Device.Simt : Device.Cpu;
        using Tensor xElsewhere = Tensor.FromArray(other, data.NonZero(4 * 33), 4, 33);
        Assert.That(Rejects<ArgumentException>(() => Ops.Nf4.Matmul(xElsewhere, w, null)).ParamName, Is.EqualTo("x"));

        using Tensor empty = Tensor.Zeros(Device, DType.F32, 0, 4);
        Assert.That(Rejects<ArgumentException>(() => Ops.Nf4.Quantize(empty)).ParamName, Is.EqualTo("weight"));

        QuantizedWeight disposed = Ops.Nf4.Quantize(wDense, QuantType.Nf4, 32);
        disposed.Dispose();
        var e = Rejects<ObjectDisposedException>(() => Ops.Nf4.Dequantize(disposed));
        Assert.That(e.Message, Does.Contain("w"));
        Rejects<ObjectDisposedException>(() => Ops.Nf4.Matmul(x, disposed, null));
    }

    [Test]
    public void LoftQAndSvdRejectBadArguments()
    {
        var data = new TestData(4);
        using Tensor w = Tensor.FromArray(Device, data.NonZero(12 * 10), 12, 10);
        Assert.That(Rejects<ArgumentOutOfRangeException>(() => LoraKernels.Variants.LoftQ.Initialize(w, 11)).ParamName, Is.EqualTo("r"));
        Assert.That(Rejects<ArgumentOutOfRangeException>(() => LoraKernels.Variants.LoftQ.Initialize(w, 2, 0)).ParamName, Is.EqualTo("iterations"));
        Assert.That(Rejects<ArgumentOutOfRangeException>(() => LoraKernels.Variants.LoftQ.Initialize(w, 2, 1, QuantType.Nf4, 48)).ParamName, Is.EqualTo("blockSize"));
        using Tensor bf16 = Tensor.FromArray(Device, data.NonZero(12 * 10), DType.BF16, 12, 10);
        Assert.That(Rejects<ArgumentException>(() => Ops.Linalg.Svd(bf16)).ParamName, Is.EqualTo("a"));
    }
}
