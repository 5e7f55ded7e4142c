using LoraKernels.Variants;

namespace LoraKernels.Tests.Variants;

/// <summary>A PiSSA case: device, shape, rank, scale, and null (exact SVD) or the subspace iterations K.</summary>
public sealed record PissaCase(DeviceKind Device, int Out, int In, int R, float Scale, int? Niter)
{
    public override string ToString() =>
        $"Pissa_{Device}_{Out}x{In}_r{R}_s{Scale}_{(Niter is int k ? $"niter{k}" : "exact")}";
}

/// <summary>
/// PiSSA on a matrix built with a known spectrum, W = U·diag(σ)·Vᵀ with U, V orthonormal (Gram-Schmidt
/// in double), so the top-r principal part W_r = U_r·diag(σ_r)·V_rᵀ is known without a reference SVD.
/// σ = 8, 6, 5, 4 (for r = 4; the first r of it otherwise), then 1, 0.8, 0.64, ...: the gap ratio is
/// ρ = σ_{r+1}/σ_r ≤ 1/4.
/// </summary>
[TestFixture]
public sealed class PissaTests
{
    private const double U32 = 1.0 / (1 << 24);

    public static IEnumerable<TestCaseData> Cases() =>
        new PissaCase[]
        {
            new(DeviceKind.Cpu, 23, 17, 4, 2f, null),
            new(DeviceKind.Cpu, 17, 31, 1, 0.5f, null),
            new(DeviceKind.Cpu, 23, 17, 4, 2f, 1),
            new(DeviceKind.Cpu, 23, 17, 4, 2f, 3),
            new(DeviceKind.Cpu, 17, 31, 3, 1f, 0),
            new(DeviceKind.Simt, 23, 17, 4, 2f, null),
            new(DeviceKind.Simt, 23, 17, 4, 2f, 2),
        }.Select(c => new TestCaseData(c).SetName(c.ToString()));

    [TestCaseSource(nameof(Cases))]
    public void ResidualPlusScaledProductIsW0AndProductIsThePrincipalPart(PissaCase c) =>
        Check(c, c.Device == DeviceKind.Cpu ? Device.Cpu : Device.Simt);

    /// <summary>The checks of one case on <paramref name="device"/> (also run on CUDA by <see cref="PissaCudaTests"/>).</summary>
    internal static void Check(PissaCase c, Device device)
    {
        var built = BuiltMatrix.Create(c.Out, c.In, c.R, TestData.SeedFor(c.ToString()));
        float[] w = Array.ConvertAll(built.W, v => (float)v);
        using var w0 = Tensor.FromArray(device, w, c.Out, c.In);
        const ulong sketchSeed = 5;

        using PissaInit init = Pissa.Initialize(w0, c.R, c.Scale, c.Niter, sketchSeed);
        Assert.That(init.A.Shape, Is.EqualTo(new long[] { c.R, c.In }), "A is [r, in]");
        Assert.That(init.B.Shape, Is.EqualTo(new long[] { c.Out, c.R }), "B is [out, r]");
        Assert.That(w0.ToArray(), Is.EqualTo(w), "W0 is not modified");
        float[] a = init.A.ToArray(), b = init.B.ToArray(), residual = init.Residual.ToArray();
        double[] product = ScaledProduct(a, b, c.Out, c.In, c.R, c.Scale, out double[] productAbs);

        // 1. W_res + s·B·A = W0, whatever the SVD's accuracy: W_res was computed as fl(W0 - s·B·A) by the merge
        //    kernel, an r-term dot product and one subtraction: |error| ≤ Atol + 2·(r + 1)·u·(|W0| + Σ_k |s·B_ik·A_kj|).
        var reconstruction = new double[w.Length];
        var bound = new double[w.Length];
        for (int i = 0; i < w.Length; i++)
        {
            reconstruction[i] = residual[i] + product[i];
            bound[i] = Tolerance.Atol + 2.0 * (c.R + 1) * U32 * (Math.Abs(w[i]) + productAbs[i]);
        }
        Expect.NotVacuous("W0", built.W);
        Expect.Close($"{c}: W_res + s·B·A", Array.ConvertAll(reconstruction, v => (float)v), Array.ConvertAll(w, v => (double)v), bound);

        // 2. s·B·A = W_r. The fp32 SVD (LAPACK sgesdd, backward stable) is exact for W + E with
        //    ‖E‖₂ ≤ p·u·σ₁, p = 10·max(out, in) (a generous constant for the textbook p(m, n)); Wedin's theorem
        //    moves the rank-r projection by ≤ ‖E‖/δ, δ = σ_r − σ_{r+1}, so ‖s·B·A − W_r‖_F ≤ ‖E‖·(1 + 2σ₁/δ)·√r
        //    plus the rounding of forming A and B (inside the same constant). The randomized SVD adds its
        //    subspace error ‖(QQᵀ − U_rU_rᵀ)W‖_F ≤ tan θ·‖W‖_F, tan θ ≤ ρ^(2K+1)·‖Ω₂Ω₁⁻¹‖₂ (Halko, Martinsson,
        //    Tropp 2011, Thm 9.1 with K power iterations; Ω₁ = V_rᵀΩ, Ω₂ = V_⊥ᵀΩ for the very Ω the library
        //    draws; ‖·‖₂ bounded by the Frobenius norm).
        double sigma1 = built.Sigma[0], gap = built.Sigma[c.R - 1] - built.Sigma[c.R];
        double svdError = 10.0 * Math.Max(c.Out, c.In) * U32 * sigma1;
        double allowed = svdError * (1 + 2 * sigma1 / gap) * Math.Sqrt(c.R);
        if (c.Niter is int k)
        {
            double ratio = built.Sigma[c.R] / built.Sigma[c.R - 1];
            double sketch = SketchConditioning(built, Pissa.GaussianSketch(sketchSeed, c.In, c.R), c.In, c.R);
            allowed += Math.Pow(ratio, 2 * k + 1) * sketch * Frobenius(built.W);
        }
        double[] principal = built.PrincipalPart(c.R);
        Expect.NotVacuous("W_r", principal);
        double error = Frobenius(principal.Select((v, i) => product[i] - v).ToArray());
        Assert.That(error, Is.LessThanOrEqualTo(allowed),
                    $"{c}: ‖s·B·A − W_r‖_F = {error:E3} exceeds the bound {allowed:E3} (‖W_r‖_F = {Frobenius(principal):E3})");

        // 3. The factors split √(S_r/s) evenly: A·Aᵀ = BᵀB = diag(σ_r/s) (rows of Vh and columns of U are
        //    orthonormal), up to the subspace error and the same SVD bound relative to σ₁/s.
        if (c.Niter is null)
        {
            double gramBound = allowed / c.Scale + svdError / c.Scale;
            for (int p = 0; p < c.R; p++)
            for (int q = 0; q < c.R; q++)
            {
                double aa = 0, bb = 0;
                for (int j = 0; j < c.In; j++) aa += (double)a[p * c.In + j] * a[q * c.In + j];
                for (int i = 0; i < c.Out; i++) bb += (double)b[i * c.R + p] * b[i * c.R + q];
                double expected = p == q ? built.Sigma[p] / c.Scale : 0.0;
                Assert.That(aa, Is.EqualTo(expected).Within(gramBound), $"{c}: (A·Aᵀ)[{p},{q}]");
                Assert.That(bb, Is.EqualTo(expected).Within(gramBound), $"{c}: (BᵀB)[{p},{q}]");
            }
        }
    }

    [Test]
    public void PissaLayerComputesTheBaseLayerAtInitialisation_Cpu_23x17_r4()
    {
        const int outFeatures = 23, inFeatures = 17, r = 4, m = 5;
        var built = BuiltMatrix.Create(outFeatures, inFeatures, r, 11);
        var data = new TestData(12);
        float[] w = Array.ConvertAll(built.W, v => (float)v), bias = data.NonZero(outFeatures, 0.5f), x = data.NonZero(m * inFeatures);
        Device device = Device.Cpu;
        using var w0 = Tensor.FromArray(device, w, outFeatures, inFeatures);
        using var biasTensor = Tensor.FromArray(device, bias, outFeatures);
        using var xTensor = Tensor.FromArray(device, x, m, inFeatures);
        using var layer = Pissa.CreateLayer(device, w0, biasTensor, r, alpha: 8f);
        Assert.That(layer.B.Value.ToArray().Any(v => v != 0f), Is.True, "PiSSA's B is not zero (unlike LoRA's)");
        using Tensor y = layer.Forward(xTensor);
        // y = x W_resᵀ + b + s·(x Aᵀ) Bᵀ against x W0ᵀ + b: the reconstruction error above times |x|, plus the
        // fp32 rounding of the in-term and r-term dot products: Atol + 2·(in + r + 2)·u·Σ_j |x_j|·(|W0| + Σ_k|s·B·A|).
        var reference = new double[m * outFeatures];
        var bound = new double[m * outFeatures];
        double scale = 8.0 / r;
        for (int row = 0; row < m; row++)
        for (int o = 0; o < outFeatures; o++)
        {
            double sum = bias[o], magnitude = Math.Abs(bias[o]);
            for (int j = 0; j < inFeatures; j++)
            {
                sum += (double)x[row * inFeatures + j] * w[o * inFeatures + j];
                magnitude += Math.Abs(x[row * inFeatures + j]) * (Math.Abs(w[o * inFeatures + j]) + 2 * scale * built.Sigma[0]);
            }
            reference[row * outFeatures + o] = sum;
            bound[row * outFeatures + o] = Tolerance.Atol + 2.0 * (inFeatures + r + 2) * U32 * magnitude;
        }
        Expect.NotVacuous("x W0ᵀ + b", reference);
        Expect.Close("PiSSA layer at init vs the base layer", y.ToArray(), reference, bound);
    }

    /// <summary>
    /// The guide's PiSSA (V_r frozen) is PEFT's PiSSA with A frozen: the same residual base, A and B, so the same
    /// forward bit for bit; only B is a parameter, and a training step leaves A as it was.
    /// </summary>
    [Test]
    public void PissaWithFrozenVIsPeftsPissaWithAFrozen_Cpu_23x17_r4()
    {
        const int outFeatures = 23, inFeatures = 17, r = 4, m = 5;
        var built = BuiltMatrix.Create(outFeatures, inFeatures, r, 13);
        var data = new TestData(14);
        Device device = Device.Cpu;
        using var w0 = Tensor.FromArray(device, Array.ConvertAll(built.W, v => (float)v), outFeatures, inFeatures);
        using var x = Tensor.FromArray(device, data.NonZero(m * inFeatures), m, inFeatures);
        using var target = Tensor.FromArray(device, data.NonZero(m * outFeatures), m, outFeatures);
        using var peft = Pissa.CreateLayer(device, w0, null, r, alpha: 8f);
        using var guide = Pissa.CreateLayerWithFrozenV(device, w0, null, r, alpha: 8f);
        Expect.Exact("residual base", guide.W0.ToArray(), peft.W0.ToArray());
        Expect.Exact("A = √S'·V_rᵀ", guide.A.ToArray(), peft.A.Value.ToArray());
        Expect.Exact("B = U_r·√S'", guide.B.Value.ToArray(), peft.B.Value.ToArray());
        peft.Training = guide.Training = false;
        using (Tensor yPeft = peft.Forward(x), yGuide = guide.Forward(x))
            Expect.Exact("forward", yGuide.ToArray(), yPeft.ToArray());
        Assert.That(guide.Parameters().Select(p => p.Name), Is.EqualTo(new[] { "lora_B" }), "only U_r·√S' trains");

        float[] aBefore = guide.A.ToArray(), bBefore = guide.B.Value.ToArray();
        guide.Training = true;
        using (var tape = new LoraKernels.Autograd.Tape())
        {
            tape.MseLoss(guide.Forward(tape, new LoraKernels.Autograd.Variable(x)), target);
            tape.Backward();
        }
        Ops.Elementwise.Axpy(-0.1f, guide.B.Grad!, guide.B.Value);
        Expect.Exact("A (V_r) after a step", guide.A.ToArray(), aBefore);
        Assert.That(guide.B.Value.ToArray().SequenceEqual(bBefore), Is.False, "B moved");
    }

    [Test]
    public void RankOutsideOneToMinDimensionIsRejected_Cpu_5x3()
    {
        using var w0 = Tensor.FromArray(Device.Cpu, new TestData(3).NonZero(15), 5, 3);
        Assert.That(() => Pissa.Initialize(w0, 4, 1f), Throws.TypeOf<ArgumentOutOfRangeException>().With.Message.Contains("min(in, out)"));
        Assert.That(() => Pissa.Initialize(w0, 0, 1f), Throws.TypeOf<ArgumentOutOfRangeException>());
        Assert.That(() => Pissa.Initialize(w0, 2, 0f), Throws.TypeOf<ArgumentOutOfRangeException>().With.Message.Contains("scale"));
        Assert.That(() => Pissa.Initialize(w0, 2, 1f, niter: -1), Throws.TypeOf<ArgumentOutOfRangeException>());
    }

    /// <summary>s·B·A [out, in] in double and, per element, Σ_k |s·B_ik·A_kj|.</summary>
    private static double[] ScaledProduct(float[] a, float[] b, int outFeatures, int inFeatures, int r, float scale, out double[] abs)
    {
        var product = new double[outFeatures * inFeatures];
        abs = new double[product.Length];
        for (int i = 0; i < outFeatures; i++)
        for (int j = 0; j < inFeatures; j++)
        {
            double sum = 0, magnitude = 0;
            for (int k = 0; k < r; k++)
            {
                double term = (double)scale * b[i * r + k] * a[k * inFeatures + j];
                sum += term;
                magnitude += Math.Abs(term);
            }
            product[i * inFeatures + j] = sum;
            abs[i * inFeatures + j] = magnitude;
        }
        return product;
    }

    private static double Frobenius(IEnumerable<double> values) => Math.Sqrt(values.Sum(v => v * v));

    /// <summary>‖Ω₂Ω₁⁻¹‖_F ≥ ‖Ω₂Ω₁⁻¹‖₂ with Ω₁ = V_rᵀΩ [r, r], Ω₂ = V_⊥ᵀΩ [in − r, r] (Ω [in, r] row-major).</summary>
    private static double SketchConditioning(BuiltMatrix built, float[] omega, int inFeatures, int r)
    {
        double[,] projected = new double[inFeatures, r];  // Vᵀ Ω, all in rows of the full basis
        for (int p = 0; p < inFeatures; p++)
        for (int q = 0; q < r; q++)
        {
            double sum = 0;
            for (int j = 0; j < inFeatures; j++) sum += built.V[j, p] * omega[j * r + q];
            projected[p, q] = sum;
        }
        double[,] inverse = Invert(projected, r);
        double total = 0;
        for (int p = r; p < inFeatures; p++)
        for (int q = 0; q < r; q++)
        {
            double sum = 0;
            for (int t = 0; t < r; t++) sum += projected[p, t] * inverse[t, q];
            total += sum * sum;
        }
        return Math.Sqrt(total);
    }

    /// <summary>The inverse of the leading r×r block, by Gauss-Jordan with partial pivoting.</summary>
    private static double[,] Invert(double[,] matrix, int r)
    {
        var work = new double[r, 2 * r];
        for (int i = 0; i < r; i++)
        {
            for (int j = 0; j < r; j++) work[i, j] = matrix[i, j];
            work[i, r + i] = 1;
        }
        for (int column = 0; column < r; column++)
        {
            int pivot = column;
            for (int i = column + 1; i < r; i++) if (Math.Abs(work[i, column]) > Math.Abs(work[pivot, column])) pivot = i;
            for (int j = 0; j < 2 * r; j++) (work[column, j], work[pivot, j]) = (work[pivot, j], work[column, j]);
            double diagonal = work[column, column];
            Assert.That(Math.Abs(diagonal), Is.GreaterThan(1e-12), "the sketch's Ω₁ must be invertible");
            for (int j = 0; j < 2 * r; j++) work[column, j] /= diagonal;
            for (int i = 0; i < r; i++)
            {
                if (i == column) continue;
                double factor = work[i, column];
                for (int j = 0; j < 2 * r; j++) work[i, j] -= factor * work[column, j];
            }
        }
        var inverse = new double[r, r];
        for (int i = 0; i < r; i++) for (int j = 0; j < r; j++) inverse[i, j] = work[i, r + j];
        return inverse;
    }
}

/// <summary>W = U·diag(σ)·Vᵀ [out, in] with full orthonormal bases U [out, out], V [in, in] and a gap after σ_r.</summary>
internal sealed class BuiltMatrix
{
    public required double[] W { get; init; }
    public required double[,] U { get; init; }
    public required double[,] V { get; init; }
    public required double[] Sigma { get; init; }
    public required int Out { get; init; }
    public required int In { get; init; }

    public static BuiltMatrix Create(int outFeatures, int inFeatures, int r, ulong seed)
    {
        var data = new TestData(seed);
        double[,] u = Orthonormal(outFeatures, data), v = Orthonormal(inFeatures, data);
        int k = Math.Min(outFeatures, inFeatures);
        double[] top = [8, 6, 5, 4];
        var sigma = new double[k];
        for (int i = 0; i < k; i++) sigma[i] = i < r ? top[i % top.Length] - (i / top.Length) * 0.5 : Math.Pow(0.8, i - r);
        var w = new double[outFeatures * inFeatures];
        for (int i = 0; i < outFeatures; i++)
        for (int j = 0; j < inFeatures; j++)
        {
            double sum = 0;
            for (int t = 0; t < k; t++) sum += u[i, t] * sigma[t] * v[j, t];
            w[i * inFeatures + j] = sum;
        }
        return new BuiltMatrix { W = w, U = u, V = v, Sigma = sigma, Out = outFeatures, In = inFeatures };
    }

    /// <summary>W_r = U_r·diag(σ_r)·V_rᵀ, the top-r principal part.</summary>
    public double[] PrincipalPart(int r)
    {
        var part = new double[Out * In];
        for (int i = 0; i < Out; i++)
        for (int j = 0; j < In; j++)
        {
            double sum = 0;
            for (int t = 0; t < r; t++) sum += U[i, t] * Sigma[t] * V[j, t];
            part[i * In + j] = sum;
        }
        return part;
    }

    /// <summary>An n×n orthonormal matrix (columns), modified Gram-Schmidt twice over non-zero random columns.</summary>
    private static double[,] Orthonormal(int n, TestData data)
    {
        float[] values = data.NonZero(n * n);
        var q = new double[n, n];
        for (int i = 0; i < n; i++) for (int j = 0; j < n; j++) q[i, j] = values[i * n + j];
        for (int pass = 0; pass < 2; pass++)
        {
            for (int column = 0; column < n; column++)
            {
                for (int previous = 0; previous < column; previous++)
                {
                    double dot = 0;
                    for (int i = 0; i < n; i++) dot += q[i, previous] * q[i, column];
                    for (int i = 0; i < n; i++) q[i, column] -= dot * q[i, previous];
                }
                double norm = 0;
                for (int i = 0; i < n; i++) norm += q[i, column] * q[i, column];
                norm = Math.Sqrt(norm);
                for (int i = 0; i < n; i++) q[i, column] /= norm;
            }
        }
        return q;
    }
}

/// <summary>PiSSA on a GPU: cuSOLVER's SVD and cuBLAS's GEMMs (the randomized path), the same checks as on the CPU.</summary>
[TestFixture]
[Category("Cuda")]
public sealed class PissaCudaTests
{
    [TestCase(null)]
    [TestCase(2)]
    public void ResidualPlusScaledProductIsW0AndProductIsThePrincipalPart_Cuda_23x17_r4(int? niter) =>
        PissaTests.Check(new PissaCase(DeviceKind.Cuda, 23, 17, 4, 2f, niter), Devices.CudaOrIgnore());
}
