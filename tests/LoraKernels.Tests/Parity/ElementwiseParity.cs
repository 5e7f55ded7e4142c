using System.Globalization;

namespace LoraKernels.Tests.Parity;

/// <summary>An element-wise case: a tensor shape and a storage dtype.</summary>
public sealed record ElementwiseCase(long[] Shape, DType DType)
{
    public int Count => (int)Shape.Aggregate(1L, (a, b) => a * b);

    public string Describe(string op) => $"{op}_{DType}_{string.Join("x", Shape)}";
}

/// <summary>
/// Element-wise ops, the MSE loss, casts and AdamW on any list of devices, against the reference.
/// Sizes: 1, primes, and products that are multiples of no block size or vector width.
/// </summary>
internal static class ElementwiseParity
{
    private static readonly long[][] Shapes = [[1], [7], [33, 97], [130, 53]];

    public static IEnumerable<TestCaseData> Cases(string op, bool bf16 = true) =>
        from shape in Shapes
        from dtype in bf16 ? new[] { DType.F32, DType.BF16 } : [DType.F32]
        let c = new ElementwiseCase(shape, dtype)
        select new TestCaseData(c).SetName(c.Describe(op));

    /// <summary>ReLU is exact: max(x, 0) of a representable value is representable.</summary>
    public static void Relu(ElementwiseCase c, params Device[] devices)
    {
        float[] x = new TestData(TestData.SeedFor(c.Describe("Relu"))).NonZero(c.Count, 2f, c.DType);
        float[] expected = Array.ConvertAll(Reference.Relu(x), v => (float)v);
        if (c.Count > 1) Assert.That(x.Any(v => v > 0f) && x.Any(v => v < 0f), Is.True, "both signs present");
        foreach (Device device in devices)
        {
            using var xt = Tensor.FromArray(device, x, c.DType, c.Shape);
            using var y = Elementwise.Relu(xt);
            Assert.That(y.DType, Is.EqualTo(c.DType), "dtype");
            Assert.That(y.Shape, Is.EqualTo(c.Shape), "shape");
            Expect.Exact($"{device.Kind} relu", y.ToArray(), expected);
        }
    }

    /// <summary>The first NaN/±Inf index (exact): none, the first, a middle and the last element, with a later NaN that must not win.</summary>
    public static void FirstNonFinite(ElementwiseCase c, params Device[] devices)
    {
        float[] x = new TestData(TestData.SeedFor(c.Describe("FirstNonFinite"))).NonZero(c.Count, 1f, c.DType);
        foreach (int at in new[] { -1, 0, c.Count / 2, c.Count - 1 }.Distinct())
        {
            foreach (float bad in new[] { float.NaN, float.PositiveInfinity, float.NegativeInfinity })
            {
                float[] y = (float[])x.Clone();
                if (at >= 0) y[at] = bad;
                if (at >= 0 && at + 2 < c.Count) y[at + 2] = float.NaN;
                foreach (Device device in devices)
                {
                    using var t = Tensor.FromArray(device, y, c.DType, c.Shape);
                    Assert.That(Elementwise.FirstNonFinite(t), Is.EqualTo((long)at), $"{device.Kind}: {bad} at {at}");
                }
                if (at < 0) break;
            }
        }
    }

    /// <summary>dx = dy where x > 0, else 0: exact.</summary>
    public static void ReluBackward(ElementwiseCase c, params Device[] devices)
    {
        var data = new TestData(TestData.SeedFor(c.Describe("ReluBackward")));
        float[] x = data.NonZero(c.Count, 2f, c.DType), dy = data.NonZero(c.Count, 1f, c.DType);
        float[] expected = Array.ConvertAll(Reference.ReluBackward(x, dy), v => (float)v);
        foreach (Device device in devices)
        {
            using var xt = Tensor.FromArray(device, x, c.DType, c.Shape);
            using var dyt = Tensor.FromArray(device, dy, c.DType, c.Shape);
            using var dx = Elementwise.ReluBackward(xt, dyt);
            Assert.That(dx.DType, Is.EqualTo(c.DType), "dtype");
            Expect.Exact($"{device.Kind} relu backward", dx.ToArray(), expected);
        }
    }

    /// <summary>y += alpha·x: one product and one sum, |error| ≤ Atol + 2·2·2⁻²⁴·(|alpha·x| + |y|) + εout·|result|.</summary>
    public static void Axpy(ElementwiseCase c, params Device[] devices)
    {
        var data = new TestData(TestData.SeedFor(c.Describe("Axpy")));
        float[] x = data.NonZero(c.Count, 1f, c.DType), y = data.NonZero(c.Count, 1f, c.DType);
        const float alpha = -0.7f;
        double[] expected = Reference.Axpy(alpha, x, y);
        double[] abs = x.Select((v, i) => Math.Abs(alpha * (double)v) + Math.Abs(y[i])).ToArray();
        double[] bound = Tolerance.Bounds(expected, abs, 2, c.DType);
        Expect.NotVacuous("axpy reference", expected);
        foreach (Device device in devices)
        {
            using var xt = Tensor.FromArray(device, x, c.DType, c.Shape);
            using var yt = Tensor.FromArray(device, y, c.DType, c.Shape);
            Elementwise.Axpy(alpha, xt, yt);
            Expect.Close($"{device.Kind} axpy", yt.ToArray(), expected, bound);
            Expect.Close($"{device.Kind} axpy leaves x", xt.ToArray(), Array.ConvertAll(x, v => (double)v), new double[c.Count]);
        }
    }

    /// <summary>
    /// loss = mean((p - t)²): n squared differences summed, |error| ≤ Atol + 2·(n + 3)·2⁻²⁴·loss (every term is
    /// non-negative, so Σ|terms| = n·loss; +3 for the difference, the square and the division).
    /// grad = 2(p - t)/n: three roundings, |error| ≤ Atol·2⁻¹⁰ + 2·3·2⁻²⁴·|grad| + εout·|grad|
    /// (the floor is scaled down because gradients are O(1/n)).
    /// </summary>
    public static void MseLoss(ElementwiseCase c, params Device[] devices)
    {
        var data = new TestData(TestData.SeedFor(c.Describe("MseLoss")));
        float[] pred = data.NonZero(c.Count, 1f, c.DType), target = data.NonZero(c.Count, 1f, c.DType);
        var (loss, grad) = Reference.MseLoss(pred, target);
        Expect.NotVacuous("mse gradient reference", grad);
        Assert.That(loss, Is.GreaterThan(0.0), "non-zero loss");
        double lossBound = Tolerance.Atol + Tolerance.Factor * (c.Count + 3) * Tolerance.Fp32Unit * loss;
        foreach (Device device in devices)
        {
            using var p = Tensor.FromArray(device, pred, c.DType, c.Shape);
            using var t = Tensor.FromArray(device, target, c.DType, c.Shape);
            var (deviceLoss, deviceGrad) = Losses.Mse(p, t);
            using (deviceGrad)
            {
                Assert.That(deviceLoss, Is.EqualTo(loss).Within(lossBound), $"{device.Kind} loss");
                Assert.That(deviceGrad, Is.Not.Null, $"{device.Kind} gradient");
                Assert.That(deviceGrad!.Shape, Is.EqualTo(c.Shape), "gradient shape");
                double[] gradBound = grad.Select(g => Tolerance.Atol / 1024 + (Tolerance.Factor * 3 * Tolerance.Fp32Unit
                                                       + Tolerance.OutputRounding(deviceGrad.DType)) * Math.Abs(g)).ToArray();
                Expect.Close($"{device.Kind} mse gradient", deviceGrad.ToArray(), grad, gradBound);
            }
            var (lossOnly, noGrad) = Losses.Mse(p, t, wantGradient: false);
            Assert.That(noGrad, Is.Null, $"{device.Kind}: no gradient when not asked");
            Assert.That(lossOnly, Is.EqualTo(loss).Within(lossBound), $"{device.Kind} loss without gradient");
        }
    }

    /// <summary>
    /// Casts are exact: F32 → BF16 rounds to nearest even exactly as common.cuh (ties, NaN, infinities,
    /// overflow to infinity, subnormals included) and BF16 → F32 widens.
    /// </summary>
    public static void Cast(ElementwiseCase c, params Device[] devices)
    {
        float[] values = new TestData(TestData.SeedFor(c.Describe("Cast"))).NonZero(c.Count, 3f);
        // Overwrite the first elements with the values where rounding is easy to get wrong.
        float[] special =
        [
            BitConverter.UInt32BitsToSingle(0x3F808000u),  // tie, even below: rounds down
            BitConverter.UInt32BitsToSingle(0x3F818000u),  // tie, odd below: rounds up
            BitConverter.UInt32BitsToSingle(0xBF808001u),  // just above a tie, negative
            float.MaxValue,                                // rounds up to +infinity
            float.PositiveInfinity, float.NegativeInfinity,
            BitConverter.UInt32BitsToSingle(0x7FA00001u),  // signalling NaN: comes back quiet
            BitConverter.UInt32BitsToSingle(0x00012345u),  // subnormal
            -0.0f,
        ];
        Array.Copy(special, values, Math.Min(special.Length, values.Length));
        float[] expected = Reference.RoundToBf16(values);
        foreach (Device device in devices)
        {
            using var source = Tensor.FromArray(device, values, DType.F32, c.Shape);
            using var bf16 = Elementwise.Cast(source, DType.BF16);
            Assert.That(bf16.DType, Is.EqualTo(DType.BF16), "dtype");
            Expect.Exact($"{device.Kind} F32→BF16", bf16.ToArray(), expected);
            using var back = Elementwise.Cast(bf16, DType.F32);
            Assert.That(back.DType, Is.EqualTo(DType.F32), "dtype");
            Expect.Exact($"{device.Kind} BF16→F32", back.ToArray(), expected);
        }
    }

    /// <summary>Every element becomes the value rounded to the dtype (exact); the rest of the tensor is overwritten.</summary>
    public static void Fill(ElementwiseCase c, params Device[] devices)
    {
        const float value = -1.2345678f;  // not representable in bf16: the fill must round it
        float expected = c.DType == DType.BF16 ? Reference.RoundToBf16(value) : value;
        float[] before = new TestData(TestData.SeedFor(c.Describe("Fill"))).NonZero(c.Count, 1f, c.DType);
        foreach (Device device in devices)
        {
            using var tensor = Tensor.FromArray(device, before, c.DType, c.Shape);
            Elementwise.Fill(tensor, value);
            Expect.Exact($"{device.Kind} fill", tensor.ToArray(), Enumerable.Repeat(expected, c.Count).ToArray());
        }
    }
}
