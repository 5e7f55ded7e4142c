using LoraKernels.Autograd;
using LoraKernels.Layers;
using LoraKernels.Ops;

namespace LoraKernels.Tests.Autograd;

/// <summary>
/// Ops.Losses.CrossEntropy and the ways a backward pass can start: from a loss the tape records
/// (MSE, cross-entropy) or from a gradient the caller computed for a loss of its own
/// (Tape.Backward(output, gradient)). References are in double (<see cref="CrossEntropyModel"/>),
/// and the reference's gradient is itself checked against central finite differences.
/// Tolerances (fp32 exp of x - max: each softmax term is off by at most 2⁻²⁴·(R + 2) relative, R the
/// row's largest |x - max|; sums in double): loss within 4·2⁻²⁴·(R + 2) + 2·2⁻²⁴·|loss|, gradient
/// within (4·2⁻²⁴·(R + 2)·p + 2·2⁻²⁴·|g|) / count + 1e-30.
/// </summary>
[TestFixture(DeviceKind.Cpu)]
[TestFixture(DeviceKind.Simt)]
public sealed class LossTests(DeviceKind kind)
{
    private Device Device => kind == DeviceKind.Cpu ? Device.Cpu : Device.Simt;

    [TestCase(1, 2, 0f, 1f)]
    [TestCase(7, 13, 0f, 3f)]
    [TestCase(33, 1031, 0.1f, 5f)]
    [TestCase(4, 9, 0.2f, 150f)]  // logits far past exp's range: the max shift keeps it finite
    public void CrossEntropyMatchesDoubleReference(int rows, int classes, float smoothing, float logitScale)
    {
        var data = new TestData(TestData.SeedFor($"ce{rows}x{classes}"));
        float[] logits = data.NonZero(rows * classes, logitScale);
        int[] targets = Targets(data, rows, classes, ignoreRow: rows > 2 ? 1 : -1);
        var model = new CrossEntropyModel(logits, targets, rows, classes, smoothing);

        using Tensor x = Tensor.FromArray(Device, logits, rows, classes);
        var (loss, gradient) = Losses.CrossEntropy(x, targets, labelSmoothing: smoothing);
        using (gradient)
        {
            Assert.That(loss, Is.EqualTo(model.Loss()).Within(model.LossBound()), "loss");
            double[] analytic = model.Gradient();
            Expect.NotVacuous("reference gradient", analytic);
            Expect.Close("dlogits", gradient!.ToArray(), analytic, model.GradientBounds());
            if (rows > 2)
                Assert.That(gradient.ToArray().Skip(classes).Take(classes), Is.All.EqualTo(0f), "an ignored row gets no gradient");
        }
        Assert.That(Losses.CrossEntropy(x, targets, labelSmoothing: smoothing, wantGradient: false).Loss, Is.EqualTo(loss),
            "the loss alone is the same value");
    }

    [Test]
    public void ReferenceGradientMatchesFiniteDifferences()
    {
        const int rows = 5, classes = 6;
        var data = new TestData(5);
        float[] logits = data.NonZero(rows * classes, 2f);
        int[] targets = Targets(data, rows, classes, ignoreRow: 3);
        var model = new CrossEntropyModel(logits, targets, rows, classes, 0.15);
        double[] analytic = model.Gradient(), fd = model.FiniteDifferences();
        Expect.NotVacuous("finite differences", fd.Where((_, i) => i / classes != 3).ToArray());
        // Central differences with h = 1e-4 on a smooth loss: error O(h²·|f'''|) ≈ 1e-9, plus rounding 1e-16/h.
        for (int i = 0; i < analytic.Length; i++)
            Assert.That(analytic[i], Is.EqualTo(fd[i]).Within(1e-8), $"dlogits[{i}]");
    }

    [Test]
    public void AllRowsIgnoredGiveNaNAsTorch()
    {
        using Tensor x = Tensor.FromArray(Device, [1f, 2f, 3f, 4f], 2, 2);
        var (loss, gradient) = Losses.CrossEntropy(x, [-100, -100]);
        using (gradient)
        {
            Assert.That(float.IsNaN(loss), Is.True);
            Assert.That(gradient!.ToArray(), Is.All.EqualTo(0f));
        }
    }

    [Test]
    public void TapeCrossEntropyTrainsThroughALayerAsItsGradientSays()
    {
        const int m = 9, inFeatures = 12, classes = 7, r = 3;
        var data = new TestData(21);
        using Tensor w0 = Tensor.FromArray(Device, data.NonZero(classes * inFeatures, 0.3f), classes, inFeatures);
        using Tensor x = Tensor.FromArray(Device, data.NonZero(m * inFeatures), m, inFeatures);
        int[] targets = Targets(data, m, classes, ignoreRow: 4);
        float[] b = data.NonZero(classes * r, 0.5f);

        // Through the tape's own loss ...
        using var layer = new LoraLinear(Device, w0, null, r, alpha: 6f, seed: 3);
        layer.B.Value.CopyFrom(b);
        using var tape = new Tape();
        Variable logits = layer.Forward(tape, new Variable(x));
        float loss = tape.CrossEntropyLoss(logits, targets, labelSmoothing: 0.05f);
        tape.Backward();
        float[] gradA = layer.A.Grad!.ToArray(), gradB = layer.B.Grad!.ToArray();

        // ... and through Backward(output, gradient) with the same loss's gradient computed outside the tape.
        using var twin = new LoraLinear(Device, w0, null, r, alpha: 6f, seed: 3);
        twin.B.Value.CopyFrom(b);
        using var twinTape = new Tape();
        Variable twinLogits = twin.Forward(twinTape, new Variable(x));
        var (twinLoss, dlogits) = Losses.CrossEntropy(twinLogits.Value, targets, labelSmoothing: 0.05f);
        using (dlogits) twinTape.Backward(twinLogits, dlogits!);

        Assert.That(twinLoss, Is.EqualTo(loss));
        Expect.Exact("A.Grad", twin.A.Grad!.ToArray(), gradA);
        Expect.Exact("B.Grad", twin.B.Grad!.ToArray(), gradB);
        Assert.That(gradA.Any(v => v != 0f) && gradB.Any(v => v != 0f), Is.True, "the gradients are not vacuous");

        // One optimizer-free step down the gradient lowers the loss (the sign is right).
        Ops.Elementwise.Axpy(-0.5f, layer.B.Grad!, layer.B.Value);
        using var after = new Tape();
        float lowered = after.CrossEntropyLoss(layer.Forward(after, new Variable(x)), targets, labelSmoothing: 0.05f);
        Assert.That(lowered, Is.LessThan(loss));
    }

    [Test]
    public void BackwardFromAGivenGradientEqualsTheRecordedMseLoss()
    {
        const int m = 6, inFeatures = 10, outFeatures = 8, r = 2;
        var data = new TestData(8);
        using Tensor w0 = Tensor.FromArray(Device, data.NonZero(outFeatures * inFeatures, 0.3f), outFeatures, inFeatures);
        using Tensor x = Tensor.FromArray(Device, data.NonZero(m * inFeatures), m, inFeatures);
        float[] target = data.NonZero(m * outFeatures), b = data.NonZero(outFeatures * r, 0.5f);
        using Tensor targetTensor = Tensor.FromArray(Device, target, m, outFeatures);

        using var recorded = new LoraLinear(Device, w0, null, r, alpha: 4f, seed: 9);
        recorded.B.Value.CopyFrom(b);
        using var tape = new Tape();
        var input = new Variable(x, requiresGrad: true);
        tape.MseLoss(recorded.Forward(tape, input), targetTensor);
        tape.Backward();

        // The same loss computed by the caller: d/dy mean((y - t)²) = 2(y - t)/n, in double, rounded once (as the kernel).
        using var given = new LoraLinear(Device, w0, null, r, alpha: 4f, seed: 9);
        given.B.Value.CopyFrom(b);
        using var ownTape = new Tape();
        var ownInput = new Variable(x, requiresGrad: true);
        Variable y = given.Forward(ownTape, ownInput);
        float[] yValues = y.Value.ToArray();
        float[] dy = new float[yValues.Length];
        for (int i = 0; i < dy.Length; i++) dy[i] = (float)(2.0 * ((double)yValues[i] - target[i]) * (1.0 / dy.Length));
        using Tensor dyTensor = Tensor.FromArray(Device, dy, m, outFeatures);
        ownTape.Backward(y, dyTensor);

        Expect.Exact("A.Grad", given.A.Grad!.ToArray(), recorded.A.Grad!.ToArray());
        Expect.Exact("B.Grad", given.B.Grad!.ToArray(), recorded.B.Grad!.ToArray());
        Expect.Exact("dx", ownInput.Grad!.ToArray(), input.Grad!.ToArray());
    }

    [Test]
    public void BadCrossEntropyArgumentsAreNamed()
    {
        using Tensor logits = Tensor.FromArray(Device, [1f, 2f, 3f, 4f, 5f, 6f], 2, 3);
        var e = Assert.Throws<ArgumentException>(() => Losses.CrossEntropy(logits, [0]))!;
        Assert.That(e.ParamName, Is.EqualTo("targets"));
        var range = Assert.Throws<ArgumentOutOfRangeException>(() => Losses.CrossEntropy(logits, [0, 3]))!;
        Assert.That(range.ParamName, Is.EqualTo("targets"));
        Assert.That(range.Message, Does.Contain("targets[1] = 3"));
        Assert.Throws<ArgumentOutOfRangeException>(() => Losses.CrossEntropy(logits, [0, -1]));
        Assert.That(Assert.Throws<ArgumentOutOfRangeException>(() => Losses.CrossEntropy(logits, [0, 1], labelSmoothing: 1.5f))!.ParamName,
            Is.EqualTo("labelSmoothing"));
        using Tensor flat = Tensor.FromArray(Device, [1f, 2f], 2);
        Assert.That(Assert.Throws<ArgumentException>(() => Losses.CrossEntropy(flat, [0, 1]))!.ParamName, Is.EqualTo("logits"));
        using Tensor bf16 = Tensor.FromArray(Device, [1f, 2f, 3f, 4f, 5f, 6f], DType.BF16, 2, 3);
        Assert.That(Assert.Throws<ArgumentException>(() => Losses.CrossEntropy(bf16, [0, 1]))!.ParamName, Is.EqualTo("logits"));
    }

    private static int[] Targets(TestData data, int rows, int classes, int ignoreRow)
    {
        var targets = new int[rows];
        for (int i = 0; i < rows; i++) targets[i] = i == ignoreRow ? Losses.DefaultIgnoreIndex : (int)(data.NextDouble() * classes);
        return targets;
    }

    /// <summary>torch's cross-entropy (mean, ignore_index -100, label smoothing) in double.</summary>
    private sealed class CrossEntropyModel(float[] logits, int[] targets, int rows, int classes, double smoothing)
    {
        private readonly double[] _x = Array.ConvertAll(logits, v => (double)v);
        private int Count => targets.Count(t => t != Losses.DefaultIgnoreIndex);

        public double Loss()
        {
            double total = 0;
            for (int i = 0; i < rows; i++)
            {
                if (targets[i] == Losses.DefaultIgnoreIndex) continue;
                var row = _x.AsSpan(i * classes, classes);
                double max = double.NegativeInfinity, sum = 0, mean = 0;
                foreach (double v in row) max = Math.Max(max, v);
                foreach (double v in row) { sum += Math.Exp(v - max); mean += v / classes; }
                total += max + Math.Log(sum) - (1 - smoothing) * row[targets[i]] - smoothing * mean;
            }
            return total / Count;
        }

        public double[] Gradient() => Walk((p, g, range) => g);

        public double[] GradientBounds() => Walk((p, g, range) =>
            4 * Tolerance.Fp32Unit * (range + 2) * p + 2 * Tolerance.Fp32Unit * Math.Abs(g) + 1e-30 * Count);

        public double LossBound()
        {
            double range = 0;
            for (int i = 0; i < rows; i++) range = Math.Max(range, Range(i));
            return 4 * Tolerance.Fp32Unit * (range + 2) + 2 * Tolerance.Fp32Unit * Math.Abs(Loss());
        }

        public double[] FiniteDifferences()
        {
            const double h = 1e-4;
            var fd = new double[_x.Length];
            for (int i = 0; i < _x.Length; i++)
            {
                double saved = _x[i];
                _x[i] = saved + h;
                double plus = Loss();
                _x[i] = saved - h;
                double minus = Loss();
                _x[i] = saved;
                fd[i] = (plus - minus) / (2 * h);
            }
            return fd;
        }

        private double Range(int i)
        {
            var row = _x.AsSpan(i * classes, classes);
            double max = double.NegativeInfinity, min = double.PositiveInfinity;
            foreach (double v in row) { max = Math.Max(max, v); min = Math.Min(min, v); }
            return max - min;
        }

        // f(p_j, g_j, R) per element, divided by the count; 0 on ignored rows.
        private double[] Walk(Func<double, double, double, double> f)
        {
            var result = new double[_x.Length];
            for (int i = 0; i < rows; i++)
            {
                if (targets[i] == Losses.DefaultIgnoreIndex) continue;
                var row = _x.AsSpan(i * classes, classes);
                double max = double.NegativeInfinity, sum = 0;
                foreach (double v in row) max = Math.Max(max, v);
                foreach (double v in row) sum += Math.Exp(v - max);
                double range = Range(i);
                for (int j = 0; j < classes; j++)
                {
                    double p = Math.Exp(row[j] - max) / sum;
                    double g = p - smoothing / classes - (j == targets[i] ? 1 - smoothing : 0);
                    result[i * classes + j] = f(p, g, range) / Count;
                }
            }
            return result;
        }
    }
}
