// MambaBlock (LoRA on any subset of in_proj, x_proj, dt_proj, out_proj) on the CPU kernels and under the SIMT
// emulator: its forward against the block written out in double (MambaReference: Mamba's mixer, each targeted
// projection W x + s·B(A x)), its gradients (x and every adapter) against central differences of that double
// forward, CPU against SIMT, and decode steps against the sequence forward.
//
// Tolerances: normwise (the block chains five products, a convolution, exponentials and the scan, so a per-element
// Σ|terms| is not formed): |got - want| <= 1e-9 + K·2⁻²⁴·max|want| with K the longest chain (the floor is far below
// every scale checked: dt_proj's gradients are ~1e-4), the scan's (40 + 2N)
// plus the projections' reductions (d_model + d_inner + dt_rank + 3·r + the conv width): 40 + 2N + 2·(d_model + d_inner)
// covers it for the forward; gradients add the backward's (80 + 2N + d_inner for the scan) and the central
// differences' own error (h = 2⁻¹⁰ on a smooth double forward: h²/6·|L'''| below 1e-6 relative): K + 64.
using LoraKernels.Autograd;
using LoraKernels.Layers;

namespace LoraKernels.Tests.StateSpace;

[TestFixture]
public sealed class MambaBlockTests
{
    private static readonly MambaConfig Config = new(ModelFeatures: 6, States: 4, ConvWidth: 3, Expand: 2, DtRank: 2);
    private const int Rank = 2, Batch = 2, Length = 9;
    private const float Alpha = 4f;

    public static IEnumerable<TestCaseData> Targets()
    {
        yield return new TestCaseData((object)MambaBlock.ProjectionNames).SetName("AllProjections");
        yield return new TestCaseData((object)new[] { "x_proj", "dt_proj" }).SetName("XAndDtProj");
        yield return new TestCaseData((object)new[] { "out_proj" }).SetName("OutProjOnly");
    }

    /// <summary>A block with random frozen weights and, so the adapters act, random B matrices; the reference's copy of every value.</summary>
    private static (MambaBlock Block, MambaReference Reference) Build(Device device, string[] targets)
    {
        using MambaWeights weights = MambaWeights.Random(device, Config, seed: 5);
        // Δ = softplus(0) ≈ 0.7 instead of Mamba's initial 0.001..0.1, so dt_proj's and x_proj's adapters move the output
        // measurably (else their gradients are ~1e-5 and the check would say little).
        weights.DtBias.CopyFrom(new float[Config.InnerFeatures]);
        var block = new MambaBlock(device, Config, weights, Rank, Alpha, targets, seed: 9);
        var data = new TestData(10);
        var reference = new MambaReference(Config, weights, Alpha / Rank);
        foreach (string target in targets)
        {
            LoraLinear adapter = block.Adapter(target);
            adapter.B.Value.CopyFrom(data.NonZero((int)adapter.B.Value.ElementCount, 0.5f));
            reference.Lora[target] = (adapter.A.Value.ToArray(), adapter.B.Value.ToArray());
        }
        return (block, reference);
    }

    private static int ForwardChain => 40 + 2 * Config.States + 2 * (Config.ModelFeatures + Config.InnerFeatures);

    [TestCaseSource(nameof(Targets))]
    public void ForwardAndGradientsMatchTheDoubleBlock(string[] targets)
    {
        var x = new TestData(11).NonZero(Batch * Length * Config.ModelFeatures);
        var dy = new TestData(12).NonZero(Batch * Length * Config.ModelFeatures);
        var results = new List<Dictionary<string, float[]>>();
        foreach (Device device in new[] { Device.Cpu, Device.Simt })
        {
            var (block, reference) = Build(device, targets);
            using (block)
            {
                double[] want = reference.Forward(x, Batch);
                using var tape = new Tape();
                using Tensor xs = Tensor.FromArray(device, x, Batch * Length, Config.ModelFeatures);
                var input = new Variable(xs, requiresGrad: true);
                Variable y = block.Forward(tape, input, Batch);
                var got = new Dictionary<string, float[]> { ["y"] = y.Value.ToArray() };
                Normwise($"{device} y", got["y"], want, ForwardChain);
                using Tensor dyTensor = Tensor.FromArray(device, dy, Batch * Length, Config.ModelFeatures);
                tape.Backward(y, dyTensor);
                got["dx"] = input.Grad!.ToArray();
                int gradientChain = ForwardChain + 80 + 2 * Config.States + Config.InnerFeatures + 64;
                Normwise($"{device} dx", got["dx"], reference.Central(x, x, dy, Batch), gradientChain);
                foreach (string target in targets)
                {
                    LoraLinear adapter = block.Adapter(target);
                    var (a, b) = reference.Lora[target];
                    got[$"{target} dA"] = adapter.A.Grad!.ToArray();
                    got[$"{target} dB"] = adapter.B.Grad!.ToArray();
                    Normwise($"{device} {target} dA", got[$"{target} dA"], reference.Central(a, x, dy, Batch), gradientChain);
                    Normwise($"{device} {target} dB", got[$"{target} dB"], reference.Central(b, x, dy, Batch), gradientChain);
                }
                Assert.That(block.Parameters().Count(), Is.EqualTo(2 * targets.Length), "A and B of each targeted projection train");
                results.Add(got);
            }
        }
        foreach (string key in results[0].Keys)
            Normwise($"cpu vs simt {key}", results[1][key], Array.ConvertAll(results[0][key], v => (double)v), 2 * ForwardChain + 300);
    }

    [TestCase(DeviceKind.Cpu)]
    [TestCase(DeviceKind.Simt)]
    public void DecodeStepsReproduceTheSequenceForward(DeviceKind kind)
    {
        Device device = kind == DeviceKind.Cpu ? Device.Cpu : Device.Simt;
        var (block, _) = Build(device, MambaBlock.ProjectionNames);
        using (block)
        {
            float[] x = new TestData(21).NonZero(Batch * Length * Config.ModelFeatures);
            using Tensor xs = Tensor.FromArray(device, x, Batch * Length, Config.ModelFeatures);
            using var tape = new Tape();
            float[] sequence = block.Forward(tape, new Variable(xs), Batch).Value.ToArray();
            using MambaState state = block.NewState(Batch);
            int dm = Config.ModelFeatures;
            for (int t = 0; t < Length; t++)
            {
                float[] rows = Enumerable.Range(0, Batch).SelectMany(b => x[((b * Length + t) * dm)..((b * Length + t + 1) * dm)]).ToArray();
                using Tensor token = Tensor.FromArray(device, rows, Batch, dm);
                using Tensor y = block.Step(token, state);
                float[] step = y.ToArray();
                for (int b = 0; b < Batch; b++)
                    Normwise($"{device} step {t} sequence {b}", step[(b * dm)..((b + 1) * dm)],
                             Array.ConvertAll(sequence[((b * Length + t) * dm)..((b * Length + t + 1) * dm)], v => (double)v), 2 * ForwardChain);
            }
        }
    }

    [Test]
    public void BadTargetsAndShapesAreRefused()
    {
        using MambaWeights weights = MambaWeights.Random(Device.Cpu, Config, seed: 1);
        Assert.That(() => new MambaBlock(Device.Cpu, Config, weights, Rank, Alpha, ["q_proj"]),
                    Throws.ArgumentException.With.Message.Contains("'q_proj' is not a Mamba projection"));
        Assert.That(() => new MambaBlock(Device.Cpu, Config with { States = 5 }, weights, Rank, Alpha, ["x_proj"]),
                    Throws.ArgumentException.With.Message.Contains("weights.XProj must be [12, 12]"));
        Assert.That(() => new MambaConfig(8, States: 17).Check(), Throws.TypeOf<ArgumentOutOfRangeException>().With.Message.Contains("d_state must be in [1, 16]"));
        using var block = new MambaBlock(Device.Cpu, Config, weights, Rank, Alpha, ["x_proj"]);
        using Tensor x = Tensor.Zeros(Device.Cpu, DType.F32, 9, Config.ModelFeatures);
        using var tape = new Tape();
        Assert.That(() => block.Forward(tape, new Variable(x), 2), Throws.TypeOf<ArgumentOutOfRangeException>().With.Message.Contains("divide x's 9 rows"));
        Assert.That(() => block.Adapter("in_proj"), Throws.ArgumentException.With.Message.Contains("carries no LoRA"));
    }

    private static void Normwise(string what, float[] got, double[] want, int chain)
    {
        double scale = want.Max(Math.Abs);
        Assert.That(scale, Is.GreaterThan(1e-6), $"{what}: the reference is (near) zero");
        double bound = 1e-9 + chain * Tolerance.Fp32Unit * scale;  // the floor far below every scale checked
        Expect.Close(what, got, want, Enumerable.Repeat(bound, want.Length).ToArray());
    }
}

/// <summary>
/// Mamba's mixer in double, written from mamba_simple.py: in_proj, conv + SiLU, x_proj, dt_proj, the selective scan
/// with the gate, out_proj; a targeted projection adds s·B(A x). Values only (its gradients come from central differences).
/// </summary>
internal sealed class MambaReference(MambaConfig config, MambaWeights weights, float scale)
{
    private readonly float[] _inProj = weights.InProj.ToArray(), _conv = weights.ConvWeight.ToArray(), _convBias = weights.ConvBias.ToArray();
    private readonly float[] _xProj = weights.XProj.ToArray(), _dtProj = weights.DtProj.ToArray(), _dtBias = weights.DtBias.ToArray();
    private readonly float[] _aLog = weights.ALog.ToArray(), _d = weights.D.ToArray(), _outProj = weights.OutProj.ToArray();

    /// <summary>A [r, in] and B [out, r] of each targeted projection (read by reference: perturbing them changes the forward).</summary>
    public Dictionary<string, (float[] A, float[] B)> Lora { get; } = new();

    private double[] Project(string name, float[] w, double[] x, int rows, int inFeatures, int outFeatures)
    {
        var y = new double[rows * outFeatures];
        for (int m = 0; m < rows; m++)
            for (int o = 0; o < outFeatures; o++)
            {
                double sum = 0;
                for (int k = 0; k < inFeatures; k++) sum += w[o * inFeatures + k] * x[m * inFeatures + k];
                y[m * outFeatures + o] = sum;
            }
        if (!Lora.TryGetValue(name, out var lora)) return y;
        int r = lora.A.Length / inFeatures;
        for (int m = 0; m < rows; m++)
        {
            var u = new double[r];
            for (int j = 0; j < r; j++)
                for (int k = 0; k < inFeatures; k++) u[j] += lora.A[j * inFeatures + k] * x[m * inFeatures + k];
            for (int o = 0; o < outFeatures; o++)
                for (int j = 0; j < r; j++) y[m * outFeatures + o] += scale * lora.B[o * r + j] * u[j];
        }
        return y;
    }

    private static double Silu(double v) => v / (1 + Math.Exp(-v));

    public double[] Forward(float[] input, int batch)
    {
        int dm = config.ModelFeatures, di = config.InnerFeatures, n = config.States, r = config.Rank, k = config.ConvWidth;
        int rows = input.Length / dm, length = rows / batch, wide = config.XProjFeatures;
        double[] xz = Project("in_proj", _inProj, Array.ConvertAll(input, v => (double)v), rows, dm, 2 * di);
        var u = new double[rows * di];
        for (int m = 0; m < rows; m++)
            for (int d = 0; d < di; d++)
            {
                int t = m % length;
                double pre = _convBias[d];
                for (int j = 0; j < k; j++)
                    if (t - k + 1 + j >= 0) pre += _conv[d * k + j] * xz[(m - k + 1 + j) * 2 * di + d];
                u[m * di + d] = Silu(pre);
            }
        double[] xdbl = Project("x_proj", _xProj, u, rows, di, wide);
        var dt = new double[rows * r];
        for (int m = 0; m < rows; m++) Array.Copy(xdbl, m * wide, dt, m * r, r);
        double[] delta = Project("dt_proj", _dtProj, dt, rows, r, di);
        var y = new double[rows * di];
        for (int b = 0; b < batch; b++)
            for (int d = 0; d < di; d++)
            {
                var h = new double[n];
                for (int t = 0; t < length; t++)
                {
                    int m = b * length + t;
                    double raw = delta[m * di + d] + _dtBias[d], step = raw <= 20 ? double.LogP1(Math.Exp(raw)) : raw, x = u[m * di + d];
                    double sum = _d[d] * x;
                    for (int s = 0; s < n; s++)
                    {
                        h[s] = Math.Exp(-step * Math.Exp(_aLog[d * n + s])) * h[s] + step * xdbl[m * wide + r + s] * x;
                        sum += xdbl[m * wide + r + n + s] * h[s];
                    }
                    y[m * di + d] = sum * Silu(xz[m * 2 * di + di + d]);
                }
            }
        return Project("out_proj", _outProj, y, rows, di, dm);
    }

    /// <summary>d(Σ dy ⊙ Forward(x)) / d values[i] by central differences, h = 2⁻¹⁰ (values: x or an adapter's A or B, perturbed in place).</summary>
    public double[] Central(float[] values, float[] x, float[] dy, int batch) =>
        CentralDifferences.Of(values, () =>
        {
            double[] y = Forward(x, batch);
            double sum = 0;
            for (int i = 0; i < y.Length; i++) sum += dy[i] * y[i];
            return sum;
        }, 1f / 1024);
}
