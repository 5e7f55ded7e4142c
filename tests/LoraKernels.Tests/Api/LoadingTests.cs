using LoraKernels.Layers;

namespace LoraKernels.Tests.Api;

/// <summary>
/// Loading state the way docs/API.md shows it: saved VeRA projections, a nested 4-bit weight's plain
/// absmax (in Nf4FormatTests), and a parameter's value replaced as PyTorch's <c>param.data = t</c> does.
/// </summary>
[TestFixture(DeviceKind.Cpu)]
[TestFixture(DeviceKind.Simt)]
public sealed class LoadingTests(DeviceKind kind)
{
    private Device Device => kind == DeviceKind.Cpu ? Device.Cpu : Device.Simt;

    [Test]
    public void SavedVeraProjectionsGiveTheSameLayerAsTheOriginals()
    {
        const int r = 4, inFeatures = 9, outFeatures = 7, m = 3;
        var data = new TestData(3);
        using Tensor w0 = Tensor.FromArray(Device, data.NonZero(outFeatures * inFeatures), outFeatures, inFeatures);
        using Tensor x = Tensor.FromArray(Device, data.NonZero(m * inFeatures), m, inFeatures);
        using var original = VeraProjections.Create(Device, r, inFeatures, outFeatures, projectionPrngKey: 42);

        // As if read back from a checkpoint: fresh tensors holding the saved values.
        using Tensor savedA = Tensor.FromArray(Device, original.VeraA.ToArray(), r, inFeatures);
        using Tensor savedB = Tensor.FromArray(Device, original.VeraB.ToArray(), outFeatures, r);
        using var loaded = VeraProjections.FromTensors(savedA, savedB, projectionPrngKey: 42);
        Assert.That(loaded.Rank, Is.EqualTo(r));
        Assert.That((loaded.MaxIn, loaded.MaxOut), Is.EqualTo((inFeatures, outFeatures)));
        Expect.Exact("vera_A", loaded.VeraA.ToArray(), original.VeraA.ToArray());

        using var first = new VeraLinear(Device, w0, null, original, dInitial: 0.3f);
        using var second = new VeraLinear(Device, w0, null, loaded, dInitial: 0.3f);
        first.LambdaB.Value.CopyFrom(data.NonZero(outFeatures));  // λ_b starts at 0: make the delta visible
        second.LambdaB.Value.CopyFrom(first.LambdaB.Value.ToArray());
        first.Training = second.Training = false;
        using Tensor y1 = first.Forward(x), y2 = second.Forward(x);
        Expect.Exact("forward with loaded projections", y2.ToArray(), y1.ToArray());
        Assert.That(savedA.IsDisposed, Is.False, "FromTensors copies; the caller keeps its tensors");
    }

    [Test]
    public void BadSavedProjectionsAreRefusedByName()
    {
        using Tensor a = Tensor.FromArray(Device, new float[4 * 6], 4, 6);
        using Tensor wrongRank = Tensor.FromArray(Device, new float[5 * 3], 5, 3);
        var e = Assert.Throws<ArgumentException>(() => VeraProjections.FromTensors(a, wrongRank))!;
        Assert.That(e.ParamName, Is.EqualTo("veraB"));
        using Tensor nan = Tensor.FromArray(Device, [1f, float.NaN, 1f, 1f], 1, 4);
        using Tensor b = Tensor.FromArray(Device, [1f, 1f], 2, 1);
        e = Assert.Throws<ArgumentException>(() => VeraProjections.FromTensors(nan, b))!;
        Assert.That(e.ParamName, Is.EqualTo("veraA"));
        Assert.That(e.Message, Does.Contain("element 1"));
    }

    [Test]
    public void AssigningAParameterValueReplacesItForTheLayer()
    {
        const int r = 2, inFeatures = 5, outFeatures = 4;
        var data = new TestData(11);
        using Tensor w0 = Tensor.FromArray(Device, data.NonZero(outFeatures * inFeatures), outFeatures, inFeatures);
        using Tensor x = Tensor.FromArray(Device, data.NonZero(inFeatures), 1, inFeatures);
        using var layer = new LoraLinear(Device, w0, null, r, alpha: 2f);
        layer.Training = false;
        float[] b = data.NonZero(outFeatures * r);
        Tensor old = layer.B.Value;
        long live = Device.LiveAllocations;

        layer.B.Value = Tensor.FromArray(Device, b, outFeatures, r);
        Assert.That(old.IsDisposed, Is.True, "the parameter owned the old value");
        Assert.That(Device.LiveAllocations, Is.EqualTo(live), "one tensor in, one out");
        using var reference = new LoraLinear(Device, w0, null, r, alpha: 2f);
        reference.Training = false;
        reference.B.Value.CopyFrom(b);
        using Tensor y = layer.Forward(x), expected = reference.Forward(x);
        Expect.Exact("forward after assignment", y.ToArray(), expected.ToArray());

        using Tensor wrongShape = Tensor.FromArray(Device, new float[r * outFeatures], r, outFeatures);
        var e = Assert.Throws<ArgumentException>(() => layer.B.Value = wrongShape)!;
        Assert.That(e.ParamName, Is.EqualTo("value"));
        Assert.That(e.Message, Does.Contain($"[{outFeatures}, {r}]"));
        Expect.Exact("a refused value changes nothing", layer.B.Value.ToArray(), b);
    }

    /// <summary>
    /// An optimizer stepping a BF16 parameter keeps an fp32 master copy; after Value is assigned the next step
    /// starts from the new value (a stale master would put the old weights back). Moments are kept, as torch's.
    /// </summary>
    [Test]
    public void AnAssignedBf16ValueIsWhatTheOptimizerStepsFrom()
    {
        float[] first = [1f, -2f, 3f, -4f], assigned = [100f, 200f, -300f, 400f], gradient = [0.5f, -0.5f, 0.25f, -0.25f];
        using var parameter = new LoraKernels.Autograd.Parameter("w", Tensor.FromArray(Device, first, DType.BF16, 4));
        using var optimizer = new LoraKernels.Optim.AdamW([parameter], lr: 0.01f, weightDecay: 0f);
        parameter.Grad = Tensor.FromArray(Device, gradient, 4);
        Assert.That(optimizer.Step(), Is.True);
        parameter.Value = Tensor.FromArray(Device, assigned, DType.BF16, 4);
        Assert.That(parameter.Grad, Is.Null, "assignment drops the gradient");
        parameter.Grad = Tensor.FromArray(Device, gradient, 4);
        Assert.That(optimizer.Step(), Is.True);
        // Each Adam step moves an element by at most lr·(1 + ε-terms) ≈ 0.01; bf16 holds 100..400 to within 2⁻⁸ relative.
        float[] after = parameter.Value.ToArray();
        for (int i = 0; i < 4; i++)
            Assert.That(after[i], Is.EqualTo(assigned[i]).Within(0.02 + Math.Abs(assigned[i]) / 256.0), $"element {i} steps from the assigned value");
    }
}
