namespace LoraKernels.Tests.GatedRank;

/// <summary>One gated-rank case: x [M, in] through W0 [out, in] with a rank-r adapter whose gate is per rank or per token.</summary>
public sealed record GatedCase(int M, int In, int Out, int R, bool PerToken, float DropoutP, DType DType)
{
    public override string ToString() =>
        $"M{M}_in{In}_out{Out}_r{R}_{(PerToken ? "token" : "rank")}_p{(int)Math.Round(DropoutP * 100)}_{DType}";
}

/// <summary>
/// Inputs of a gated case rounded through its dtype (the gate stays F32), and the naive double-precision gated-rank
/// layer written from native/include/lora_kernels_gated.h: u = dropout(x) Aᵀ, y = x W0ᵀ + bias + s·(u ⊙ G) Bᵀ and its
/// backward by the chain rule, each value with Σ|terms| (and the adapter branch's Σ|terms| alone).
/// </summary>
internal sealed class GatedData
{
    public const ulong Seed = 0x6A7E;
    public const float Scale = 0.75f;
    public readonly GatedCase C;
    public readonly float[] X, W0, Bias, A, B, Gate, Dy;

    public GatedData(GatedCase c)
    {
        C = c;
        var data = new TestData(TestData.SeedFor(c.ToString()));
        X = data.NonZero(c.M * c.In, 1f, c.DType);
        W0 = data.NonZero(c.Out * c.In, 1f, c.DType);
        Bias = data.NonZero(c.Out, 1f, c.DType);
        A = data.NonZero(c.R * c.In, 1f, c.DType);
        B = data.NonZero(c.Out * c.R, 1f, c.DType);
        Gate = data.NonZero(c.PerToken ? c.M * c.R : c.R, 1f);
        Dy = data.NonZero(c.M * c.Out, 1f, c.DType);
    }

    public long[] GateShape => C.PerToken ? [C.M, C.R] : [C.R];
    public double Mask(int m, int k) => Reference.DropoutFactor(Seed, (ulong)(m * C.In + k), C.DropoutP);
    private static double G(double[] gate, GatedCase c, int m, int j) => gate[c.PerToken ? m * c.R + j : j];

    /// <summary>u and y with Σ|terms| and the adapter's Σ|terms|, for the given values (defaults: this case's).</summary>
    public (double[] U, double[] UAbs, double[] Y, double[] YAbs, double[] YAdapterAbs) Forward(double[]? x = null, double[]? a = null,
        double[]? b = null, double[]? gate = null)
    {
        var c = C;
        x ??= Array.ConvertAll(X, v => (double)v);
        a ??= Array.ConvertAll(A, v => (double)v);
        b ??= Array.ConvertAll(B, v => (double)v);
        gate ??= Array.ConvertAll(Gate, v => (double)v);
        double[] u = new double[c.M * c.R], uAbs = new double[c.M * c.R];
        for (int m = 0; m < c.M; m++)
            for (int j = 0; j < c.R; j++)
                for (int k = 0; k < c.In; k++)
                {
                    double term = Mask(m, k) * x[m * c.In + k] * a[j * c.In + k];
                    u[m * c.R + j] += term;
                    uAbs[m * c.R + j] += Math.Abs(term);
                }
        double[] y = new double[c.M * c.Out], yAbs = new double[c.M * c.Out], adapter = new double[c.M * c.Out];
        for (int m = 0; m < c.M; m++)
            for (int n = 0; n < c.Out; n++)
            {
                double sum = Bias[n], abs = Math.Abs(sum), lora = 0;
                for (int k = 0; k < c.In; k++)
                {
                    double term = x[m * c.In + k] * W0[n * c.In + k];
                    sum += term;
                    abs += Math.Abs(term);
                }
                for (int j = 0; j < c.R; j++)
                {
                    double factor = Scale * G(gate, c, m, j) * b[n * c.R + j];
                    sum += factor * u[m * c.R + j];
                    lora += Math.Abs(factor) * uAbs[m * c.R + j];
                }
                y[m * c.Out + n] = sum;
                yAbs[m * c.Out + n] = abs + lora;
                adapter[m * c.Out + n] = lora;
            }
        return (u, uAbs, y, yAbs, adapter);
    }

    /// <summary>L = Σ dy ⊙ y: its gradients are the backward's outputs for this dy (used by the finite-difference checks).</summary>
    public double Loss(double[] x, double[] a, double[] b, double[] gate)
    {
        double[] y = Forward(x, a, b, gate).Y;
        double sum = 0;
        for (int i = 0; i < y.Length; i++) sum += Dy[i] * y[i];
        return sum;
    }

    /// <summary>The backward by the chain rule for a given fp32 u: dx, dA, dB, dGate with Σ|terms| (dx also its adapter part's).</summary>
    public Grads Backward(float[] u)
    {
        var c = C;
        double[] gate = Array.ConvertAll(Gate, v => (double)v);
        double[] z = new double[c.M * c.R], zAbs = new double[c.M * c.R];
        for (int m = 0; m < c.M; m++)
            for (int j = 0; j < c.R; j++)
                for (int n = 0; n < c.Out; n++)
                {
                    double term = Scale * (double)Dy[m * c.Out + n] * B[n * c.R + j];
                    z[m * c.R + j] += term;
                    zAbs[m * c.R + j] += Math.Abs(term);
                }
        var g = new Grads(c, Gate.Length);
        for (int m = 0; m < c.M; m++)
            for (int j = 0; j < c.R; j++)
            {
                int gi = c.PerToken ? m * c.R + j : j;
                g.DGate[gi] += z[m * c.R + j] * u[m * c.R + j];
                g.DGateAbs[gi] += zAbs[m * c.R + j] * Math.Abs(u[m * c.R + j]);
            }
        for (int n = 0; n < c.Out; n++)
            for (int j = 0; j < c.R; j++)
                for (int m = 0; m < c.M; m++)
                {
                    double term = Scale * (double)Dy[m * c.Out + n] * u[m * c.R + j] * G(gate, c, m, j);
                    g.DB[n * c.R + j] += term;
                    g.DBAbs[n * c.R + j] += Math.Abs(term);
                }
        for (int m = 0; m < c.M; m++)
            for (int k = 0; k < c.In; k++)
            {
                int e = m * c.In + k;
                double f = Mask(m, k), lora = 0, loraAbs = 0;
                for (int j = 0; j < c.R; j++)
                {
                    double du = z[m * c.R + j] * G(gate, c, m, j), duAbs = zAbs[m * c.R + j] * Math.Abs(G(gate, c, m, j));
                    g.DA[j * c.In + k] += du * f * X[e];
                    g.DAAbs[j * c.In + k] += duAbs * f * Math.Abs(X[e]);
                    lora += du * A[j * c.In + k];
                    loraAbs += duAbs * Math.Abs(A[j * c.In + k]);
                }
                double sum = 0, abs = 0;
                for (int n = 0; n < c.Out; n++)
                {
                    double term = (double)Dy[m * c.Out + n] * W0[n * c.In + k];
                    sum += term;
                    abs += Math.Abs(term);
                }
                g.Dx[e] = sum + f * lora;
                g.DxAbs[e] = abs + f * loraAbs;
                g.DxAdapterAbs[e] = f * loraAbs;
            }
        return g;
    }

    internal sealed class Grads(GatedCase c, int gateCount)
    {
        public readonly double[] Dx = new double[c.M * c.In], DxAbs = new double[c.M * c.In], DxAdapterAbs = new double[c.M * c.In];
        public readonly double[] DA = new double[c.R * c.In], DAAbs = new double[c.R * c.In];
        public readonly double[] DB = new double[c.Out * c.R], DBAbs = new double[c.Out * c.R];
        public readonly double[] DGate = new double[gateCount], DGateAbs = new double[gateCount];
    }
}

/// <summary>One top-k case: x [M, in] through W0 [out, in] and a pool of E rank-1 experts, k of them per token.</summary>
public sealed record TopKCase(int M, int In, int Out, int Experts, int K, float DropoutP, DType DType)
{
    public override string ToString() => $"M{M}_in{In}_out{Out}_E{Experts}_k{K}_p{(int)Math.Round(DropoutP * 100)}_{DType}";
}

/// <summary>
/// Inputs of a top-k case (k distinct experts per token among the first E - 1, so the last expert is never picked) and
/// the naive double-precision sparse layer: h[m, t] = dropout(x_m)·A[e], y = x W0ᵀ + bias + s·Σ_t w·h·B[:, e].
/// </summary>
internal sealed class TopKData
{
    public const ulong Seed = 0x70E4;
    public const float Scale = 1.25f;
    public readonly TopKCase C;
    public readonly float[] X, W0, Bias, A, B, Expert, Weight, Dy;

    public TopKData(TopKCase c)
    {
        C = c;
        var data = new TestData(TestData.SeedFor(c.ToString()));
        X = data.NonZero(c.M * c.In, 1f, c.DType);
        W0 = data.NonZero(c.Out * c.In, 1f, c.DType);
        Bias = data.NonZero(c.Out, 1f, c.DType);
        A = data.NonZero(c.Experts * c.In, 1f, c.DType);
        B = data.NonZero(c.Out * c.Experts, 1f, c.DType);
        Weight = data.NonZero(c.M * c.K, 1f);
        Dy = data.NonZero(c.M * c.Out, 1f, c.DType);
        Expert = new float[c.M * c.K];
        for (int m = 0; m < c.M; m++)
            for (int t = 0; t < c.K; t++) Expert[m * c.K + t] = (m * 5 + t) % (c.Experts - 1);
    }

    public int E(int m, int t) => (int)Expert[m * C.K + t];
    public double Mask(int m, int k) => Reference.DropoutFactor(Seed, (ulong)(m * C.In + k), C.DropoutP);

    public (double[] H, double[] HAbs, double[] Y, double[] YAbs) Forward(double[]? x = null, double[]? a = null, double[]? b = null,
                                                                          double[]? weight = null)
    {
        var c = C;
        x ??= Array.ConvertAll(X, v => (double)v);
        a ??= Array.ConvertAll(A, v => (double)v);
        b ??= Array.ConvertAll(B, v => (double)v);
        weight ??= Array.ConvertAll(Weight, v => (double)v);
        double[] h = new double[c.M * c.K], hAbs = new double[c.M * c.K];
        for (int m = 0; m < c.M; m++)
            for (int t = 0; t < c.K; t++)
                for (int k = 0; k < c.In; k++)
                {
                    double term = Mask(m, k) * x[m * c.In + k] * a[E(m, t) * c.In + k];
                    h[m * c.K + t] += term;
                    hAbs[m * c.K + t] += Math.Abs(term);
                }
        double[] y = new double[c.M * c.Out], yAbs = new double[c.M * c.Out];
        for (int m = 0; m < c.M; m++)
            for (int n = 0; n < c.Out; n++)
            {
                double sum = Bias[n], abs = Math.Abs(sum);
                for (int k = 0; k < c.In; k++)
                {
                    double term = x[m * c.In + k] * W0[n * c.In + k];
                    sum += term;
                    abs += Math.Abs(term);
                }
                for (int t = 0; t < c.K; t++)
                {
                    double factor = Scale * weight[m * c.K + t] * b[n * c.Experts + E(m, t)];
                    sum += factor * h[m * c.K + t];
                    abs += Math.Abs(factor) * hAbs[m * c.K + t];
                }
                y[m * c.Out + n] = sum;
                yAbs[m * c.Out + n] = abs;
            }
        return (h, hAbs, y, yAbs);
    }

    public double Loss(double[] x, double[] a, double[] b, double[] weight)
    {
        double[] y = Forward(x, a, b, weight).Y;
        double sum = 0;
        for (int i = 0; i < y.Length; i++) sum += Dy[i] * y[i];
        return sum;
    }

    /// <summary>dx, dA, dB, dWeight by the chain rule for a given fp32 h, with Σ|terms|.</summary>
    public (double[] Dx, double[] DxAbs, double[] DA, double[] DAAbs, double[] DB, double[] DBAbs, double[] DWeight, double[] DWeightAbs)
        Backward(float[] h)
    {
        var c = C;
        double[] dx = new double[c.M * c.In], dxAbs = new double[c.M * c.In];
        double[] dA = new double[c.Experts * c.In], dAAbs = new double[c.Experts * c.In];
        double[] dB = new double[c.Out * c.Experts], dBAbs = new double[c.Out * c.Experts];
        double[] dw = new double[c.M * c.K], dwAbs = new double[c.M * c.K];
        for (int m = 0; m < c.M; m++)
        {
            for (int k = 0; k < c.In; k++)
                for (int n = 0; n < c.Out; n++)
                {
                    double term = (double)Dy[m * c.Out + n] * W0[n * c.In + k];
                    dx[m * c.In + k] += term;
                    dxAbs[m * c.In + k] += Math.Abs(term);
                }
            for (int t = 0; t < c.K; t++)
            {
                int e = E(m, t), slot = m * c.K + t;
                double z = 0, zAbs = 0;
                for (int n = 0; n < c.Out; n++)
                {
                    double term = Scale * (double)Dy[m * c.Out + n] * B[n * c.Experts + e];
                    z += term;
                    zAbs += Math.Abs(term);
                }
                dw[slot] = z * h[slot];
                dwAbs[slot] = zAbs * Math.Abs(h[slot]);
                double w = Weight[slot];
                for (int k = 0; k < c.In; k++)
                {
                    double f = Mask(m, k);
                    dA[e * c.In + k] += z * w * f * X[m * c.In + k];
                    dAAbs[e * c.In + k] += zAbs * Math.Abs(w * f * X[m * c.In + k]);
                    dx[m * c.In + k] += f * z * w * A[e * c.In + k];
                    dxAbs[m * c.In + k] += f * zAbs * Math.Abs(w * A[e * c.In + k]);
                }
                for (int n = 0; n < c.Out; n++)
                {
                    double term = Scale * w * h[slot] * Dy[m * c.Out + n];
                    dB[n * c.Experts + e] += term;
                    dBAbs[n * c.Experts + e] += Math.Abs(term);
                }
            }
        }
        return (dx, dxAbs, dA, dAAbs, dB, dBAbs, dw, dwAbs);
    }
}

/// <summary>Central differences of a scalar function of one array, in double (default h = 2⁻⁸, exact in binary).</summary>
internal static class CentralDifference
{
    /// <summary>d loss / d values[i] for every i, each value moved by ±h and restored.</summary>
    public static double[] Of(Func<double> loss, double[] values, double h = 1.0 / 256)
    {
        var gradient = new double[values.Length];
        for (int i = 0; i < values.Length; i++)
        {
            double saved = values[i];
            values[i] = saved + h;
            double plus = loss();
            values[i] = saved - h;
            double minus = loss();
            values[i] = saved;
            gradient[i] = (plus - minus) / (2 * h);
        }
        return gradient;
    }
}
