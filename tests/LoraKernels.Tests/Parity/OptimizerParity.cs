using LoraKernels.Autograd;
using LoraKernels.Optim;

namespace LoraKernels.Tests.Parity;

/// <summary>
/// AdamW (torch.optim.AdamW semantics) on any list of devices against the double reference: three
/// steps with a different gradient each, non-zero weight decay. Each step's fp32 roundings are
/// bounded by a few units of 2⁻²⁴ times the magnitudes Reference.AdamW accumulates, so
/// |device - reference| ≤ Atol·lr + 8·2⁻²⁴·Σ_steps(|p| + lr·(|m̂| + |ĝ|)/(√v̂ + eps)), plus the
/// bf16 rounding of the stored value (2⁻⁸·|p|) for a BF16 parameter, which trains an fp32 master copy.
/// </summary>
internal static class OptimizerParity
{
    private const float Lr = 1e-2f, Beta1 = 0.9f, Beta2 = 0.999f, Eps = 1e-8f, WeightDecay = 0.1f;
    private const int Steps = 3;

    public static void AdamW(ElementwiseCase c, params Device[] devices)
    {
        var data = new TestData(TestData.SeedFor(c.Describe("AdamW")));
        float[] initial = data.NonZero(c.Count, 1f, c.DType);
        // Each element keeps its gradient's sign across steps (magnitudes vary), so every element
        // moves by about Steps·lr and a wrong or missing update cannot hide inside the tolerance.
        float[] signs = data.NonZero(c.Count);
        var gradients = Enumerable.Range(0, Steps)
            .Select(_ => data.NonZero(c.Count, 0.5f).Select((g, i) => MathF.CopySign(g, signs[i])).ToArray())
            .ToList();
        double[] expected = Array.ConvertAll(initial, v => (double)v);
        double[] magnitude = Reference.AdamW(expected, gradients, Lr, Beta1, Beta2, Eps, WeightDecay);
        double outputRounding = Tolerance.OutputRounding(c.DType);
        double[] bound = expected.Select((p, i) => Tolerance.Atol * Lr + 8 * Tolerance.Fp32Unit * magnitude[i] + outputRounding * Math.Abs(p)).ToArray();
        Expect.NotVacuous("AdamW reference", expected);
        double moved = expected.Select((p, i) => Math.Abs(p - initial[i])).Min();
        Assert.That(moved, Is.GreaterThan(bound.Max()), "every element moves by more than the tolerance");

        foreach (Device device in devices)
        {
            using var parameter = new Parameter("p", Tensor.FromArray(device, initial, c.DType, c.Shape));
            using var optimizer = new AdamW([parameter], Lr, Beta1, Beta2, Eps, WeightDecay);
            foreach (float[] gradient in gradients)
            {
                parameter.Grad = Tensor.FromArray(device, gradient, DType.F32, c.Shape);
                optimizer.Step();
                optimizer.ZeroGrad();
                Assert.That(parameter.Grad, Is.Null, "ZeroGrad frees the gradient");
            }
            Assert.That(optimizer.StepCount, Is.EqualTo(Steps), "step count");
            Assert.That(parameter.Value.DType, Is.EqualTo(c.DType), "the parameter keeps its dtype");
            Expect.Close($"{device.Kind} AdamW", parameter.Value.ToArray(), expected, bound);
        }
    }
}
