// Ops.Ssm's selective scan (Mamba's S6) on the CPU kernels and under the SIMT emulator (kernels/ssm.cu's chunked
// parallel scan), against the direct sequential scan in double (SsmReference), whose own gradients are checked by
// central differences; the decode step against the scan; the convolution against its definition; CPU against SIMT.
//
// Tolerances: Tracked.Bounds (Atol + 2·K·2⁻²⁴·M). The recurrence's decays are below 1, so an fp32 error made at a
// step fades like the state it is part of and M (which carries the same decays) bounds the drift: K counts the
// roundings of one step, not the length: softplus, the product Δ·A and its exponential, the state update, the
// N-term readout and the gate, and the chunked scan's carries (a product of 16 decays and one more update per
// chunk): K = 40 + 2N forward. The backward adds the adjoint's update and the channel sums of dB, dC: K = 80 + 2N + D.
// The 4096-step case is the drift test: Δ ≈ 0.02 makes the decays near 1 (memory of hundreds of steps), so an error
// that piled up with the length instead of fading would exceed a bound that does not grow with it.
using LoraKernels.Families.Ssm;

namespace LoraKernels.Tests.StateSpace;

[TestFixture]
public sealed class SsmTests
{
    public sealed record ScanCase(int Batch, int Length, int Channels, int States, bool Gate, bool InitialState, float DeltaShift = 0f)
    {
        public override string ToString() =>
            $"B{Batch}_L{Length}_D{Channels}_N{States}{(Gate ? "_gate" : "")}{(InitialState ? "_h0" : "")}{(DeltaShift != 0 ? "_long-memory" : "")}";
    }

    public static IEnumerable<ScanCase> Cases()
    {
        yield return new ScanCase(1, 1, 3, 16, true, false);       // one step
        yield return new ScanCase(2, 17, 5, 4, false, true);       // a partial chunk after a full one, two sequences
        yield return new ScanCase(1, 50, 33, 16, true, false);     // channels over one warp
        yield return new ScanCase(2, 33, 37, 7, true, true);
        yield return new ScanCase(1, 4096, 4, 16, true, true, -4f);  // the drift test (see the file comment)
    }

    private static int ForwardChain(ScanData s) => 40 + 2 * s.States;
    private static int BackwardChain(ScanData s) => 80 + 2 * s.States + s.Channels;

    private sealed class DeviceScan : IDisposable
    {
        public readonly Tensor U, Delta, DeltaBias, A, B, C, D;
        public readonly Tensor? Z, H0;

        public DeviceScan(Device device, ScanData s)
        {
            U = Tensor.FromArray(device, s.U, s.Rows, s.Channels);
            Delta = Tensor.FromArray(device, s.Delta, s.Rows, s.Channels);
            DeltaBias = Tensor.FromArray(device, s.DeltaBias, s.Channels);
            A = Tensor.FromArray(device, s.A, s.Channels, s.States);
            B = Tensor.FromArray(device, s.B, s.Rows, s.States);
            C = Tensor.FromArray(device, s.C, s.Rows, s.States);
            D = Tensor.FromArray(device, s.D, s.Channels);
            Z = s.Z is null ? null : Tensor.FromArray(device, s.Z, s.Rows, s.Channels);
            H0 = s.H0 is null ? null : Tensor.FromArray(device, s.H0, s.Batch, s.Channels, s.States);
        }

        public void Dispose()
        {
            foreach (Tensor? t in new[] { U, Delta, DeltaBias, A, B, C, D, Z, H0 }) t?.Dispose();
        }
    }

    [TestCaseSource(nameof(Cases))]
    public void ScanMatchesTheSequentialReference(ScanCase c)
    {
        ScanData s = ScanData.Random(TestData.SeedFor(c.ToString()), c.Batch, c.Length, c.Channels, c.States, c.Gate, c.InitialState, c.DeltaShift);
        var reference = SsmReference.Scan(s);
        Expect.NotVacuous("y", Tracked.Values(reference.Y));
        double[] yBound = Tracked.Bounds(reference.Y, ForwardChain(s)), lastBound = Tracked.Bounds(reference.LastState, ForwardChain(s));
        var results = new List<float[]>();
        foreach (Device device in new[] { Device.Cpu, Device.Simt })
        {
            using var t = new DeviceScan(device, s);
            var (y, last) = Ssm.Scan(c.Batch, t.U, t.Delta, t.DeltaBias, t.A, t.B, t.C, t.D, t.Z, t.H0);
            using (y)
            using (last)
            {
                float[] values = y.ToArray();
                Expect.Close($"{device} y", values, Tracked.Values(reference.Y), yBound);
                Expect.Close($"{device} last state", last.ToArray(), Tracked.Values(reference.LastState), lastBound);
                results.Add(values);
            }
        }
        Expect.Agree("cpu vs simt y", results[0], results[1], yBound);
    }

    [TestCaseSource(nameof(Cases))]
    public void ScanBackwardMatchesTheReference(ScanCase c)
    {
        ScanData s = ScanData.Random(TestData.SeedFor("backward " + c), c.Batch, c.Length, c.Channels, c.States, c.Gate, c.InitialState, c.DeltaShift);
        float[] dy = new TestData(TestData.SeedFor("dy " + c)).NonZero(s.Rows * s.Channels);
        var reference = SsmReference.ScanBackward(s, dy);
        Expect.NotVacuous("du", Tracked.Values(reference.Du));
        int chain = BackwardChain(s);
        var named = new List<(string Name, Tracked[] Expected)>
        {
            ("du", reference.Du), ("dDelta", reference.DDelta), ("dB", reference.DB), ("dC", reference.DC),
        };
        if (reference.Dz is not null) named.Add(("dz", reference.Dz));
        var results = new List<float[][]>();
        foreach (Device device in new[] { Device.Cpu, Device.Simt })
        {
            using var t = new DeviceScan(device, s);
            using Tensor dyTensor = Tensor.FromArray(device, dy, s.Rows, s.Channels);
            var (du, dDelta, dB, dC, dz) = Ssm.ScanBackward(c.Batch, t.U, t.Delta, t.DeltaBias, t.A, t.B, t.C, t.D, t.Z, t.H0, dyTensor);
            Tensor?[] outputs = [du, dDelta, dB, dC, dz];
            try
            {
                Assert.That(dz is null, Is.EqualTo(s.Z is null), "dz exactly when there is a gate");
                var values = new float[named.Count][];
                for (int i = 0; i < named.Count; i++)
                {
                    values[i] = outputs[i]!.ToArray();
                    Expect.Close($"{device} {named[i].Name}", values[i], Tracked.Values(named[i].Expected), Tracked.Bounds(named[i].Expected, chain));
                }
                results.Add(values);
            }
            finally
            {
                foreach (Tensor? output in outputs) output?.Dispose();
            }
        }
        for (int i = 0; i < named.Count; i++)
            Expect.Agree($"cpu vs simt {named[i].Name}", results[0][i], results[1][i], Tracked.Bounds(named[i].Expected, chain));
    }

    /// <summary>
    /// The reference's chain rule against central differences of its own double scan, L = Σ dy ⊙ y, h = 2⁻¹⁰: the scan
    /// is smooth (exponentials, softplus, SiLU of O(1) arguments), so the truncation h²/6·|L'''| stays below 1e-7·M, and
    /// the quotient stored as float adds 2⁻²⁴·M: bound 1e-9 + 3e-7·M.
    /// </summary>
    [TestCase(true)]
    [TestCase(false)]
    public void ReferenceGradientsMatchCentralDifferences(bool gate)
    {
        ScanData s = ScanData.Random(77, 2, 9, 3, 4, gate, true);
        float[] dy = new TestData(78).NonZero(s.Rows * s.Channels);
        var chain = SsmReference.ScanBackward(s, dy);
        void Check(string what, float[] values, Tracked[] expected)
        {
            float[] central = Array.ConvertAll(CentralDifferences.Of(values, () => SsmReference.Loss(s, dy), 1f / 1024), v => (float)v);
            Expect.Close(what, central, Tracked.Values(expected), Array.ConvertAll(Tracked.Magnitudes(expected), m => 1e-9 + 3e-7 * m));
        }
        Check("du", s.U, chain.Du);
        Check("dDelta", s.Delta, chain.DDelta);
        Check("dB", s.B, chain.DB);
        Check("dC", s.C, chain.DC);
        if (gate) Check("dz", s.Z!, chain.Dz!);
    }

    /// <summary>L decode steps from the same initial state reproduce the scan's y and its last state (same bounds).</summary>
    [TestCase(DeviceKind.Cpu)]
    [TestCase(DeviceKind.Simt)]
    public void DecodeStepsReproduceTheScan(DeviceKind kind)
    {
        Device device = kind == DeviceKind.Cpu ? Device.Cpu : Device.Simt;
        ScanData s = ScanData.Random(91, 2, 7, 5, 6, true, true);
        var reference = SsmReference.Scan(s);
        using Tensor a = Tensor.FromArray(device, s.A, s.Channels, s.States), d = Tensor.FromArray(device, s.D, s.Channels);
        using Tensor bias = Tensor.FromArray(device, s.DeltaBias, s.Channels);
        using Tensor state = Tensor.FromArray(device, s.H0!, s.Batch, s.Channels, s.States);
        var y = new float[s.Rows * s.Channels];
        float[] Rows(float[] values, int t, int width) =>
            Enumerable.Range(0, s.Batch).SelectMany(b => values[((b * s.Length + t) * width)..((b * s.Length + t + 1) * width)]).ToArray();
        for (int t = 0; t < s.Length; t++)
        {
            using Tensor u = Tensor.FromArray(device, Rows(s.U, t, s.Channels), s.Batch, s.Channels);
            using Tensor delta = Tensor.FromArray(device, Rows(s.Delta, t, s.Channels), s.Batch, s.Channels);
            using Tensor z = Tensor.FromArray(device, Rows(s.Z!, t, s.Channels), s.Batch, s.Channels);
            using Tensor b = Tensor.FromArray(device, Rows(s.B, t, s.States), s.Batch, s.States);
            using Tensor c = Tensor.FromArray(device, Rows(s.C, t, s.States), s.Batch, s.States);
            using Tensor step = Ssm.Step(u, delta, bias, a, b, c, d, z, state);
            float[] values = step.ToArray();
            for (int batch = 0; batch < s.Batch; batch++)
                Array.Copy(values, batch * s.Channels, y, (batch * s.Length + t) * s.Channels, s.Channels);
        }
        Expect.Close($"{device} y by steps", y, Tracked.Values(reference.Y), Tracked.Bounds(reference.Y, ForwardChain(s)));
        Expect.Close($"{device} state after the steps", state.ToArray(), Tracked.Values(reference.LastState),
                     Tracked.Bounds(reference.LastState, ForwardChain(s)));
    }

    /// <summary>
    /// silu(causal depthwise conv) against its definition, its input gradient by the chain rule written out, and decode
    /// steps from an empty window: K taps and the SiLU, Tracked.Bounds with K = 8 (forward) and 16 (backward).
    /// </summary>
    [TestCase(DeviceKind.Cpu)]
    [TestCase(DeviceKind.Simt)]
    public void ConvolutionMatchesItsDefinition(DeviceKind kind)
    {
        Device device = kind == DeviceKind.Cpu ? Device.Cpu : Device.Simt;
        const int batch = 2, length = 11, channels = 5, width = 4;
        var data = new TestData(92);
        float[] x = data.NonZero(batch * length * channels), w = data.NonZero(channels * width), bias = data.NonZero(channels),
                dy = data.NonZero(batch * length * channels);
        Tracked Pre(int b, int t, int d)
        {
            Tracked sum = Tracked.Leaf(bias[d]);
            for (int j = 0; j < width; j++)
                if (t - width + 1 + j >= 0) sum += w[d * width + j] * Tracked.Leaf(x[((b * length) + t - width + 1 + j) * channels + d]);
            return sum;
        }
        static double Sigmoid(double v) => 1 / (1 + Math.Exp(-v));
        var y = new Tracked[x.Length];
        var dx = Enumerable.Repeat(Tracked.Zero, x.Length).ToArray();
        for (int b = 0; b < batch; b++)
            for (int t = 0; t < length; t++)
                for (int d = 0; d < channels; d++)
                {
                    Tracked pre = Pre(b, t, d);
                    double s = Sigmoid(pre.Value), slope = s * (1 + pre.Value * (1 - s));
                    y[(b * length + t) * channels + d] = pre.Apply(pre.Value * s, slope);
                    Tracked g = Tracked.Leaf(dy[(b * length + t) * channels + d]) * pre.Apply(slope, s * (1 - s) * (2 + pre.Value * (1 - 2 * s)));
                    for (int j = 0; j < width; j++)
                        if (t - width + 1 + j >= 0) dx[((b * length) + t - width + 1 + j) * channels + d] += w[d * width + j] * g;
                }
        using Tensor xs = Tensor.FromArray(device, x, batch * length, channels), weight = Tensor.FromArray(device, w, channels, width);
        using Tensor b0 = Tensor.FromArray(device, bias, channels), dys = Tensor.FromArray(device, dy, batch * length, channels);
        using (Tensor got = Ssm.Convolution(batch, xs, weight, b0))
            Expect.Close($"{device} conv", got.ToArray(), Tracked.Values(y), Tracked.Bounds(y, 8));
        using (Tensor got = Ssm.ConvolutionBackward(batch, xs, weight, b0, dys))
            Expect.Close($"{device} conv dx", got.ToArray(), Tracked.Values(dx), Tracked.Bounds(dx, 16));
        using Tensor window = Tensor.Zeros(device, DType.F32, 1, channels, width - 1);
        for (int t = 0; t < length; t++)
        {
            using Tensor row = Tensor.FromArray(device, x[(t * channels)..((t + 1) * channels)], 1, channels);
            using Tensor step = Ssm.ConvolutionStep(row, weight, b0, window);
            Expect.Close($"{device} conv step {t}", step.ToArray(), Tracked.Values(y[(t * channels)..((t + 1) * channels)]),
                         Tracked.Bounds(y[(t * channels)..((t + 1) * channels)], 8));
        }
    }

    [Test]
    public void BadScanArgumentsAreRefused()
    {
        using Tensor u = Tensor.Zeros(Device.Cpu, DType.F32, 6, 3), a17 = Tensor.Zeros(Device.Cpu, DType.F32, 3, 17);
        using Tensor a = Tensor.Zeros(Device.Cpu, DType.F32, 3, 4), bc = Tensor.Zeros(Device.Cpu, DType.F32, 6, 4), d = Tensor.Zeros(Device.Cpu, DType.F32, 3);
        using Tensor wrong = Tensor.Zeros(Device.Cpu, DType.F32, 6, 5);
        Assert.That(() => Ssm.Scan(4, u, u, null, a, bc, bc, d), Throws.TypeOf<ArgumentOutOfRangeException>().With.Message.Contains("divide u's 6 rows"));
        Assert.That(() => Ssm.Scan(2, u, u, null, a17, bc, bc, d), Throws.ArgumentException.With.Message.Contains("1 <= N <= 16"));
        Assert.That(() => Ssm.Scan(2, u, u, null, a, wrong, bc, d), Throws.ArgumentException.With.Message.Contains("b must be [batch·L, 4] = [6, 4]"));
        Assert.That(() => Ssm.Scan(2, u, wrong, null, a, bc, bc, d), Throws.ArgumentException.With.Message.Contains("delta must be"));
        using Tensor badState = Tensor.Zeros(Device.Cpu, DType.F32, 2, 3, 5);
        Assert.That(() => Ssm.Scan(2, u, u, null, a, bc, bc, d, null, badState), Throws.ArgumentException.With.Message.Contains("initialState must be"));
    }
}
