using LoraKernels.Interop;

namespace LoraKernels.Tests.Nf4;

/// <summary>
/// The 4-bit format against Nf4Reference (REFERENCE.md §8, written in the test): code tables bit for
/// bit, codes and absmax of Quantize exactly (tie rule, all-zero block, odd n, block sizes 32/64/4096,
/// blocks crossing rows), Dequantize exactly, double quantization against the nested formula, and
/// the statistical error of NF4 on Gaussian weights. Runs on the CPU kernels and kernels/nf4.cu
/// under the emulator.
/// </summary>
[TestFixture(DeviceKind.Cpu)]
[TestFixture(DeviceKind.Simt)]
public sealed class Nf4FormatTests(DeviceKind kind)
{
    private Device Device => kind == DeviceKind.Cpu ? Device.Cpu : Device.Simt;

    [Test]
    public unsafe void CodeTablesAreBitsandbytes()
    {
        float* table = stackalloc float[16];
        foreach (QuantType type in new[] { QuantType.Nf4, QuantType.Fp4 })
        {
            Assert.That(NativeCpu.lk_cpu_quant_table((int)type, table), Is.Zero);
            float[] expected = Nf4Reference.Table(type);
            for (int i = 0; i < 16; i++)
                Assert.That(BitConverter.SingleToUInt32Bits(table[i]), Is.EqualTo(BitConverter.SingleToUInt32Bits(expected[i])), $"{type} code {i}");
        }
        Assert.That(Nf4Reference.Table(QuantType.Nf4)[15], Is.EqualTo(1f));
        float* dynamic = stackalloc float[256];
        Assert.That(NativeCpu.lk_cpu_dynamic_map_signed(dynamic), Is.Zero);
        for (int i = 0; i < 256; i++)
            Assert.That(BitConverter.SingleToUInt32Bits(dynamic[i]), Is.EqualTo(Nf4Reference.DynamicSignedBits[i]), $"dynamic map [{i}]");
    }

    [Test]
    public void PacksHighNibbleFirstAndPadsOddTail()
    {
        // One block with absmax 1: 1.0 → NF4 15, -1.0 → 0, 0 → 7; n = 3, so the last low nibble is the pad 7.
        using Tensor w = Tensor.FromArray(Device, [1f, -1f, 0f], 3);
        using QuantizedWeight q = Ops.Nf4.Quantize(w, QuantType.Nf4, 32);
        Assert.That(q.CodesToArray(), Is.EqualTo(new byte[] { 0xF0, 0x77 }));
        Assert.That(q.AbsmaxToArray(), Is.EqualTo(new[] { 1f }));
        Assert.That(q.CodeBytes, Is.EqualTo(2));
    }

    [Test]
    public void TiesOnAMidpointTakeTheLowerCode()
    {
        // absmax 1 makes w·(1/absmax) = w exactly, so every NF4 threshold is hit exactly; bnb's strict
        // '>' sends threshold t_i to code i, and its next float up to code i + 1.
        var values = new List<float> { 1f };
        var expected = new List<int> { 15 };
        for (int i = 0; i < 15; i++)
        {
            float t = Nf4Reference.Bits(Nf4Reference.Nf4ThresholdBits[i]);
            values.Add(t);
            expected.Add(i);
            values.Add(MathF.BitIncrement(t));
            expected.Add(i + 1);
        }
        values.Add(0f);
        expected.Add(7);
        using Tensor w = Tensor.FromArray(Device, values.ToArray(), values.Count);
        using QuantizedWeight q = Ops.Nf4.Quantize(w, QuantType.Nf4, 64);
        byte[] codes = q.CodesToArray();
        for (int i = 0; i < values.Count; i++)
        {
            int code = (i & 1) == 0 ? codes[i / 2] >> 4 : codes[i / 2] & 15;
            Assert.That(code, Is.EqualTo(expected[i]), $"element {i} = {values[i]:R}");
        }
    }

    [TestCase(QuantType.Nf4, 1, 1, 32)]
    [TestCase(QuantType.Nf4, 13, 33, 32)]
    [TestCase(QuantType.Nf4, 7, 97, 64)]
    [TestCase(QuantType.Nf4, 3, 4097, 4096)]
    [TestCase(QuantType.Fp4, 13, 33, 32)]
    [TestCase(QuantType.Fp4, 5, 129, 64)]
    public void QuantizeAndDequantizeMatchTheReference(QuantType type, int rows, int cols, int blockSize)
    {
        int n = rows * cols;
        float[] values = new TestData(TestData.SeedFor($"q{type}{rows}x{cols}b{blockSize}")).NonZero(n, 2f);
        // An all-zero block (the second, when there is one) encodes 0.0 and dequantizes to zero.
        if (n >= 2 * blockSize) Array.Clear(values, blockSize, blockSize);
        var (codes, absmax) = Nf4Reference.Quantize(type, values, blockSize);
        using Tensor w = Tensor.FromArray(Device, values, rows, cols);
        using QuantizedWeight q = Ops.Nf4.Quantize(w, type, blockSize);
        Assert.That(q.BlockCount, Is.EqualTo(absmax.Length));
        Assert.That(q.CodesToArray(), Is.EqualTo(codes), "codes");
        Assert.That(q.AbsmaxToArray(), Is.EqualTo(absmax), "absmax");

        using Tensor deq = Ops.Nf4.Dequantize(q);
        Assert.That(deq.Shape, Is.EqualTo(new long[] { rows, cols }));
        float[] expected = Nf4Reference.Dequantize(type, codes, absmax, n, blockSize);
        Expect.Exact("dequantize", deq.ToArray(), expected);
        Expect.NotVacuous("dequantize", Array.ConvertAll(expected, v => (double)v));
    }

    [Test]
    public void GaussianRmsErrorIsNf4s()
    {
        // NF4 is the quantile code of N(0, 1) scaled to the block's absmax; with 64-element blocks the
        // relative RMS error ‖W − deq(W)‖/‖W‖ of Gaussian weights measured by this reference lies in
        // [0.085, 0.105] (about 0.095, within ±10% for 2^14 samples); FP4 is coarser there (>0.1).
        const int n = 1 << 14;
        float[] values = Gaussian(n, 7);
        using Tensor w = Tensor.FromArray(Device, values, 128, n / 128);
        using QuantizedWeight q = Ops.Nf4.Quantize(w, QuantType.Nf4, 64);
        using Tensor deq = Ops.Nf4.Dequantize(q);
        double relative = RelativeRms(values, deq.ToArray());
        Assert.That(relative, Is.InRange(0.085, 0.105));
    }

    [TestCase(64, 300 * 64 + 17)]
    [TestCase(32, 513 * 32)]
    public void DoubleQuantizationAddsAtMostHalfACodeStep(int blockSize, int n)
    {
        float[] values = Gaussian(n, 11);
        using Tensor w = Tensor.FromArray(Device, values, n);
        using QuantizedWeight plain = Ops.Nf4.Quantize(w, QuantType.Nf4, blockSize);
        using QuantizedWeight nested = Ops.Nf4.Quantize(w, QuantType.Nf4, blockSize, doubleQuant: true);
        Assert.That(nested.IsNested, Is.True);
        Assert.That(nested.CodesToArray(), Is.EqualTo(plain.CodesToArray()), "double quantization leaves the codes alone");
        float[] absmax = plain.AbsmaxToArray();
        byte[] qabsmax = nested.QuantizedAbsmaxToArray();
        float[] absmax2 = nested.NestedAbsmaxToArray();
        float[] dyn = Nf4Reference.DynamicSigned();
        // A nested weight's plain absmax reads as bitsandbytes decodes it: dyn[q]·absmax2 + offset, in fp32.
        float[] decoded = nested.AbsmaxToArray();
        Assert.That(decoded, Has.Length.EqualTo(absmax.Length));
        for (int b = 0; b < absmax.Length; b++)
            Assert.That(decoded[b], Is.EqualTo(dyn[qabsmax[b]] * absmax2[b / 256] + nested.Offset), $"decoded absmax[{b}]");
        Assert.That(absmax2, Has.Length.EqualTo((absmax.Length + 255) / 256));
        // offset = mean(absmax) in fp32 (summation order free): |offset − mean| ≤ blocks·2⁻²⁴·mean.
        double mean = absmax.Average(v => (double)v);
        Assert.That(nested.Offset, Is.EqualTo(mean).Within(absmax.Length * Tolerance.Fp32Unit * mean + 1e-7));
        for (int c = 0; c < absmax2.Length; c++)
        {
            float max = 0f;
            for (int b = c * 256; b < Math.Min(absmax.Length, (c + 1) * 256); b++) max = Math.Max(max, Math.Abs(absmax[b] - nested.Offset));
            Assert.That(absmax2[c], Is.EqualTo(max), $"absmax2[{c}]");
        }
        // Each qabsmax is the nearest dynamic code; the decoded absmax is off by at most half the widest
        // gap between neighbouring codes (0.9/64/2 ≈ 0.007) times absmax2, plus fp32 rounding.
        double halfGap = Enumerable.Range(0, 255).Max(i => (double)dyn[i + 1] - dyn[i]) / 2;
        using Tensor deqNested = Ops.Nf4.Dequantize(nested);
        float[] nestedValues = deqNested.ToArray();
        using Tensor deqPlain = Ops.Nf4.Dequantize(plain);
        float[] plainValues = deqPlain.ToArray();
        for (int b = 0; b < absmax.Length; b++)
        {
            float a2 = absmax2[b / 256];
            float scaled = (absmax[b] - nested.Offset) * (1f / a2);
            float best = dyn[Nf4Reference.Nearest(dyn, scaled)];
            // Nearest up to fp32 rounding of the scaled value (bnb's search compares against midpoints).
            Assert.That(Math.Abs(dyn[qabsmax[b]] - scaled), Is.LessThanOrEqualTo(Math.Abs(best - scaled) + 1e-6), $"qabsmax[{b}]");
        }
        for (int i = 0; i < n; i++)
        {
            double bound = halfGap * absmax2[i / blockSize / 256] + 4 * Tolerance.Fp32Unit * Math.Abs(plainValues[i]) + 1e-7;
            Assert.That(Math.Abs(nestedValues[i] - plainValues[i]), Is.LessThanOrEqualTo(bound), $"element {i}");
        }
        double plainError = RelativeRms(values, plainValues), nestedError = RelativeRms(values, nestedValues);
        Assert.That(nestedError, Is.LessThan(plainError + 0.005), $"double quantization: {plainError:F4} → {nestedError:F4}");
        Assert.That(nested.StatisticsBytes, Is.LessThan(plain.StatisticsBytes / 3), "nested statistics are ~1 byte per block instead of 4");
    }

    internal static float[] Gaussian(int n, ulong seed)
    {
        var data = new TestData(seed);
        var values = new float[n];
        for (int i = 0; i < n; i++)
        {
            double u1 = 1.0 - data.NextDouble(), u2 = data.NextDouble();
            values[i] = (float)(Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2));
        }
        return values;
    }

    private static double RelativeRms(float[] exact, float[] approximate)
    {
        double error = 0, norm = 0;
        for (int i = 0; i < exact.Length; i++)
        {
            error += Math.Pow(exact[i] - (double)approximate[i], 2);
            norm += (double)exact[i] * exact[i];
        }
        return Math.Sqrt(error / norm);
    }
}
