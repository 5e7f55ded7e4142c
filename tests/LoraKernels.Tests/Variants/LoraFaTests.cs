using LoraKernels.Autograd;
using LoraKernels.Layers;

namespace LoraKernels.Tests.Variants;

/// <summary>A LoRA-FA case: device, dropout, M × in → out at rank r.</summary>
public sealed record LoraFaCase(DeviceKind Device, float Dropout, int M, int In, int Out, int R)
{
    public override string ToString() => $"LoraFa_{Device}_drop{Dropout}_M{M}_in{In}_out{Out}_r{R}";
}

/// <summary>
/// LoRA-FA against LoRA with the same seed (so the same A and the same dropout masks) and the same B:
/// dB and dx must be LoRA's (GradientCheckTests verifies LoRA's against finite differences), A must
/// get no gradient, and the backward pass must not need x: the test frees x between forward and
/// backward, which LoRA's backward (it needs x for dA) cannot survive.
/// </summary>
[TestFixture]
public sealed class LoraFaTests
{
    private const float Alpha = 8f;
    private const ulong LayerSeed = 41;

    public static IEnumerable<TestCaseData> Cases() =>
        new LoraFaCase[]
        {
            new(DeviceKind.Cpu, 0f, 7, 29, 13, 3),
            new(DeviceKind.Cpu, 0.25f, 1, 17, 5, 1),
            new(DeviceKind.Simt, 0f, 7, 29, 13, 3),
            new(DeviceKind.Simt, 0.25f, 5, 33, 19, 4),
        }.Select(c => new TestCaseData(c).SetName(c.ToString()));

    [TestCaseSource(nameof(Cases))]
    public void GradientsEqualLoraAndBackwardRetainsOnlyU(LoraFaCase c)
    {
        Device device = c.Device == DeviceKind.Cpu ? Device.Cpu : Device.Simt;
        var data = new TestData(TestData.SeedFor(c.ToString()));
        float[] w0 = data.NonZero(c.Out * c.In, 1f / MathF.Sqrt(c.In)), bias = data.NonZero(c.Out, 0.5f);
        float[] x = data.NonZero(c.M * c.In), target = data.NonZero(c.M * c.Out), b = data.NonZero(c.Out * c.R, 0.5f);
        using var w0Tensor = Tensor.FromArray(device, w0, c.Out, c.In);
        using var biasTensor = Tensor.FromArray(device, bias, c.Out);
        using var targetTensor = Tensor.FromArray(device, target, c.M, c.Out);

        using var lora = new LoraLinear(device, w0Tensor, biasTensor, c.R, Alpha, c.Dropout, seed: LayerSeed);
        using var loraFa = new LoraFaLinear(device, w0Tensor, biasTensor, c.R, Alpha, c.Dropout, seed: LayerSeed);
        lora.B.Value.CopyFrom(b);
        loraFa.B.Value.CopyFrom(b);
        Assert.That(loraFa.A.ToArray(), Is.EqualTo(lora.A.Value.ToArray()), "the same seed gives LoRA's A");
        Assert.That(loraFa.Parameters().Select(p => p.Name), Is.EqualTo(new[] { "lora_B" }), "only B is trainable");

        // LoRA: its backward closure holds x (for dA = duᵀ·dropout(x)) and u: M·in·4 + M·r·4 bytes.
        float lossLora;
        float[] loraDx, loraDb;
        using (var xLora = Tensor.FromArray(device, x, c.M, c.In))
        using (var tape = new Tape())
        {
            var input = new Variable(xLora, requiresGrad: true);
            lossLora = tape.MseLoss(lora.Forward(tape, input), targetTensor);
            tape.Backward();
            loraDx = input.Grad!.ToArray();
            loraDb = lora.B.Grad!.ToArray();
            Assert.That(lora.A.Grad, Is.Not.Null, "LoRA trains A");
        }

        // LoRA-FA: forward, free x, then backward.
        using (var tape = new Tape())
        {
            var xFa = Tensor.FromArray(device, x, c.M, c.In);
            var input = new Variable(xFa, requiresGrad: true);
            float lossFa = tape.MseLoss(loraFa.Forward(tape, input), targetTensor);
            Assert.That(loraFa.RetainedActivationBytes, Is.EqualTo((long)c.M * c.R * sizeof(float)),
                        "LoRA-FA retains u = dropout(x)·Aᵀ only: M·r·4 bytes (LoRA: M·in·4 + M·r·4)");
            long loraRetains = (long)c.M * c.In * sizeof(float) + (long)c.M * c.R * sizeof(float);
            Assert.That(loraFa.RetainedActivationBytes, Is.LessThan(loraRetains));
            xFa.Dispose();
            tape.Backward();
            Assert.That(lossFa, Is.EqualTo(lossLora), "the same forward");
            // Equal computations on equal inputs: the kernels compute dB and dx the same way with or without dA,
            // so they agree to the fp32 rounding of their reductions: Atol + 2·2·(K)·u·max|value|, K = M + out + r.
            float[] faDb = loraFa.B.Grad!.ToArray(), faDx = input.Grad!.ToArray();
            Expect.NotVacuous("LoRA dB", Array.ConvertAll(loraDb, v => (double)v));
            Expect.NotVacuous("LoRA dx", Array.ConvertAll(loraDx, v => (double)v));
            int reduction = c.M + c.Out + c.R;
            Expect.Agree("dB: LoRA-FA vs LoRA", loraDb, faDb, Bounds(loraDb, reduction));
            Expect.Agree("dx: LoRA-FA vs LoRA", loraDx, faDx, Bounds(loraDx, reduction));
        }

        // LoRA's backward cannot run once x is gone: it reads x.
        using (var tape = new Tape())
        {
            var xLora = Tensor.FromArray(device, x, c.M, c.In);
            tape.MseLoss(lora.Forward(tape, new Variable(xLora, requiresGrad: true)), targetTensor);
            xLora.Dispose();
            Assert.That(() => tape.Backward(), Throws.TypeOf<ObjectDisposedException>(), "LoRA's backward needs x");
        }
    }

    private static double[] Bounds(float[] values, int reduction)
    {
        double largest = values.Max(v => Math.Abs((double)v));
        return Array.ConvertAll(values, _ => Tolerance.Atol + 2.0 * Tolerance.Factor * reduction * Tolerance.Fp32Unit * largest);
    }
}
