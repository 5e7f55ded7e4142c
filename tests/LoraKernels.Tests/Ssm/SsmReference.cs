namespace LoraKernels.Tests.StateSpace;

/// <summary>One selective scan's inputs (float, as the devices hold them): rows b·L + t.</summary>
internal sealed record ScanData(int Batch, int Length, int Channels, int States, float[] U, float[] Delta, float[] DeltaBias, float[] A,
                                float[] B, float[] C, float[] D, float[]? Z, float[]? H0)
{
    public int Rows => Batch * Length;

    /// <summary>
    /// Random inputs: A in -[0.5, 4]·(decay), delta around <paramref name="deltaShift"/> (softplus of -4 gives Δ ≈ 0.02, long
    /// memory: decays exp(Δ·A) near 1), everything else O(1).
    /// </summary>
    public static ScanData Random(ulong seed, int batch, int length, int channels, int states, bool gate, bool initialState, float deltaShift = 0f)
    {
        var data = new TestData(seed);
        float[] delta = data.NonZero(batch * length * channels);
        for (int i = 0; i < delta.Length; i++) delta[i] += deltaShift;
        float[] a = data.NonZero(channels * states, 4f);
        for (int i = 0; i < a.Length; i++) a[i] = -Math.Max(Math.Abs(a[i]), 0.5f);
        return new ScanData(batch, length, channels, states, data.NonZero(batch * length * channels), delta, data.NonZero(channels, 0.5f), a,
                            data.NonZero(batch * length * states), data.NonZero(batch * length * states), data.NonZero(channels),
                            gate ? data.NonZero(batch * length * channels, 2f) : null, initialState ? data.NonZero(batch * channels * states) : null);
    }
}

/// <summary>
/// Mamba's selective scan written directly (selective_scan_ref): one sequential pass per (sequence, channel) in
/// double, every value Tracked for the device bounds; and its chain-rule backward (the adjoint run backwards,
/// h_{t-1} from the forward pass kept whole).
/// </summary>
internal static class SsmReference
{
    public sealed record Forward(Tracked[] Y, Tracked[] LastState);

    public sealed record Backward(Tracked[] Du, Tracked[] DDelta, Tracked[] DB, Tracked[] DC, Tracked[]? Dz);

    private static double Softplus(double x) => x <= 20 ? double.LogP1(Math.Exp(x)) : x;
    private static double Sigmoid(double x) => 1 / (1 + Math.Exp(-x));
    private static double Silu(double x) => x * Sigmoid(x);
    private static double SiluGrad(double x) => Sigmoid(x) * (1 + x * (1 - Sigmoid(x)));
    private static double SiluSecond(double x) => Sigmoid(x) * (1 - Sigmoid(x)) * (2 + x * (1 - 2 * Sigmoid(x)));

    /// <summary>Δ_t and its pre-softplus sum for row r, channel d.</summary>
    private static (Tracked Raw, Tracked Step) StepSize(ScanData s, int r, int d)
    {
        Tracked raw = Tracked.Leaf(s.Delta[r * s.Channels + d]) + Tracked.Leaf(s.DeltaBias[d]);
        return (raw, raw.Apply(Softplus(raw.Value), Sigmoid(raw.Value)));
    }

    /// <summary>exp(Δ·A[d, n]).</summary>
    private static Tracked Decay(ScanData s, Tracked step, int d, int n)
    {
        Tracked exponent = s.A[d * s.States + n] * step;
        return exponent.Apply(Math.Exp(exponent.Value), Math.Exp(exponent.Value));
    }

    private static Tracked Gate(ScanData s, int r, int d)
    {
        if (s.Z is null) return new Tracked(1, 1);
        double z = s.Z[r * s.Channels + d];
        return Tracked.Leaf(z).Apply(Silu(z), SiluGrad(z));
    }

    /// <summary>The states h_t for every step of (b, d) (index t + 1; index 0 is h_{-1}), with each step's Δ and decays.</summary>
    private static (Tracked[][] H, Tracked[] Step, Tracked[][] Decays, Tracked[] Raw) Run(ScanData s, int b, int d)
    {
        var h = new Tracked[s.Length + 1][];
        var steps = new Tracked[s.Length];
        var raws = new Tracked[s.Length];
        var decays = new Tracked[s.Length][];
        h[0] = Enumerable.Range(0, s.States).Select(n => s.H0 is null ? Tracked.Zero : Tracked.Leaf(s.H0[(b * s.Channels + d) * s.States + n])).ToArray();
        for (int t = 0; t < s.Length; t++)
        {
            int r = b * s.Length + t;
            (raws[t], steps[t]) = StepSize(s, r, d);
            Tracked input = steps[t] * Tracked.Leaf(s.U[r * s.Channels + d]);
            decays[t] = new Tracked[s.States];
            h[t + 1] = new Tracked[s.States];
            for (int n = 0; n < s.States; n++)
            {
                decays[t][n] = Decay(s, steps[t], d, n);
                h[t + 1][n] = decays[t][n] * h[t][n] + Tracked.Leaf(s.B[r * s.States + n]) * input;
            }
        }
        return (h, steps, decays, raws);
    }

    /// <summary>Σ_n C_t·h_t + D·u_t (before the gate).</summary>
    private static Tracked Readout(ScanData s, Tracked[] h, int r, int d)
    {
        Tracked y = s.D[d] * Tracked.Leaf(s.U[r * s.Channels + d]);
        for (int n = 0; n < s.States; n++) y += Tracked.Leaf(s.C[r * s.States + n]) * h[n];
        return y;
    }

    public static Forward Scan(ScanData s)
    {
        var y = new Tracked[s.Rows * s.Channels];
        var last = new Tracked[s.Batch * s.Channels * s.States];
        for (int b = 0; b < s.Batch; b++)
            for (int d = 0; d < s.Channels; d++)
            {
                var (h, _, _, _) = Run(s, b, d);
                for (int t = 0; t < s.Length; t++)
                {
                    int r = b * s.Length + t;
                    y[r * s.Channels + d] = Readout(s, h[t + 1], r, d) * Gate(s, r, d);
                }
                h[s.Length].CopyTo(last, (b * s.Channels + d) * s.States);
            }
        return new Forward(y, last);
    }

    public static Backward ScanBackward(ScanData s, float[] dy)
    {
        var du = new Tracked[s.Rows * s.Channels];
        var dDelta = new Tracked[du.Length];
        var dz = s.Z is null ? null : new Tracked[du.Length];
        var dB = Enumerable.Repeat(Tracked.Zero, s.Rows * s.States).ToArray();
        var dC = Enumerable.Repeat(Tracked.Zero, s.Rows * s.States).ToArray();
        for (int b = 0; b < s.Batch; b++)
            for (int d = 0; d < s.Channels; d++)
            {
                var (h, steps, decays, raws) = Run(s, b, d);
                var carried = Enumerable.Repeat(Tracked.Zero, s.States).ToArray();  // exp(Δ_{t+1}·A)·g_{t+1}
                for (int t = s.Length - 1; t >= 0; t--)
                {
                    int r = b * s.Length + t, i = r * s.Channels + d;
                    Tracked dyt = Tracked.Leaf(dy[i]), gated = dyt * Gate(s, r, d), x = Tracked.Leaf(s.U[i]);
                    Tracked duT = s.D[d] * gated, dStep = Tracked.Zero;
                    for (int n = 0; n < s.States; n++)
                    {
                        Tracked bn = Tracked.Leaf(s.B[r * s.States + n]), g = Tracked.Leaf(s.C[r * s.States + n]) * gated + carried[n];
                        duT += g * steps[t] * bn;
                        dStep += g * (s.A[d * s.States + n] * (decays[t][n] * h[t][n]) + bn * x);
                        dB[r * s.States + n] += g * steps[t] * x;
                        dC[r * s.States + n] += h[t + 1][n] * gated;
                        carried[n] = decays[t][n] * g;
                    }
                    du[i] = duT;
                    dDelta[i] = dStep * raws[t].Apply(Sigmoid(raws[t].Value), Sigmoid(raws[t].Value) * (1 - Sigmoid(raws[t].Value)));
                    if (dz is not null)
                    {
                        double z = s.Z![i];
                        dz[i] = dyt * Readout(s, h[t + 1], r, d) * Tracked.Leaf(z).Apply(SiluGrad(z), SiluSecond(z));
                    }
                }
            }
        return new Backward(du, dDelta, dB, dC, dz);
    }

    /// <summary>Σ dy ⊙ y in double (values only), for central differences.</summary>
    public static double Loss(ScanData s, float[] dy)
    {
        Tracked[] y = Scan(s).Y;
        double sum = 0;
        for (int i = 0; i < y.Length; i++) sum += dy[i] * y[i].Value;
        return sum;
    }
}
