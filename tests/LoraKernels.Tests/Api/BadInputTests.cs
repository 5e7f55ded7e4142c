using LoraKernels.Layers;

namespace LoraKernels.Tests.Api;

/// <summary>
/// Bad arguments are rejected before anything is allocated or launched: the exception names the
/// argument (ParamName, and the message for disposed tensors), and the device's live allocation
/// count is unchanged. Runs on both host devices (the checks live in Ops, before dispatch).
/// </summary>
[TestFixture(DeviceKind.Cpu)]
[TestFixture(DeviceKind.Simt)]
public sealed class BadInputTests(DeviceKind kind)
{
    private const int M = 7, In = 33, Out = 13, R = 4;
    private Device _device = null!;
    private Tensor _x = null!, _w0 = null!, _bias = null!, _a = null!, _b = null!, _u = null!, _dy = null!;

    [SetUp]
    public void CreateTensors()
    {
        _device = kind == DeviceKind.Cpu ? Device.Cpu : Device.Simt;
        var data = new TestData(42);
        _x = Tensor.FromArray(_device, data.NonZero(M * In), M, In);
        _w0 = Tensor.FromArray(_device, data.NonZero(Out * In), Out, In);
        _bias = Tensor.FromArray(_device, data.NonZero(Out), Out);
        _a = Tensor.FromArray(_device, data.NonZero(R * In), R, In);
        _b = Tensor.FromArray(_device, data.NonZero(Out * R), Out, R);
        _u = Tensor.FromArray(_device, data.NonZero(M * R), M, R);
        _dy = Tensor.FromArray(_device, data.NonZero(M * Out), M, Out);
    }

    [TearDown]
    public void DisposeTensors()
    {
        _x?.Dispose();
        _w0?.Dispose();
        _bias?.Dispose();
        _a?.Dispose();
        _b?.Dispose();
        _u?.Dispose();
        _dy?.Dispose();
    }

    /// <summary>Runs <paramref name="call"/>, expects <typeparamref name="TException"/>, and checks nothing was allocated.</summary>
    private TException Rejects<TException>(TestDelegate call) where TException : Exception
    {
        long before = _device.LiveAllocations;
        var e = Assert.Throws<TException>(call)!;
        Assert.That(_device.LiveAllocations, Is.EqualTo(before), "live allocations after the rejected call");
        return e;
    }

    private void RejectsArgument(string parameter, TestDelegate call)
    {
        var e = Rejects<ArgumentException>(call);
        Assert.That(e.ParamName, Is.EqualTo(parameter), $"ParamName; message: {e.Message}");
    }

    private Tensor Make(DType dtype, params long[] shape) => Tensor.Zeros(_device, dtype, shape);

    private Device OtherDevice => kind == DeviceKind.Cpu ? Device.Simt : Device.Cpu;

    [Test]
    public void ForwardRejectsMismatchedShapes()
    {
        using var aWrongIn = Make(DType.F32, R, In + 1);
        using var bWrongRank = Make(DType.F32, Out, R + 1);
        using var w0WrongIn = Make(DType.F32, Out, In - 1);
        using var biasWrongOut = Make(DType.F32, Out + 1);
        using var xVector = Make(DType.F32, In);
        RejectsArgument("a", () => Lora.Forward(_x, _w0, _bias, aWrongIn, _b, 2f));
        RejectsArgument("b", () => Lora.Forward(_x, _w0, _bias, _a, bWrongRank, 2f));
        // x and a agree on in, so w0 is the odd one out.
        RejectsArgument("w0", () => Lora.Forward(_x, w0WrongIn, _bias, _a, _b, 2f));
        RejectsArgument("bias", () => Lora.Forward(_x, _w0, biasWrongOut, _a, _b, 2f));
        RejectsArgument("x", () => Lora.Forward(xVector, _w0, _bias, _a, _b, 2f));
    }

    [Test]
    public void MessageNamesArgumentShapesAndDevice()
    {
        using var aWrongIn = Make(DType.F32, R, In + 1);
        var e = Rejects<ArgumentException>(() => Lora.Forward(_x, _w0, _bias, aWrongIn, _b, 2f));
        Assert.That(e.Message, Does.Contain($"[{R}, {In + 1}]").And.Contain($"{In}").And.Contain(_device.Kind.ToString().ToLowerInvariant()),
                    "the message gives the shape it got, the expected size and the device");
    }

    [Test]
    public void ForwardRejectsWrongDtype()
    {
        using var w0Bf16 = Make(DType.BF16, Out, In);
        using var bBf16 = Make(DType.BF16, Out, R);
        RejectsArgument("w0", () => Lora.Forward(_x, w0Bf16, _bias, _a, _b, 2f));
        RejectsArgument("b", () => Lora.Forward(_x, _w0, _bias, _a, bBf16, 2f));
    }

    [Test]
    public void ForwardRejectsTensorsOnDifferentDevices()
    {
        using var aElsewhere = _a.To(OtherDevice);
        using var biasElsewhere = _bias.To(OtherDevice);
        RejectsArgument("a", () => Lora.Forward(_x, _w0, _bias, aElsewhere, _b, 2f));
        RejectsArgument("bias", () => Lora.Forward(_x, _w0, biasElsewhere, _a, _b, 2f));
    }

    [Test]
    public void ForwardRejectsDisposedTensor()
    {
        var disposedW0 = _w0.Clone();
        disposedW0.Dispose();
        Assert.That(disposedW0.IsDisposed, Is.True);
        var e = Rejects<ObjectDisposedException>(() => Lora.Forward(_x, disposedW0, _bias, _a, _b, 2f));
        Assert.That(e.Message, Does.Contain("w0"), "the message names the disposed argument");
    }

    [Test]
    public void ForwardRejectsZeroRank()
    {
        using var aRank0 = Make(DType.F32, 0, In);
        using var bRank0 = Make(DType.F32, Out, 0);
        var e = Rejects<ArgumentOutOfRangeException>(() => Lora.Forward(_x, _w0, _bias, aRank0, bRank0, 2f));
        Assert.That(e.ParamName, Is.AnyOf("a", "r"), e.Message);
        var layer = Rejects<ArgumentOutOfRangeException>(() => new LoraLinear(_device, _w0, _bias, r: 0, alpha: 16f).Dispose());
        Assert.That(layer.ParamName, Is.EqualTo("r"), layer.Message);
    }

    [TestCase(-0.1f)]
    [TestCase(1f)]
    [TestCase(float.NaN)]
    public void RejectsDropoutOutOfRange(float p)
    {
        var forward = Rejects<ArgumentOutOfRangeException>(() => Lora.Forward(_x, _w0, _bias, _a, _b, 2f, dropoutP: p));
        Assert.That(forward.ParamName, Is.EqualTo("dropoutP"), forward.Message);
        var backward = Rejects<ArgumentOutOfRangeException>(() => Lora.Backward(_x, _w0, _a, _b, _u, _dy, 2f, dropoutP: p));
        Assert.That(backward.ParamName, Is.EqualTo("dropoutP"), backward.Message);
        var layer = Rejects<ArgumentOutOfRangeException>(() => new LoraLinear(_device, _w0, _bias, r: R, alpha: 16f, dropout: p).Dispose());
        Assert.That(layer.ParamName, Is.EqualTo("dropout"), layer.Message);
    }

    [Test]
    public void BackwardRejectsMismatchedGradientAndCache()
    {
        using var dyWrong = Make(DType.F32, M, Out + 1);
        using var uWrong = Make(DType.F32, M, R + 1);
        using var uBf16 = Make(DType.BF16, M, R);
        RejectsArgument("dy", () => Lora.Backward(_x, _w0, _a, _b, _u, dyWrong, 2f));
        RejectsArgument("u", () => Lora.Backward(_x, _w0, _a, _b, uWrong, _dy, 2f));
        RejectsArgument("u", () => Lora.Backward(_x, _w0, _a, _b, uBf16, _dy, 2f));
    }

    [Test]
    public void MergeRejectsMismatchedShapes()
    {
        using var bWrong = Make(DType.F32, Out + 1, R);
        RejectsArgument("b", () => Lora.Merge(_w0, _a, bWrong, 2f));
        RejectsArgument("b", () => Lora.Unmerge(_w0, _a, bWrong, 2f));
    }

    [Test]
    public void ElementwiseRejectsMismatches()
    {
        using var other = Make(DType.F32, M, In + 1);
        using var otherDtype = Make(DType.BF16, M, In);
        RejectsArgument("dy", () => Elementwise.ReluBackward(_x, other));
        RejectsArgument("y", () => Elementwise.Axpy(1f, _x, other));
        RejectsArgument("target", () => Losses.Mse(_x, other));
        RejectsArgument("target", () => Losses.Mse(_x, otherDtype));
    }

    [Test]
    public void Fp32OnlyOpsRejectBf16()
    {
        using var xBf16 = Make(DType.BF16, M, In);
        using var dyBf16 = Make(DType.BF16, M, In);
        RejectsArgument("x", () => Elementwise.Relu(xBf16));
        RejectsArgument("x", () => Elementwise.ReluBackward(xBf16, dyBf16));
        RejectsArgument("x", () => Elementwise.Axpy(1f, xBf16, dyBf16));
        RejectsArgument("pred", () => Losses.Mse(xBf16, dyBf16));
    }

    /// <summary>An activation of the wrong width, dtype or device is x's fault (the frozen base fixes them), for every adapter family.</summary>
    [Test]
    public void WrongActivationsAreBlamedOnX()
    {
        using var xWide = Make(DType.F32, M, In + 1);
        using var xBf16 = Make(DType.BF16, M, In);
        using var xElsewhere = _x.To(OtherDevice);
        using var magnitude = Tensor.FromArray(_device, Enumerable.Repeat(1f, Out).ToArray(), Out);
        using var norm = Tensor.FromArray(_device, Enumerable.Repeat(2f, Out).ToArray(), Out);
        using QuantizedWeight quantized = LoraKernels.Ops.Nf4.Quantize(_w0, QuantType.Nf4, 32);
        using var lambdaD = Tensor.FromArray(_device, Enumerable.Repeat(0.1f, R).ToArray(), R);
        using var lambdaB = Tensor.FromArray(_device, Enumerable.Repeat(0.5f, Out).ToArray(), Out);
        foreach (Tensor x in new[] { xWide, xBf16, xElsewhere })
        {
            var calls = new (string Family, TestDelegate Call)[]
            {
                ("LoRA forward", () => Lora.Forward(x, _w0, _bias, _a, _b, 2f)),
                ("LoRA backward", () => Lora.Backward(x, _w0, _a, _b, _u, _dy, 2f)),
                ("DoRA", () => LoraKernels.Ops.Dora.Forward(x, _w0, _bias, _a, _b, magnitude, norm, 2f)),
                ("QLoRA", () => LoraKernels.Ops.Qlora.Forward(x, quantized, _bias, _a, _b, 2f)),
                // A plain 4-bit product takes F32 or BF16 activations: only width and device can be wrong.
                ("NF4 matmul", () => LoraKernels.Ops.Nf4.Matmul(x, quantized, null)),
                ("VeRA", () => Vera.Forward(x, _w0, _bias, _a, _b, lambdaD, lambdaB)),
            };
            foreach (var (family, call) in calls)
            {
                if (family == "NF4 matmul" && ReferenceEquals(x, xBf16)) continue;
                var e = Rejects<ArgumentException>(call);
                Assert.That(e.ParamName, Is.EqualTo("x"), $"{family} with x = {x.Describe()}: {e.Message}");
                Assert.That(e.Message, Does.Contain(x.Describe()), $"{family}: the message shows the x it got");
            }
        }
    }

    [Test]
    public void RejectsNullTensors()
    {
        var e = Rejects<ArgumentNullException>(() => Lora.Forward(null!, _w0, _bias, _a, _b, 2f));
        Assert.That(e.ParamName, Is.EqualTo("x"));
    }
}
