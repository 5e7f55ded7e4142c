using LoraKernels.Autograd;
using LoraKernels.Layers;

namespace LoraKernels.Tests.Autograd;

/// <summary>A gradient-check case: device, dropout, rsLoRA.</summary>
public sealed record GradientCase(DeviceKind Device, float Dropout, bool RsLora)
{
    public override string ToString() => $"GradientCheck_{Device}_drop{Dropout}{(RsLora ? "_rslora" : "")}";
}

/// <summary>
/// LoraLinear trained through the Tape with an MSE loss: the library's A.Grad, B.Grad and dx are
/// checked against central finite differences of a double-precision re-implementation of the
/// layer and loss. The same finite differences first check the reference's own analytic
/// gradients (Reference.LoraBackward), so the tolerance for the library can use its Σ|terms|.
/// </summary>
[TestFixture]
public sealed class GradientCheckTests
{
    private const int M = 6, In = 13, Out = 11, R = 4;
    private const float Alpha = 8f;
    private const ulong LayerSeed = 77;

    public static IEnumerable<TestCaseData> Cases() =>
        from device in new[] { DeviceKind.Cpu, DeviceKind.Simt }
        from dropout in new[] { 0f, 0.25f }
        from rsLora in new[] { false, true }
        let c = new GradientCase(device, dropout, rsLora)
        select new TestCaseData(c).SetName(c.ToString());

    [TestCaseSource(nameof(Cases))]
    public void LibraryGradientsMatchFiniteDifferences(GradientCase c)
    {
        Device device = c.Device == DeviceKind.Cpu ? Device.Cpu : Device.Simt;
        var data = new TestData(TestData.SeedFor(c.ToString()));
        float[] w0 = data.NonZero(Out * In, 1f / MathF.Sqrt(In)), bias = data.NonZero(Out, 0.5f);
        float[] x = data.NonZero(M * In), target = data.NonZero(M * Out);
        float[] b = data.NonZero(Out * R, 0.5f);  // B starts at zero in a new layer; non-zero so dA and dx's LoRA term are not vacuous

        using var w0Tensor = Tensor.FromArray(device, w0, Out, In);
        using var biasTensor = Tensor.FromArray(device, bias, Out);
        using var layer = new LoraLinear(device, w0Tensor, biasTensor, R, Alpha, c.Dropout, c.RsLora, LayerSeed);
        double expectedScale = c.RsLora ? Alpha / Math.Sqrt(R) : (double)Alpha / R;
        Assert.That(layer.Scale, Is.EqualTo(expectedScale).Within(1e-6), "scale: alpha/sqrt(r) with rsLoRA, else alpha/r");
        layer.B.Value.CopyFrom(b);
        float[] a = layer.A.Value.ToArray();
        Assert.That(a.All(v => Math.Abs(v) <= 1 / Math.Sqrt(In)) && a.Any(v => v != 0f), Is.True, "A starts U(±1/sqrt(in)), non-zero");
        // The tape draws the forward's dropout seed from the layer; a twin layer with the same seed tells us which.
        ulong dropoutSeed;
        using (var twin = new LoraLinear(device, w0Tensor, biasTensor, R, Alpha, c.Dropout, c.RsLora, LayerSeed))
            dropoutSeed = twin.NextDropoutSeed();

        using var xTensor = Tensor.FromArray(device, x, M, In);
        using var targetTensor = Tensor.FromArray(device, target, M, Out);
        using var tape = new Tape();
        var input = new Variable(xTensor, requiresGrad: true);
        float loss = tape.MseLoss(layer.Forward(tape, input), targetTensor);
        tape.Backward();
        Assert.That(layer.A.Grad, Is.Not.Null, "A.Grad");
        Assert.That(layer.B.Grad, Is.Not.Null, "B.Grad");
        Assert.That(input.Grad, Is.Not.Null, "dx");
        float[] gradA = layer.A.Grad!.ToArray(), gradB = layer.B.Grad!.ToArray(), gradX = input.Grad!.ToArray();

        var model = new LoraModel(x, w0, bias, a, b, target, layer.Scale, c.Dropout, dropoutSeed);
        Assert.That(loss, Is.EqualTo(model.Loss()).Within(model.LossBound()), "loss value");

        // Finite differences in double: the loss is quadratic in each single parameter, so the
        // central difference is exact up to rounding (~1e-16·L/h).
        double[] fdA = model.FiniteDifferences(model.A), fdB = model.FiniteDifferences(model.B), fdX = model.FiniteDifferences(model.X);
        var (analytic, bounds) = model.AnalyticGradients();
        Expect.NotVacuous("dA by finite differences", fdA);
        Expect.NotVacuous("dB by finite differences", fdB);
        Expect.NotVacuous("dx by finite differences", fdX);
        // The reference's analytic gradients agree with its finite differences to near double
        // precision (finite-difference rounding ~1e-16·L/h ≈ 1e-12; the bound leaves room for L ~ 10).
        CloseInDouble("reference dA vs finite differences", analytic.DA, fdA);
        CloseInDouble("reference dB vs finite differences", analytic.DB, fdB);
        CloseInDouble("reference dx vs finite differences", analytic.Dx, fdX);

        Expect.Close($"{c.Device} A.Grad", gradA, fdA, bounds.DA);
        Expect.Close($"{c.Device} B.Grad", gradB, fdB, bounds.DB);
        Expect.Close($"{c.Device} dx", gradX, fdX, bounds.Dx);
    }

    private static void CloseInDouble(string what, double[] actual, double[] expected)
    {
        for (int i = 0; i < actual.Length; i++)
            Assert.That(actual[i], Is.EqualTo(expected[i]).Within(1e-9), $"{what} [{i}]");
    }

    /// <summary>The layer and loss in double: L = mean((x W0ᵀ + bias + s·(dropout(x) Aᵀ) Bᵀ - target)²).</summary>
    private sealed class LoraModel(float[] x, float[] w0, float[] bias, float[] a, float[] b, float[] target,
                                   float scale, float dropout, ulong seed)
    {
        public double[] X { get; } = Array.ConvertAll(x, v => (double)v);
        public double[] A { get; } = Array.ConvertAll(a, v => (double)v);
        public double[] B { get; } = Array.ConvertAll(b, v => (double)v);
        private readonly double[] _mask = Reference.DropoutFactors(M, In, dropout, seed);

        public double[] Output()
        {
            var y = new double[M * Out];
            for (int m = 0; m < M; m++)
            {
                var u = new double[R];
                for (int j = 0; j < R; j++)
                    for (int k = 0; k < In; k++)
                        u[j] += X[m * In + k] * _mask[m * In + k] * A[j * In + k];
                for (int o = 0; o < Out; o++)
                {
                    double sum = bias[o];
                    for (int k = 0; k < In; k++) sum += X[m * In + k] * w0[o * In + k];
                    for (int j = 0; j < R; j++) sum += scale * u[j] * B[o * R + j];
                    y[m * Out + o] = sum;
                }
            }
            return y;
        }

        public double Loss()
        {
            double[] y = Output();
            double sum = 0;
            for (int i = 0; i < y.Length; i++) sum += (y[i] - target[i]) * (y[i] - target[i]);
            return sum / y.Length;
        }

        /// <summary>dL/dθ for every element of <paramref name="parameters"/> (one of X, A, B), by central differences.</summary>
        public double[] FiniteDifferences(double[] parameters)
        {
            const double h = 1e-4;
            var gradient = new double[parameters.Length];
            for (int i = 0; i < parameters.Length; i++)
            {
                double saved = parameters[i];
                parameters[i] = saved + h;
                double plus = Loss();
                parameters[i] = saved - h;
                double minus = Loss();
                parameters[i] = saved;
                gradient[i] = (plus - minus) / (2 * h);
            }
            return gradient;
        }

        /// <summary>
        /// The analytic gradients (Reference.LoraBackward in double with dy = 2(y - target)/n) and
        /// the library's bounds: Atol + 2·K·2⁻²⁴·Σ|terms|, K the forward, loss and backward chain
        /// lengths, and Σ|terms| taken with |dy| enlarged by the forward's own Σ|terms| (an fp32 error
        /// in y reaches dy through the loss) and with u replaced by its Σ|terms|.
        /// </summary>
        public (Reference.BackwardResult Gradients, (double[] Dx, double[] DA, double[] DB) Bounds) AnalyticGradients()
        {
            float[] xf = Array.ConvertAll(X, v => (float)v), af = Array.ConvertAll(A, v => (float)v), bf = Array.ConvertAll(B, v => (float)v);
            var forward = Reference.LoraForward(M, In, Out, R, xf, w0, bias, af, bf, scale, dropout, seed);
            int n = M * Out;
            var dy = new double[n];
            var dyMagnitude = new double[n];
            for (int i = 0; i < n; i++)
            {
                dy[i] = 2 * (forward.Y[i] - target[i]) / n;
                dyMagnitude[i] = 2 * (Math.Abs(forward.Y[i] - target[i]) + forward.YAbs[i]) / n;
            }
            var gradients = Reference.LoraBackward(M, In, Out, R, xf, w0, af, bf, forward.U, dy, scale, dropout, seed);
            var magnitudes = Reference.LoraBackward(M, In, Out, R, xf, w0, af, bf, forward.UAbs, dyMagnitude, Math.Abs(scale), dropout, seed);
            int chain = (In + 1 + R + 1 + In + 1) + 3 + (Out + Out + 1 + R + 1 + M + 1);
            double[] Bound(double[] abs) => Array.ConvertAll(abs, v => Tolerance.Atol + Tolerance.Factor * chain * Tolerance.Fp32Unit * v);
            return (gradients, (Bound(magnitudes.DxAbs), Bound(magnitudes.DAAbs), Bound(magnitudes.DBAbs)));
        }

        /// <summary>
        /// The library's loss may differ by its fp32 error in y (≤ 2·K·2⁻²⁴·Σ|y terms|) carried
        /// through (2/n)·Σ|y - t|·δy, plus n roundings of the mean.
        /// </summary>
        public double LossBound()
        {
            float[] xf = Array.ConvertAll(X, v => (float)v), af = Array.ConvertAll(A, v => (float)v), bf = Array.ConvertAll(B, v => (float)v);
            var forward = Reference.LoraForward(M, In, Out, R, xf, w0, bias, af, bf, scale, dropout, seed);
            int n = M * Out;
            double carried = 0;
            for (int i = 0; i < n; i++)
                carried += 2.0 / n * Math.Abs(forward.Y[i] - target[i]) * Tolerance.Factor * (2 * In + R + 3) * Tolerance.Fp32Unit * forward.YAbs[i];
            return Tolerance.Atol + carried + Tolerance.Factor * (n + 3) * Tolerance.Fp32Unit * Loss();
        }
    }
}
