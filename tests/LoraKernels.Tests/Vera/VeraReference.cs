namespace LoraKernels.Tests.VeraAdapter;

/// <summary>One VeRA case: a layer [out, in] of rank r reading slices of projections [r, maxIn] / [maxOut, r].</summary>
public sealed record VeraCase(int M, int In, int Out, int R, int MaxIn, int MaxOut, float DropoutP, DType DType)
{
    public override string ToString() =>
        $"M{M}_in{In}_out{Out}_r{R}_maxin{MaxIn}_maxout{MaxOut}_p{(int)Math.Round(DropoutP * 100)}_{DType}";
}

/// <summary>Inputs of a case, rounded through its dtype, and the naive double-precision VeRA written out here.</summary>
internal sealed class VeraData
{
    public const ulong Seed = 0x7E7A;
    public readonly VeraCase C;
    public readonly float[] X, W0, Bias, VeraA, VeraB, LambdaD, LambdaB, Dy;

    public VeraData(VeraCase c)
    {
        C = c;
        var data = new TestData(TestData.SeedFor(c.ToString()));
        X = data.NonZero(c.M * c.In, 1f, c.DType);
        W0 = data.NonZero(c.Out * c.In, 1f, c.DType);
        Bias = data.NonZero(c.Out, 1f, c.DType);
        VeraA = data.NonZero(c.R * c.MaxIn, 1f, c.DType);
        VeraB = data.NonZero(c.MaxOut * c.R, 1f, c.DType);
        LambdaD = data.NonZero(c.R, 1f, c.DType);
        LambdaB = data.NonZero(c.Out, 1f, c.DType);
        Dy = data.NonZero(c.M * c.Out, 1f, c.DType);
    }

    public double A(int i, int k) => VeraA[i * C.MaxIn + k];
    public double B(int j, int i) => VeraB[j * C.R + i];
    public double Mask(int m, int k) => Reference.DropoutFactor(Seed, (ulong)(m * C.In + k), C.DropoutP);

    /// <summary>u = dropout(x) A_lᵀ and y = x W0ᵀ + bias + λ_b ⊙ ((λ_d ⊙ u) B_lᵀ), each with Σ|terms| and the adapter's Σ|terms|.</summary>
    public (double[] U, double[] UAbs, double[] Y, double[] YAbs, double[] YAdapterAbs) Forward(double[]? x = null,
        double[]? lambdaD = null, double[]? lambdaB = null)
    {
        var c = C;
        x ??= Array.ConvertAll(X, v => (double)v);
        lambdaD ??= Array.ConvertAll(LambdaD, v => (double)v);
        lambdaB ??= Array.ConvertAll(LambdaB, v => (double)v);
        double[] u = new double[c.M * c.R], uAbs = new double[c.M * c.R];
        double[] y = new double[c.M * c.Out], yAbs = new double[c.M * c.Out], yAdapter = new double[c.M * c.Out];
        for (int m = 0; m < c.M; m++)
            for (int i = 0; i < c.R; i++)
                for (int k = 0; k < c.In; k++)
                {
                    double term = Mask(m, k) * x[m * c.In + k] * A(i, k);
                    u[m * c.R + i] += term;
                    uAbs[m * c.R + i] += Math.Abs(term);
                }
        for (int m = 0; m < c.M; m++)
            for (int j = 0; j < c.Out; j++)
            {
                double sum = Bias[j], abs = Math.Abs(Bias[j]), adapter = 0;
                for (int k = 0; k < c.In; k++)
                {
                    double term = x[m * c.In + k] * W0[j * c.In + k];
                    sum += term;
                    abs += Math.Abs(term);
                }
                for (int i = 0; i < c.R; i++)
                {
                    double factor = lambdaB[j] * lambdaD[i] * B(j, i);
                    sum += factor * u[m * c.R + i];
                    adapter += Math.Abs(factor) * uAbs[m * c.R + i];
                }
                y[m * c.Out + j] = sum;
                yAbs[m * c.Out + j] = abs + adapter;
                yAdapter[m * c.Out + j] = adapter;
            }
        return (u, uAbs, y, yAbs, yAdapter);
    }

    /// <summary>
    /// The backward by the chain rule written out (dv = (dy ⊙ λ_b) B_l, dλ_d = Σ_t dv ⊙ u,
    /// dλ_b = Σ_t dy ⊙ ((λ_d ⊙ u) B_lᵀ), dx = dy W0 + dropout'((dv ⊙ λ_d) A_l)), with Σ|terms|,
    /// for a given fp32 u (what the device holds).
    /// </summary>
    public (double[] Dx, double[] DxAbs, double[] DxAdapterAbs, double[] DLambdaD, double[] DLambdaDAbs, double[] DLambdaB,
        double[] DLambdaBAbs) Backward(float[] u)
    {
        var c = C;
        double[] dv = new double[c.M * c.R], dvAbs = new double[c.M * c.R];
        for (int t = 0; t < c.M; t++)
            for (int i = 0; i < c.R; i++)
                for (int j = 0; j < c.Out; j++)
                {
                    double term = (double)Dy[t * c.Out + j] * LambdaB[j] * B(j, i);
                    dv[t * c.R + i] += term;
                    dvAbs[t * c.R + i] += Math.Abs(term);
                }
        double[] dd = new double[c.R], ddAbs = new double[c.R], db = new double[c.Out], dbAbs = new double[c.Out];
        for (int t = 0; t < c.M; t++)
            for (int i = 0; i < c.R; i++)
            {
                dd[i] += dv[t * c.R + i] * u[t * c.R + i];
                ddAbs[i] += dvAbs[t * c.R + i] * Math.Abs(u[t * c.R + i]);
            }
        for (int j = 0; j < c.Out; j++)
            for (int t = 0; t < c.M; t++)
                for (int i = 0; i < c.R; i++)
                {
                    double term = (double)Dy[t * c.Out + j] * LambdaD[i] * u[t * c.R + i] * B(j, i);
                    db[j] += term;
                    dbAbs[j] += Math.Abs(term);
                }
        double[] dx = new double[c.M * c.In], dxAbs = new double[c.M * c.In], dxAdapter = new double[c.M * c.In];
        for (int t = 0; t < c.M; t++)
            for (int k = 0; k < c.In; k++)
            {
                double sum = 0, abs = 0, lora = 0, loraAbs = 0;
                for (int j = 0; j < c.Out; j++)
                {
                    double term = (double)Dy[t * c.Out + j] * W0[j * c.In + k];
                    sum += term;
                    abs += Math.Abs(term);
                }
                for (int i = 0; i < c.R; i++)
                {
                    double factor = LambdaD[i] * A(i, k);
                    lora += factor * dv[t * c.R + i];
                    loraAbs += Math.Abs(factor) * dvAbs[t * c.R + i];
                }
                double f = Mask(t, k);
                dx[t * c.In + k] = sum + f * lora;
                dxAbs[t * c.In + k] = abs + f * loraAbs;
                dxAdapter[t * c.In + k] = f * loraAbs;
            }
        return (dx, dxAbs, dxAdapter, dd, ddAbs, db, dbAbs);
    }

    /// <summary>W0 + scale·diag(λ_b) B_l diag(λ_d) A_l, with Σ|terms| and the delta's Σ|terms|.</summary>
    public (double[] W, double[] Abs, double[] DeltaAbs) Merge(double scale)
    {
        var c = C;
        double[] w = new double[c.Out * c.In], abs = new double[c.Out * c.In], delta = new double[c.Out * c.In];
        for (int j = 0; j < c.Out; j++)
            for (int k = 0; k < c.In; k++)
            {
                double sum = W0[j * c.In + k], d = 0;
                for (int i = 0; i < c.R; i++)
                {
                    double term = scale * LambdaB[j] * B(j, i) * LambdaD[i] * A(i, k);
                    sum += term;
                    d += Math.Abs(term);
                }
                w[j * c.In + k] = sum;
                abs[j * c.In + k] = Math.Abs(W0[j * c.In + k]) + d;
                delta[j * c.In + k] = d;
            }
        return (w, abs, delta);
    }
}
