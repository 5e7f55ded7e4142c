using LoraKernels.Autograd;
using LoraKernels.Layers;
using LoraKernels.Optim;

namespace LoraKernels.Tests.Variants;

/// <summary>
/// LoRA+ groups parameters as PEFT's create_loraplus_optimizer and each group is stepped with its own
/// learning rate and weight decay: one AdamW step on known gradients against Reference.AdamW in double.
/// </summary>
[TestFixture]
public sealed class LoraPlusTests
{
    private const float Lr = 2e-3f, Ratio = 16f, WeightDecay = 0.1f;

    [TestCase(DeviceKind.Cpu)]
    [TestCase(DeviceKind.Simt)]
    public void EachGroupIsSteppedWithItsRate_out7_in5_r3(DeviceKind kind)
    {
        Device device = kind == DeviceKind.Cpu ? Device.Cpu : Device.Simt;
        const int outFeatures = 7, inFeatures = 5, r = 3;
        var data = new TestData(TestData.SeedFor($"LoraPlus_{kind}"));
        using var w0 = Tensor.FromArray(device, data.NonZero(outFeatures * inFeatures), outFeatures, inFeatures);
        using var layer = new LoraLinear(device, w0, null, r, 8f, seed: 3);
        layer.B.Value.CopyFrom(data.NonZero(outFeatures * r));
        using var magnitude = new Parameter("lora_magnitude_vector", Tensor.FromArray(device, data.NonZero(outFeatures), outFeatures));
        using var loraBias = new Parameter("lora_B.bias", Tensor.FromArray(device, data.NonZero(outFeatures), outFeatures));
        using var frozen = new Parameter("frozen_lora_B", Tensor.FromArray(device, data.NonZero(4), 4), requiresGrad: false);
        Parameter[] all = [layer.A, layer.B, magnitude, loraBias, frozen];

        IReadOnlyList<ParameterGroup> groups = LoraPlus.Groups(all, Lr, Ratio, WeightDecay);
        Assert.That(groups.Select(g => g.Name), Is.EqualTo(new[] { "groupA", "groupB", "groupB_no_decay" }));
        Assert.That(groups[0].Parameters, Is.EqualTo(new[] { layer.A }), "groupA: lora_A");
        Assert.That(groups[1].Parameters, Is.EqualTo(new[] { layer.B, magnitude }), "groupB: lora_B and 1-D parameters");
        Assert.That(groups[2].Parameters, Is.EqualTo(new[] { loraBias }), "groupB_no_decay: biases");
        Assert.That(groups.Select(g => g.LearningRate), Is.EqualTo(new[] { Lr, Lr * Ratio, Lr * Ratio }));
        Assert.That(groups.Select(g => g.WeightDecay), Is.EqualTo(new[] { WeightDecay, WeightDecay, 0f }));

        using AdamW optimizer = LoraPlus.CreateOptimizer(all, Lr, Ratio, WeightDecay);
        var expected = new Dictionary<Parameter, (double[] Value, double[] Magnitude)>();
        foreach (ParameterGroup group in optimizer.Groups)
        foreach (Parameter parameter in group.Parameters)
        {
            float[] gradient = data.NonZero((int)parameter.Value.ElementCount);
            parameter.Grad = Tensor.FromArray(device, gradient, [.. parameter.Value.Shape]);
            double[] value = Array.ConvertAll(parameter.Value.ToArray(), v => (double)v);
            double[] bound = Reference.AdamW(value, [gradient], group.LearningRate, optimizer.Beta1, optimizer.Beta2, optimizer.Eps, group.WeightDecay);
            expected[parameter] = (value, bound);
        }
        float[] frozenBefore = frozen.Value.ToArray();
        optimizer.Step();

        // A step of lr moves each value by about lr (Adam's first step is ±lr·g/|g|), and lr·ratio = 3.2e-2 is
        // far outside this bound, so a group stepped with another group's rate fails.
        foreach (var (parameter, (value, magnitudeSum)) in expected)
        {
            // One fp32 AdamW step: a few roundings of each term (Reference.AdamW returns their magnitudes): Atol + 8·u·Σ|terms|.
            double[] bound = Array.ConvertAll(magnitudeSum, m => Tolerance.Atol + 8 * Tolerance.Fp32Unit * m);
            Expect.Close($"{parameter.Name} after one LoRA+ step", parameter.Value.ToArray(), value, bound);
        }
        Assert.That(frozen.Value.ToArray(), Is.EqualTo(frozenBefore), "a parameter that requires no gradient is in no group");

    }

    [Test]
    public void SeveralGroupsRefuseTheSingleLearningRate_Cpu()
    {
        using var a = new Parameter("lora_A", Tensor.FromArray(Device.Cpu, [1f, 2f], 1, 2));
        using var b = new Parameter("lora_B", Tensor.FromArray(Device.Cpu, [3f, 4f], 2, 1));
        using AdamW grouped = LoraPlus.CreateOptimizer([a, b], 1e-3f);
        Assert.That(() => grouped.LearningRate, Throws.InvalidOperationException.With.Message.Contains("Groups"));
        Assert.That(grouped.Groups[1].LearningRate, Is.EqualTo(1e-3f * LoraPlus.DefaultRatio), "the default ratio is 16");
        using var single = new AdamW([a, b], lr: 5e-4f, weightDecay: 0.02f);
        Assert.That(single.LearningRate, Is.EqualTo(5e-4f));
        Assert.That(single.WeightDecay, Is.EqualTo(0.02f));
        Assert.That(single.Groups, Has.Count.EqualTo(1));
    }
}
