namespace LoraKernels.Tests.Support;

/// <summary>
/// The independent reference every device is checked against: plain loops in double precision,
/// written from the math in native/include/lora_kernels.h and REFERENCE.md, calling nothing in
/// the library. Alongside each result it returns Σ|terms| per element (the sum of the absolute
/// values of everything added into it), which the tolerances scale with.
/// </summary>
internal static class Reference
{
    // ---- bf16 and dropout, ported bit for bit from kernels/common.cuh -------------------------

    /// <summary>lk_f32_to_bf16: round to nearest even; NaN stays NaN with the quiet bit forced.</summary>
    public static ushort ToBf16Bits(float value)
    {
        uint u = BitConverter.SingleToUInt32Bits(value);
        if ((u & 0x7fffffffu) > 0x7f800000u) return (ushort)((u >> 16) | 0x0040u);
        u += 0x7fffu + ((u >> 16) & 1u);
        return (ushort)(u >> 16);
    }

    public static float FromBf16Bits(ushort bits) => BitConverter.UInt32BitsToSingle((uint)bits << 16);

    public static float RoundToBf16(float value) => FromBf16Bits(ToBf16Bits(value));

    public static float[] RoundToBf16(float[] values) => Array.ConvertAll(values, RoundToBf16);

    /// <summary>Rounds through the storage dtype: what a device holds after <c>FromArray</c>.</summary>
    public static float[] RoundTo(DType dtype, float[] values) => dtype == DType.BF16 ? RoundToBf16(values) : (float[])values.Clone();

    /// <summary>lk_dropout_uniform: SplitMix64's finaliser over seed + (index + 1)·golden ratio, 24 bits → [0, 1).</summary>
    public static float DropoutUniform(ulong seed, ulong index)
    {
        ulong z = unchecked(seed + (index + 1ul) * 0x9E3779B97F4A7C15ul);
        z = unchecked((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ul);
        z = unchecked((z ^ (z >> 27)) * 0x94D049BB133111EBul);
        z ^= z >> 31;
        return (uint)(z >> 40) * (1.0f / 16777216.0f);
    }

    /// <summary>lk_dropout_factor: 0 when dropped, 1/(1-p) (computed in float, as the kernels do) when kept, 1 when p = 0.</summary>
    public static float DropoutFactor(ulong seed, ulong index, float p)
    {
        if (p <= 0f) return 1f;
        return DropoutUniform(seed, index) >= p ? 1.0f / (1.0f - p) : 0f;
    }

    /// <summary>The [M, in] factor matrix of dropout(x): element (m, k) uses index m·in + k.</summary>
    public static double[] DropoutFactors(int m, int inFeatures, float p, ulong seed)
    {
        var factors = new double[m * inFeatures];
        for (int i = 0; i < factors.Length; i++) factors[i] = DropoutFactor(seed, (ulong)i, p);
        return factors;
    }

    // ---- LoRA ---------------------------------------------------------------------------------

    /// <summary>Results of <see cref="LoraForward"/>: values and Σ|terms| for u [M, r] and y [M, out].</summary>
    public sealed record ForwardResult(double[] U, double[] UAbs, double[] Y, double[] YAbs);

    /// <summary>
    /// u = dropout(x) Aᵀ; y = x W0ᵀ + bias + scale·u Bᵀ (lk_cpu_lora_forward). YAbs counts the LoRA
    /// branch through UAbs, so an error in u propagates into y's bound.
    /// </summary>
    public static ForwardResult LoraForward(int m, int inFeatures, int outFeatures, int r,
                                            float[] x, float[] w0, float[]? bias, float[] a, float[] b,
                                            float scale, float dropoutP, ulong seed)
    {
        double[] f = DropoutFactors(m, inFeatures, dropoutP, seed);
        var u = new double[m * r];
        var uAbs = new double[m * r];
        for (int row = 0; row < m; row++)
            for (int j = 0; j < r; j++)
            {
                double sum = 0, abs = 0;
                for (int k = 0; k < inFeatures; k++)
                {
                    double term = x[row * inFeatures + k] * f[row * inFeatures + k] * a[j * inFeatures + k];
                    sum += term;
                    abs += Math.Abs(term);
                }
                u[row * r + j] = sum;
                uAbs[row * r + j] = abs;
            }

        var y = new double[m * outFeatures];
        var yAbs = new double[m * outFeatures];
        for (int row = 0; row < m; row++)
            for (int o = 0; o < outFeatures; o++)
            {
                double sum = 0, abs = 0;
                for (int k = 0; k < inFeatures; k++)
                {
                    double term = (double)x[row * inFeatures + k] * w0[o * inFeatures + k];
                    sum += term;
                    abs += Math.Abs(term);
                }
                if (bias is not null)
                {
                    sum += bias[o];
                    abs += Math.Abs(bias[o]);
                }
                double lora = 0, loraAbs = 0;
                for (int j = 0; j < r; j++)
                {
                    lora += u[row * r + j] * b[o * r + j];
                    loraAbs += uAbs[row * r + j] * Math.Abs(b[o * r + j]);
                }
                y[row * outFeatures + o] = sum + scale * lora;
                yAbs[row * outFeatures + o] = abs + Math.Abs(scale) * loraAbs;
            }
        return new ForwardResult(u, uAbs, y, yAbs);
    }

    /// <summary>Results of <see cref="LoraBackward"/>: values and Σ|terms| of dx, dA, dB.</summary>
    public sealed record BackwardResult(double[] Dx, double[] DxAbs, double[] DA, double[] DAAbs, double[] DB, double[] DBAbs);

    /// <summary>
    /// Given dy [M, out] and the forward's u [M, r] (lk_cpu_lora_backward):
    /// du = scale·dy B; dB = scale·dyᵀ u; dA = duᵀ dropout(x); dx = dy W0 + dropout'(du A).
    /// </summary>
    public static BackwardResult LoraBackward(int m, int inFeatures, int outFeatures, int r,
                                              float[] x, float[] w0, float[] a, float[] b, float[] u, float[] dy,
                                              float scale, float dropoutP, ulong seed) =>
        LoraBackward(m, inFeatures, outFeatures, r, x, w0, a, b, Array.ConvertAll(u, v => (double)v),
                     Array.ConvertAll(dy, v => (double)v), scale, dropoutP, seed);

    /// <summary>As above with u and dy in double (for gradients of a double-precision loss).</summary>
    public static BackwardResult LoraBackward(int m, int inFeatures, int outFeatures, int r,
                                              float[] x, float[] w0, float[] a, float[] b, double[] u, double[] dy,
                                              double scale, float dropoutP, ulong seed)
    {
        double[] f = DropoutFactors(m, inFeatures, dropoutP, seed);
        var du = new double[m * r];
        var duAbs = new double[m * r];
        for (int row = 0; row < m; row++)
            for (int j = 0; j < r; j++)
            {
                double sum = 0, abs = 0;
                for (int o = 0; o < outFeatures; o++)
                {
                    double term = dy[row * outFeatures + o] * b[o * r + j];
                    sum += term;
                    abs += Math.Abs(term);
                }
                du[row * r + j] = scale * sum;
                duAbs[row * r + j] = Math.Abs(scale) * abs;
            }

        var dB = new double[outFeatures * r];
        var dBAbs = new double[outFeatures * r];
        for (int o = 0; o < outFeatures; o++)
            for (int j = 0; j < r; j++)
            {
                double sum = 0, abs = 0;
                for (int row = 0; row < m; row++)
                {
                    double term = dy[row * outFeatures + o] * u[row * r + j];
                    sum += term;
                    abs += Math.Abs(term);
                }
                dB[o * r + j] = scale * sum;
                dBAbs[o * r + j] = Math.Abs(scale) * abs;
            }

        var dA = new double[r * inFeatures];
        var dAAbs = new double[r * inFeatures];
        for (int j = 0; j < r; j++)
            for (int k = 0; k < inFeatures; k++)
            {
                double sum = 0, abs = 0;
                for (int row = 0; row < m; row++)
                {
                    double xd = x[row * inFeatures + k] * f[row * inFeatures + k];
                    sum += du[row * r + j] * xd;
                    abs += duAbs[row * r + j] * Math.Abs(xd);
                }
                dA[j * inFeatures + k] = sum;
                dAAbs[j * inFeatures + k] = abs;
            }

        var dx = new double[m * inFeatures];
        var dxAbs = new double[m * inFeatures];
        for (int row = 0; row < m; row++)
            for (int k = 0; k < inFeatures; k++)
            {
                double sum = 0, abs = 0;
                for (int o = 0; o < outFeatures; o++)
                {
                    double term = dy[row * outFeatures + o] * w0[o * inFeatures + k];
                    sum += term;
                    abs += Math.Abs(term);
                }
                double lora = 0, loraAbs = 0;
                for (int j = 0; j < r; j++)
                {
                    lora += du[row * r + j] * a[j * inFeatures + k];
                    loraAbs += duAbs[row * r + j] * Math.Abs(a[j * inFeatures + k]);
                }
                double factor = f[row * inFeatures + k];
                dx[row * inFeatures + k] = sum + factor * lora;
                dxAbs[row * inFeatures + k] = abs + Math.Abs(factor) * loraAbs;
            }
        return new BackwardResult(dx, dxAbs, dA, dAAbs, dB, dBAbs);
    }

    /// <summary>W + sign·scale·B A (merge: sign = +1, unmerge: sign = -1); returns the values and Σ|terms|.</summary>
    public static (double[] W, double[] Abs) LoraMerge(int outFeatures, int inFeatures, int r, float[] w, float[] a, float[] b, double scale)
    {
        var result = new double[outFeatures * inFeatures];
        var abs = new double[outFeatures * inFeatures];
        for (int o = 0; o < outFeatures; o++)
            for (int k = 0; k < inFeatures; k++)
            {
                double sum = 0, sumAbs = 0;
                for (int j = 0; j < r; j++)
                {
                    double term = (double)b[o * r + j] * a[j * inFeatures + k];
                    sum += term;
                    sumAbs += Math.Abs(term);
                }
                result[o * inFeatures + k] = w[o * inFeatures + k] + scale * sum;
                abs[o * inFeatures + k] = Math.Abs(w[o * inFeatures + k]) + Math.Abs(scale) * sumAbs;
            }
        return (result, abs);
    }

    // ---- element-wise ops, loss, optimizer ------------------------------------------------------

    public static double[] Relu(float[] x) => Array.ConvertAll(x, v => v > 0f ? (double)v : 0.0);

    public static double[] ReluBackward(float[] x, float[] dy)
    {
        var dx = new double[x.Length];
        for (int i = 0; i < x.Length; i++) dx[i] = x[i] > 0f ? dy[i] : 0.0;
        return dx;
    }

    /// <summary>y + alpha·x.</summary>
    public static double[] Axpy(float alpha, float[] x, float[] y)
    {
        var result = new double[y.Length];
        for (int i = 0; i < y.Length; i++) result[i] = y[i] + (double)alpha * x[i];
        return result;
    }

    /// <summary>mean((pred - target)²) and its gradient 2(pred - target)/n.</summary>
    public static (double Loss, double[] Grad) MseLoss(float[] pred, float[] target)
    {
        double sum = 0;
        var grad = new double[pred.Length];
        for (int i = 0; i < pred.Length; i++)
        {
            double d = (double)pred[i] - target[i];
            sum += d * d;
            grad[i] = 2.0 * d / pred.Length;
        }
        return (sum / pred.Length, grad);
    }

    /// <summary>
    /// AdamW steps as torch.optim.AdamW (lk_cpu_adamw_step), in double; the gradient of step t is
    /// <paramref name="gradients"/>[t - 1]. Updates p in place and returns, per element, Σ over
    /// steps of |p| + lr·(|m̂| + |ĝ|)/(√v̂ + eps), with ĝ = (1-β1)·g/(1-β1^t): the magnitudes every
    /// fp32 rounding of a step is proportional to (decay, moments, the update).
    /// </summary>
    public static double[] AdamW(double[] p, IReadOnlyList<float[]> gradients,
                                 double lr, double beta1, double beta2, double eps, double weightDecay)
    {
        var m = new double[p.Length];
        var v = new double[p.Length];
        var magnitude = new double[p.Length];
        for (int step = 1; step <= gradients.Count; step++)
        {
            float[] g = gradients[step - 1];
            double correction1 = 1 - Math.Pow(beta1, step), correction2 = 1 - Math.Pow(beta2, step);
            for (int i = 0; i < p.Length; i++)
            {
                p[i] -= lr * weightDecay * p[i];
                m[i] = beta1 * m[i] + (1 - beta1) * g[i];
                v[i] = beta2 * v[i] + (1 - beta2) * g[i] * g[i];
                double denominator = Math.Sqrt(v[i] / correction2) + eps;
                p[i] -= lr * (m[i] / correction1) / denominator;
                magnitude[i] += Math.Abs(p[i]) + lr * (Math.Abs(m[i]) + (1 - beta1) * Math.Abs(g[i])) / correction1 / denominator;
            }
        }
        return magnitude;
    }
}
