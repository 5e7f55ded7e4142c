using System.Diagnostics;
using LoraKernels.Autograd;
using LoraKernels.Layers;
using LoraKernels.Optim;
using LoraKernels.Variants;

namespace LoraKernels.Tests.Safety;

/// <summary>
/// The non-finite policy (docs/API.md, "Non-finite values"): SVD-based inits refuse NaN and ±Inf up
/// front, naming the input and the first bad element (LAPACK would spin forever on +Inf); every layer
/// refuses a non-finite frozen base at construction; an optimizer step skips (or, if asked, refuses)
/// gradients holding NaN or ±Inf, so one bad batch cannot poison every parameter.
/// </summary>
[TestFixture(DeviceKind.Cpu)]
[TestFixture(DeviceKind.Simt)]
public sealed class NonFiniteTests(DeviceKind kind)
{
    private const int Out = 12, In = 10, R = 3;
    private Device Device => kind == DeviceKind.Cpu ? Device.Cpu : Device.Simt;

    private static IEnumerable<TestCaseData> BadValues()
    {
        yield return new TestCaseData(float.PositiveInfinity).SetName("{m}(+Inf)");
        yield return new TestCaseData(float.NegativeInfinity).SetName("{m}(-Inf)");
        yield return new TestCaseData(float.NaN).SetName("{m}(NaN)");
    }

    /// <summary>A finite W0 [Out, In] with <paramref name="bad"/> at row 2, column 7 (flat index 27) and a NaN later.</summary>
    private Tensor WeightWith(float bad)
    {
        float[] values = new TestData(5).NonZero(Out * In);
        values[2 * In + 7] = bad;
        values[9 * In + 1] = float.NaN;
        return Tensor.FromArray(Device, values, Out, In);
    }

    [TestCaseSource(nameof(BadValues))]
    public void EverySvdBasedInitRefusesNonFiniteInputPromptly(float bad)
    {
        using Tensor w = WeightWith(bad);
        var inits = new (string Name, string Argument, Action Call)[]
        {
            ("Linalg.Svd", "a", () => { var (u, s, vt) = Ops.Linalg.Svd(w); u.Dispose(); s.Dispose(); vt.Dispose(); }),
            ("Pissa.Initialize", "w0", () => Pissa.Initialize(w, R, 2f).Dispose()),
            ("Pissa.Initialize", "w0", () => Pissa.Initialize(w, R, 2f, niter: 2).Dispose()),
            ("Pissa.Initialize", "w0", () => Pissa.CreateLayer(Device, w, null, R, 6f).Dispose()),
            ("LoftQ.Initialize", "w", () => { var (q, a, b) = LoftQ.Initialize(w, R); q.Dispose(); a.Dispose(); b.Dispose(); }),
        };
        foreach (var (name, argument, call) in inits)
        {
            long before = Device.LiveAllocations;
            var clock = Stopwatch.StartNew();
            // Run on a worker so that a regression to an endless LAPACK loop fails the test instead of hanging the run.
            Task<Exception?> attempt = Task.Run(() =>
            {
                try { call(); return null; }
                catch (Exception e) { return e; }
            });
            Assert.That(attempt.Wait(TimeSpan.FromSeconds(60)), Is.True, $"{name} did not return on {bad}");
            var e = attempt.Result as ArgumentException;
            Assert.That(e, Is.Not.Null, $"{name} on {bad}: expected ArgumentException, got {attempt.Result}");
            Assert.That(e!.ParamName, Is.EqualTo(argument), e.Message);
            Assert.That(e.Message, Does.Contain(name).And.Contain("element 27 (row 2, column 7)"), e.Message);
            Assert.That(Device.LiveAllocations, Is.EqualTo(before), $"{name}: nothing left allocated");
            TestContext.Out.WriteLine($"{name} refused {bad} in {clock.Elapsed.TotalMilliseconds:F1} ms");
        }
    }

    [TestCaseSource(nameof(BadValues))]
    public void EveryLayerRefusesANonFiniteFrozenBase(float bad)
    {
        using Tensor w = WeightWith(bad);
        using Tensor goodW = Tensor.FromArray(Device, new TestData(6).NonZero(Out * In), Out, In);
        using Tensor badBias = Tensor.FromArray(Device, Enumerable.Range(0, Out).Select(i => i == 4 ? bad : 0.5f).ToArray(), Out);
        using VeraProjections projections = VeraProjections.Create(Device, R, In, Out);
        var layers = new (string Name, Func<Tensor, Tensor?, IDisposable> Create)[]
        {
            ("LoraLinear", (w0, bias) => new LoraLinear(Device, w0, bias, R, 8f)),
            ("LoraFaLinear", (w0, bias) => new LoraFaLinear(Device, w0, bias, R, 8f)),
            ("VeraLinear", (w0, bias) => new VeraLinear(Device, w0, bias, projections)),
            ("DoraLinear", (w0, bias) => new DoraLinear(Device, w0, bias, R, 8f)),
            ("QloraLinear", (w0, bias) => new QloraLinear(Device, w0, bias, R, 8f)),
            ("Nf4Linear", (w0, bias) => new Nf4Linear(Device, w0, bias)),
        };
        foreach (var (name, create) in layers)
        {
            long before = Device.LiveAllocations;
            var weight = Assert.Throws<ArgumentException>(() => create(w, null).Dispose(), name)!;
            Assert.That(weight.Message, Does.Contain("element 27 (row 2, column 7)"), $"{name}: {weight.Message}");
            var bias = Assert.Throws<ArgumentException>(() => create(goodW, badBias).Dispose(), name)!;
            Assert.That(bias.ParamName, Is.EqualTo("bias"), $"{name}: {bias.Message}");
            Assert.That(bias.Message, Does.Contain("element 4"), $"{name}: {bias.Message}");
            Assert.That(Device.LiveAllocations, Is.EqualTo(before), $"{name}: nothing left allocated");
        }
    }

    [Test]
    public void ANaNInputSkipsTheStepAndLeavesEveryParameterAsItWas()
    {
        var data = new TestData(8);
        using Tensor w0 = Tensor.FromArray(Device, data.NonZero(Out * In), Out, In);
        using var layer = new LoraLinear(Device, w0, null, R, 8f, seed: 2);
        using var optimizer = new AdamW(layer.Parameters(), lr: 1e-2f);
        float[] xValues = data.NonZero(4 * In);
        using Tensor target = Tensor.FromArray(Device, data.NonZero(4 * Out), 4, Out);

        Assert.That(Train(layer, optimizer, xValues, target), Is.True, "a finite batch is applied");
        float[] a = layer.A.Value.ToArray(), b = layer.B.Value.ToArray();
        Assert.That(b.Any(v => v != 0f), "the first step moved B");

        xValues[5] = float.NaN;
        Assert.That(Train(layer, optimizer, xValues, target), Is.False, "a batch with NaN is skipped");
        Assert.That(optimizer.SkippedSteps, Is.EqualTo(1));
        Assert.That(optimizer.StepCount, Is.EqualTo(1));
        Assert.That(layer.A.Value.ToArray(), Is.EqualTo(a), "A unchanged by the skipped step");
        Assert.That(layer.B.Value.ToArray(), Is.EqualTo(b), "B unchanged by the skipped step");

        optimizer.OnNonFiniteGradients = NonFiniteGradients.Throw;
        var e = Assert.Throws<NonFiniteGradientException>(() => Train(layer, optimizer, xValues, target))!;
        Assert.That(e.Parameter, Is.AnyOf("lora_A", "lora_B"), e.Message);
        Assert.That(layer.B.Value.ToArray(), Is.EqualTo(b), "B unchanged by the refused step");

        optimizer.OnNonFiniteGradients = NonFiniteGradients.Apply;
        Assert.That(Train(layer, optimizer, xValues, target), Is.True);
        Assert.That(layer.B.Value.ToArray().Any(float.IsNaN), "Apply lets the NaN through, as documented");
    }

    private static bool Train(LoraLinear layer, AdamW optimizer, float[] xValues, Tensor target)
    {
        using Tensor x = Tensor.FromArray(layer.Device, xValues, xValues.Length / In, In);
        using var tape = new Tape();
        tape.MseLoss(layer.Forward(tape, new Variable(x)), target);
        tape.Backward();
        bool applied = optimizer.Step();
        optimizer.ZeroGrad();
        return applied;
    }
}
