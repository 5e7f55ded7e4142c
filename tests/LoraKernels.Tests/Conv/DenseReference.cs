namespace LoraKernels.Tests.Conv;

/// <summary>One convolution: x [N, C, H, W], w [O, C, KH, KW], the window's geometry; HO and WO by PyTorch's formula.</summary>
public sealed record ConvCase(int N, int C, int H, int W, int O, int KH, int KW, Conv2dGeometry G)
{
    public int HO => (H + 2 * G.PaddingH - G.DilationH * (KH - 1) - 1) / G.StrideH + 1;
    public int WO => (W + 2 * G.PaddingW - G.DilationW * (KW - 1) - 1) / G.StrideW + 1;
    public int XCount => N * C * H * W;
    public int YCount => N * O * HO * WO;
    public int WCount => O * C * KH * KW;

    public override string ToString() =>
        $"N{N}_C{C}_{H}x{W}_O{O}_k{KH}x{KW}_s{G.StrideH}{G.StrideW}_p{G.PaddingH}{G.PaddingW}_d{G.DilationH}{G.DilationW}";
}

/// <summary>
/// The independent references of the convolution, Kronecker and Tucker tests, in double, calling nothing in the
/// library: the direct seven-loop convolution and its two gradients, dense products, and the Kronecker product
/// formed explicitly. Every function is a sum of products, so the same function on the absolute values of its
/// inputs gives Σ|terms| per element, which the tolerances scale with (<see cref="Abs"/>).
/// </summary>
internal static class DenseReference
{
    public static double[] Abs(double[] values) => Array.ConvertAll(values, Math.Abs);
    public static double[] Abs(float[] values) => Array.ConvertAll(values, v => (double)Math.Abs(v));
    public static double[] Double(float[] values) => Array.ConvertAll(values, v => (double)v);

    /// <summary>Calls f(y index, x index, w index) for every term of the convolution: the seven loops n, o, ho, wo, c, a, b.</summary>
    public static void ForEachTerm(ConvCase c, Action<int, int, int> f)
    {
        Conv2dGeometry g = c.G;
        for (int n = 0; n < c.N; n++)
            for (int o = 0; o < c.O; o++)
                for (int ho = 0; ho < c.HO; ho++)
                    for (int wo = 0; wo < c.WO; wo++)
                        for (int ch = 0; ch < c.C; ch++)
                            for (int a = 0; a < c.KH; a++)
                                for (int b = 0; b < c.KW; b++)
                                {
                                    int h = ho * g.StrideH - g.PaddingH + a * g.DilationH, v = wo * g.StrideW - g.PaddingW + b * g.DilationW;
                                    if (h < 0 || h >= c.H || v < 0 || v >= c.W) continue;
                                    f(((n * c.O + o) * c.HO + ho) * c.WO + wo, ((n * c.C + ch) * c.H + h) * c.W + v,
                                      ((o * c.C + ch) * c.KH + a) * c.KW + b);
                                }
    }

    /// <summary>y = conv(x, w) + bias.</summary>
    public static double[] ConvForward(ConvCase c, double[] x, double[] w, double[]? bias)
    {
        var y = new double[c.YCount];
        ForEachTerm(c, (yi, xi, wi) => y[yi] += x[xi] * w[wi]);
        if (bias is not null)
            for (int i = 0; i < y.Length; i++) y[i] += bias[i / (c.HO * c.WO) % c.O];
        return y;
    }

    /// <summary>dx = convᵀ(dy, w).</summary>
    public static double[] ConvBackwardData(ConvCase c, double[] dy, double[] w)
    {
        var dx = new double[c.XCount];
        ForEachTerm(c, (yi, xi, wi) => dx[xi] += dy[yi] * w[wi]);
        return dx;
    }

    /// <summary>dw = Σ dy ⊗ patches(x).</summary>
    public static double[] ConvBackwardWeight(ConvCase c, double[] x, double[] dy)
    {
        var dw = new double[c.WCount];
        ForEachTerm(c, (yi, xi, wi) => dw[wi] += dy[yi] * x[xi]);
        return dw;
    }

    /// <summary>C [m, n] = op(A)·op(B), op(A) [m, k] (A stored [k, m] when transA), op(B) [k, n] (B stored [n, k] when transB).</summary>
    public static double[] Matmul(double[] a, double[] b, int m, int n, int k, bool transA = false, bool transB = false)
    {
        var c = new double[m * n];
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
            {
                double sum = 0;
                for (int t = 0; t < k; t++) sum += (transA ? a[t * m + i] : a[i * k + t]) * (transB ? b[j * k + t] : b[t * n + j]);
                c[i * n + j] = sum;
            }
        return c;
    }

    /// <summary>y [M, out] = x [M, in]·Wᵀ + bias.</summary>
    public static double[] Linear(double[] x, double[] w, double[]? bias, int m, int inFeatures, int outFeatures)
    {
        double[] y = Matmul(x, w, m, outFeatures, inFeatures, transB: true);
        if (bias is not null)
            for (int i = 0; i < y.Length; i++) y[i] += bias[i % outFeatures];
        return y;
    }

    /// <summary>kron(w1, w2) for w1 [outL, inM] and w2 [outK, inN·taps] (a convolution's w2 flattened): [outL·outK, inM·inN·taps].</summary>
    public static double[] Kron(double[] w1, int outL, int inM, double[] w2, int outK, int inN, int taps = 1)
    {
        int columns = inM * inN * taps;
        var k = new double[outL * outK * columns];
        for (int i = 0; i < outL; i++)
            for (int p = 0; p < outK; p++)
                for (int j = 0; j < inM; j++)
                    for (int e = 0; e < inN * taps; e++)
                        k[(i * outK + p) * columns + j * inN * taps + e] = w1[i * inM + j] * w2[p * inN * taps + e];
        return k;
    }

    /// <summary>The factor gradients of ΔW = s·kron(w1, w2) from dΔW: dw1[i, j] = s·Σ dΔW·w2, dw2[p, ·] = s·Σ dΔW·w1.</summary>
    public static (double[] Dw1, double[] Dw2) KronGradients(double[] dDelta, double[] w1, int outL, int inM, double[] w2, int outK,
                                                           int inN, double scale, int taps = 1)
    {
        int columns = inM * inN * taps, block = inN * taps;
        var dw1 = new double[outL * inM];
        var dw2 = new double[outK * block];
        for (int i = 0; i < outL; i++)
            for (int p = 0; p < outK; p++)
                for (int j = 0; j < inM; j++)
                    for (int e = 0; e < block; e++)
                    {
                        double g = scale * dDelta[(i * outK + p) * columns + j * block + e];
                        dw1[i * inM + j] += g * w2[p * block + e];
                        dw2[p * block + e] += g * w1[i * inM + j];
                    }
        return (dw1, dw2);
    }

    /// <summary>Central differences of a scalar function of <paramref name="values"/> (h = 2⁻⁸, exact in binary).</summary>
    public static double[] CentralDifferences(double[] values, Func<double> loss)
    {
        const double h = 1.0 / 256;
        var grad = new double[values.Length];
        for (int i = 0; i < values.Length; i++)
        {
            double saved = values[i];
            values[i] = saved + h;
            double plus = loss();
            values[i] = saved - h;
            double minus = loss();
            values[i] = saved;
            grad[i] = (plus - minus) / (2 * h);
        }
        return grad;
    }

    /// <summary>Σ a ⊙ b.</summary>
    public static double Dot(double[] a, double[] b)
    {
        double sum = 0;
        for (int i = 0; i < a.Length; i++) sum += a[i] * b[i];
        return sum;
    }
}
