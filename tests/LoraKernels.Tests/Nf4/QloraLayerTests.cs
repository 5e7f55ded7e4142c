using LoraKernels.Autograd;
using LoraKernels.Layers;
using LoraKernels.Optim;

namespace LoraKernels.Tests.Nf4;

/// <summary>
/// QloraLinear on the tape: gradients of an MSE loss against central finite differences of the
/// double-precision reference (fed the layer's own dequantized base), the memory report against
/// the formulas, and leaks.
/// </summary>
[TestFixture(DeviceKind.Cpu)]
[TestFixture(DeviceKind.Simt)]
public sealed class QloraLayerTests(DeviceKind kind)
{
    private Device Device => kind == DeviceKind.Cpu ? Device.Cpu : Device.Simt;

    [TestCase(7, 33, 13, 4, 32)]
    [TestCase(1, 64, 9, 2, 64)]
    public void GradientsMatchFiniteDifferences(int m, int inFeatures, int outFeatures, int r, int blockSize)
    {
        var data = new TestData(TestData.SeedFor($"qlora-grad{m}x{inFeatures}x{outFeatures}"));
        float[] w0 = data.NonZero(outFeatures * inFeatures, 1f / MathF.Sqrt(inFeatures));
        float[] biasValues = data.NonZero(outFeatures, 0.5f);
        float[] xValues = data.NonZero(m * inFeatures);
        float[] target = data.NonZero(m * outFeatures);
        float[] bValues = data.NonZero(outFeatures * r, 1f / MathF.Sqrt(r));

        using Tensor w0Tensor = Tensor.FromArray(Device.Cpu, w0, outFeatures, inFeatures);
        using Tensor biasTensor = Tensor.FromArray(Device.Cpu, biasValues, outFeatures);
        using var layer = new QloraLinear(Device, w0Tensor, biasTensor, r, alpha: 2f * r, seed: 5, blockSize: blockSize);
        layer.B.Value.CopyFrom(bValues);
        float[] aValues = layer.A.Value.ToArray();
        float[] deq = Nf4OpsTests.ReferenceWeight(layer.Base.Weight);
        double scale = layer.Scale;

        using Tensor x = Tensor.FromArray(Device, xValues, m, inFeatures);
        using Tensor targetTensor = Tensor.FromArray(Device, target, m, outFeatures);
        using var tape = new Tape();
        var input = new Variable(x, requiresGrad: true);
        float loss = tape.MseLoss(layer.Forward(tape, input), targetTensor);
        tape.Backward();

        double Loss(double[] xs, double[] a, double[] b)
        {
            double sum = 0;
            for (int row = 0; row < m; row++)
            {
                var u = new double[r];
                for (int j = 0; j < r; j++)
                    for (int k = 0; k < inFeatures; k++) u[j] += xs[row * inFeatures + k] * a[j * inFeatures + k];
                for (int o = 0; o < outFeatures; o++)
                {
                    double y = biasValues[o];
                    for (int k = 0; k < inFeatures; k++) y += xs[row * inFeatures + k] * deq[o * inFeatures + k];
                    for (int j = 0; j < r; j++) y += scale * u[j] * b[o * r + j];
                    double d = y - target[row * outFeatures + o];
                    sum += d * d;
                }
            }
            return sum / (m * outFeatures);
        }

        double[] xd = Array.ConvertAll(xValues, v => (double)v), ad = Array.ConvertAll(aValues, v => (double)v), bd = Array.ConvertAll(bValues, v => (double)v);
        double exactLoss = Loss(xd, ad, bd);
        Assert.That(loss, Is.EqualTo(exactLoss).Within(1e-5 * Math.Abs(exactLoss) + 1e-6), "loss");

        // The loss is quadratic in each single parameter, so a central difference in double is exact up
        // to cancellation, O(ε_double·L/h) ≈ 1e-12. The bound is the fp32 kernels' own, 1e-6 + 2K·2⁻²⁴·Σ|terms|,
        // with Σ|terms| ≤ 8·max|g| for these O(1) inputs (y − target and the products feeding it are O(1)).
        void Check(string what, double[] parameter, float[] gradient, int reduction)
        {
            const double h = 1e-4;
            var numeric = new double[parameter.Length];
            for (int i = 0; i < parameter.Length; i++)
            {
                double saved = parameter[i];
                parameter[i] = saved + h;
                double plus = Loss(xd, ad, bd);
                parameter[i] = saved - h;
                double minus = Loss(xd, ad, bd);
                parameter[i] = saved;
                numeric[i] = (plus - minus) / (2 * h);
            }
            Expect.NotVacuous($"{what} numeric", numeric);
            double scaleOfGradient = numeric.Max(Math.Abs);
            double bound = 1e-6 + 2 * reduction * Tolerance.Fp32Unit * scaleOfGradient * 8;
            Expect.Close(what, gradient, numeric, Enumerable.Repeat(bound, numeric.Length).ToArray());
        }

        Check("dx", xd, input.Grad!.ToArray(), 2 * (inFeatures + outFeatures + r));
        Check("dA", ad, layer.A.Grad!.ToArray(), 2 * (inFeatures + outFeatures + m));
        Check("dB", bd, layer.B.Grad!.ToArray(), 2 * (inFeatures + outFeatures + m));
    }

    [TestCase(DType.F32, false)]
    [TestCase(DType.F32, true)]
    [TestCase(DType.BF16, true)]
    public void MemoryReportMeasuresWhatTheFormulasSay(DType dtype, bool doubleQuant)
    {
        const int inFeatures = 200, outFeatures = 96, r = 8, blockSize = 64, m = 3;
        var data = new TestData(3);
        using Tensor w0 = Tensor.FromArray(Device.Cpu, data.NonZero(outFeatures * inFeatures), outFeatures, inFeatures);
        using Tensor bias = Tensor.FromArray(Device.Cpu, data.NonZero(outFeatures), outFeatures);
        using var lora = new LoraLinear(Device, w0, bias, r, 16f, dtype: dtype);
        using var qlora = new QloraLinear(Device, w0, bias, r, 16f, dtype: dtype, blockSize: blockSize, doubleQuant: doubleQuant);
        using var loraOptimizer = new AdamW(lora.Parameters());
        using var qloraOptimizer = new AdamW(qlora.Parameters());
        using Tensor x = Tensor.FromArray(Device, data.NonZero(m * inFeatures), dtype, m, inFeatures);
        using Tensor target = Tensor.FromArray(Device, data.NonZero(m * outFeatures), m, outFeatures);
        foreach (var (layer, optimizer) in new (IAdapterLayer, AdamW)[] { (lora, loraOptimizer), (qlora, qloraOptimizer) })
        {
            using var tape = new Tape();
            Variable y = layer.Forward(tape, new Variable(x));
            if (dtype != DType.F32) y = tape.Cast(y, DType.F32);
            tape.MseLoss(y, target);
            tape.Backward();
            optimizer.Step();
        }

        int size = DTypeInfo.SizeOf(dtype);
        long n = (long)outFeatures * inFeatures, blocks = (n + blockSize - 1) / blockSize;
        long adapter = (long)(r * inFeatures + outFeatures * r) * size;
        long gradients = (long)(r * inFeatures + outFeatures * r) * sizeof(float);
        // AdamW keeps m and v in fp32, plus an fp32 master copy of a BF16 parameter.
        long optimizerState = (r * inFeatures + outFeatures * r) * sizeof(float) * (dtype == DType.F32 ? 2L : 3L);

        MemoryReport loraReport = MemoryReport.Of(lora, loraOptimizer);
        Assert.That(loraReport, Is.EqualTo(new MemoryReport("LoRA", (n + outFeatures) * size, 0, adapter, gradients, optimizerState)));

        long statistics = doubleQuant ? blocks + (blocks + 255) / 256 * sizeof(float) : blocks * sizeof(float);
        MemoryReport qloraReport = MemoryReport.Of(qlora, qloraOptimizer);
        Assert.That(qloraReport, Is.EqualTo(new MemoryReport("QLoRA", (n + 1) / 2 + outFeatures * size, statistics, adapter, gradients, optimizerState)));
        Assert.That(qloraReport.BaseWeightBytes + qloraReport.StatisticsBytes, Is.LessThan(loraReport.BaseWeightBytes / 3));
    }

    [Test]
    public void DemoTrainerLearnsOverNf4Bases()
    {
        // The demo's QLoRA run on small sizes. Its teacher uses the dense bases, so the loss floor is the NF4
        // rounding the adapters cannot undo: the bar is half the first loss (LoRA's demo test asks a quarter).
        var options = new LoraKernels.Demo.Training.TrainerOptions
        {
            InFeatures = 48, HiddenFeatures = 80, OutFeatures = 40, BatchSize = 16, Rank = 8, Alpha = 16f, HiddenRank = 4,
            LearningRate = 1e-2f, QuantizedBase = true,
        };
        long before = Device.LiveAllocations;
        var losses = new List<float>();
        using (var trainer = new LoraKernels.Demo.Training.LoraMlpTrainer(Device, options))
        {
            for (int step = 0; step < 60; step++) losses.Add(trainer.Step());
            IReadOnlyList<MemoryReport> reports = trainer.MemoryReports();
            Assert.That(reports.Sum(r => r.StatisticsBytes), Is.GreaterThan(0), "the students' bases are quantized");
        }
        Assert.That(losses.All(float.IsFinite), Is.True);
        Assert.That(losses.TakeLast(3).Average(), Is.LessThan(0.5 * losses[0]), string.Join(", ", losses));
        Assert.That(Device.LiveAllocations, Is.EqualTo(before), "the trainer frees everything");
    }

    [Test]
    public void LayersAndWeightsFreeEverything()
    {
        long before = Device.LiveAllocations, beforeBytes = Device.LiveBytes;
        var data = new TestData(9);
        using (Tensor w0 = Tensor.FromArray(Device.Cpu, data.NonZero(40 * 33), 40, 33))
        {
            var layer = new QloraLinear(Device, w0, null, 4, 8f, dropout: 0.1f, doubleQuant: true);
            using (Tensor x = Tensor.FromArray(Device, data.NonZero(5 * 33), 5, 33))
            using (Tensor y = layer.Forward(x))
                Assert.That(y.Shape, Is.EqualTo(new long[] { 5, 40 }));
            layer.Dispose();
            layer.Dispose();
            using Tensor late = Tensor.Zeros(Device, DType.F32, 1, 33);
            Assert.Throws<ObjectDisposedException>(() => layer.Forward(late));
        }
        Assert.That(Device.LiveAllocations, Is.EqualTo(before));
        Assert.That(Device.LiveBytes, Is.EqualTo(beforeBytes));
    }
}
