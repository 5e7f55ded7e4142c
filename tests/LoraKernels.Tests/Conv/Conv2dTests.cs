// Ops.Conv2d (the frozen base of a convolution layer and the kh×kw products of its adapters) on the CPU kernels
// (im2col + GEMM) and on kernels/conv.cu under the SIMT emulator (implicit GEMM), against the direct seven-loop
// reference in double (DenseReference). Tolerances: Tolerance.Bounds with K = the reduction length (C·KH·KW
// forward, O·KH·KW backward data, N·HO·WO backward weight, plus the chunk sums), fp32 storage.
namespace LoraKernels.Tests.Conv;

[TestFixture]
public sealed class Conv2dTests
{
    public static IEnumerable<ConvCase> Cases()
    {
        // Pointwise (no im2col on the CPU), padded 3x3, strides 2 and 3 on a rectangular kernel, dilations 2 and 3,
        // a 1x1 image under a padded window, channel counts past one 64 tile and one 16-deep slice, 1 and prime sizes.
        yield return new ConvCase(2, 3, 5, 7, 4, 1, 1, new Conv2dGeometry());
        yield return new ConvCase(3, 5, 7, 6, 2, 3, 3, Conv2dGeometry.Square(1, 1));
        yield return new ConvCase(2, 2, 9, 8, 3, 3, 2, new Conv2dGeometry(2, 3, 1, 0));
        yield return new ConvCase(1, 3, 11, 10, 2, 3, 3, new Conv2dGeometry(1, 2, 2, 1, 2, 3));
        yield return new ConvCase(2, 7, 1, 1, 5, 3, 3, Conv2dGeometry.Square(1, 1));
        yield return new ConvCase(1, 70, 3, 3, 67, 1, 3, new Conv2dGeometry(PaddingW: 1));
    }

    [TestCaseSource(nameof(Cases))]
    public void ForwardAndGradientsMatchTheSevenLoopReferenceOnCpuAndSimt(ConvCase c)
    {
        var data = new TestData(TestData.SeedFor(c.ToString()));
        float[] x = data.NonZero(c.XCount), w = data.NonZero(c.WCount), bias = data.NonZero(c.O), dy = data.NonZero(c.YCount);
        double[] y = DenseReference.ConvForward(c, DenseReference.Double(x), DenseReference.Double(w), DenseReference.Double(bias));
        double[] yAbs = DenseReference.ConvForward(c, DenseReference.Abs(x), DenseReference.Abs(w), DenseReference.Abs(bias));
        double[] dx = DenseReference.ConvBackwardData(c, DenseReference.Double(dy), DenseReference.Double(w));
        double[] dxAbs = DenseReference.ConvBackwardData(c, DenseReference.Abs(dy), DenseReference.Abs(w));
        double[] dw = DenseReference.ConvBackwardWeight(c, DenseReference.Double(x), DenseReference.Double(dy));
        double[] dwAbs = DenseReference.ConvBackwardWeight(c, DenseReference.Abs(x), DenseReference.Abs(dy));
        Expect.NotVacuous("y", y);
        Expect.NotVacuous("dx", dx);
        var results = new List<float[]>();
        foreach (Device device in new[] { Device.Cpu, Device.Simt })
        {
            using Tensor xt = Tensor.FromArray(device, x, c.N, c.C, c.H, c.W);
            using Tensor wt = Tensor.FromArray(device, w, c.O, c.C, c.KH, c.KW);
            using Tensor bt = Tensor.FromArray(device, bias, c.O);
            using Tensor dyt = Tensor.FromArray(device, dy, c.N, c.O, c.HO, c.WO);
            using Tensor yt = Conv2d.Forward(xt, wt, bt, c.G);
            using Tensor dxt = Conv2d.BackwardData(dyt, wt, c.H, c.W, c.G);
            using Tensor dwt = Conv2d.BackwardWeight(xt, dyt, c.KH, c.KW, c.G);
            Assert.That(yt.Shape, Is.EqualTo(new long[] { c.N, c.O, c.HO, c.WO }));
            Expect.Close($"{device} y", yt.ToArray(), y, Tolerance.Bounds(y, yAbs, c.C * c.KH * c.KW + 1, DType.F32));
            Expect.Close($"{device} dx", dxt.ToArray(), dx, Tolerance.Bounds(dx, dxAbs, c.O * c.KH * c.KW, DType.F32));
            Expect.Close($"{device} dw", dwt.ToArray(), dw, Tolerance.Bounds(dw, dwAbs, c.N * c.HO * c.WO + 2, DType.F32));
            results.Add(yt.ToArray());
        }
        Expect.Agree("cpu vs simt y", results[0], results[1], Tolerance.Bounds(y, yAbs, c.C * c.KH * c.KW + 1, DType.F32));
    }

    [TestCase(DeviceKind.Cpu)]
    [TestCase(DeviceKind.Simt)]
    public void BadShapesAreRefusedBeforeAnyLaunch(DeviceKind kind)
    {
        Device device = kind == DeviceKind.Cpu ? Device.Cpu : Device.Simt;
        var data = new TestData(5);
        using Tensor x = Tensor.FromArray(device, data.NonZero(2 * 3 * 4 * 4), 2, 3, 4, 4);
        using Tensor w = Tensor.FromArray(device, data.NonZero(5 * 3 * 3 * 3), 5, 3, 3, 3);
        using Tensor wrongChannels = Tensor.FromArray(device, data.NonZero(5 * 2 * 3 * 3), 5, 2, 3, 3);
        using Tensor big = Tensor.FromArray(device, data.NonZero(5 * 3 * 5 * 5), 5, 3, 5, 5);
        using Tensor bf16 = Tensor.FromArray(device, data.NonZero(2 * 3 * 4 * 4), DType.BF16, 2, 3, 4, 4);
        using Tensor bias = Tensor.FromArray(device, data.NonZero(4), 4);
        long before = device.LiveAllocations;
        Assert.That(() => Conv2d.Forward(x, wrongChannels),
                    Throws.ArgumentException.With.Message.Contains("C = 3").And.Property("ParamName").EqualTo("x"));
        Assert.That(() => Conv2d.Forward(x, big),
                    Throws.ArgumentException.With.Message.Contains("window").And.Message.Contains("does not fit"));
        Assert.That(() => Conv2d.Forward(bf16, w), Throws.ArgumentException.With.Message.Contains("F32"));
        Assert.That(() => Conv2d.Forward(x, w, bias), Throws.ArgumentException.With.Property("ParamName").EqualTo("bias"));
        Assert.That(() => Conv2d.Forward(x, w, null, new Conv2dGeometry(StrideH: 0)),
                    Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("stride"));
        Assert.That(() => Conv2d.Forward(x, w, null, new Conv2dGeometry(PaddingW: -1)),
                    Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("padding"));
        Assert.That(() => Conv2d.BackwardData(x, w, 4, 4), Throws.ArgumentException.With.Property("ParamName").EqualTo("dy"));
        Assert.That(() => Conv2d.BackwardWeight(x, x, 0, 3), Throws.InstanceOf<ArgumentOutOfRangeException>());
        Assert.That(device.LiveAllocations, Is.EqualTo(before), "nothing allocated by a refused call");
    }
}
