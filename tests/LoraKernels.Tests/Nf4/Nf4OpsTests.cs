namespace LoraKernels.Tests.Nf4;

/// <summary>One case of the 4-bit ops: tokens M, the [out, in] weight, its block size and nesting, the activations' dtype.</summary>
public sealed record Nf4Case(int M, int In, int Out, int R, int BlockSize, bool Nested, DType DType, float Dropout)
{
    public override string ToString() =>
        $"M{M}_in{In}_out{Out}_r{R}_bs{BlockSize}{(Nested ? "_nested" : "")}_{DType}{(Dropout > 0 ? $"_p{Dropout}" : "")}";
}

/// <summary>
/// Nf4.Matmul, Qlora.Forward and Qlora.Backward on the CPU kernels and kernels/nf4.cu under the
/// emulator, each against the double-precision LoRA reference (Support/Reference.cs) fed the
/// reference-dequantized weight, and the emulator against the CPU. Shapes are odd (blocks cross
/// rows whenever in % blockSize ≠ 0), M covers decode (1, 7, 16) and tiled (33) token counts.
/// Tolerances: Tolerance.Bounds with K = the chained reduction lengths, as the LoRA parity tests;
/// the fp32 dequantization of W (one rounding per term) is inside the K·2⁻²⁴ term.
/// </summary>
[TestFixture]
public sealed class Nf4OpsTests
{
    public static IEnumerable<TestCaseData> Cases()
    {
        (int In, int Out, int R, int BlockSize, bool Nested)[] shapes = [(33, 13, 4, 32, false), (96, 17, 3, 64, true), (257, 5, 8, 4096, false)];
        foreach (var s in shapes)
            foreach (int m in new[] { 1, 7, 16, 33 })
                foreach (DType dtype in new[] { DType.F32, DType.BF16 })
                {
                    var c = new Nf4Case(m, s.In, s.Out, s.R, s.BlockSize, s.Nested, dtype, m == 7 ? 0.25f : 0f);
                    yield return new TestCaseData(c).SetName("{m}_" + c);
                }
    }

    private sealed record Inputs(float[] X, float[] W, float[] Bias, float[] A, float[] B, float[] Dy);

    private static Inputs MakeInputs(Nf4Case c)
    {
        var data = new TestData(TestData.SeedFor(c.ToString()));
        return new Inputs(
            X: data.NonZero(c.M * c.In, 1f, c.DType),
            W: data.NonZero(c.Out * c.In, 1f / MathF.Sqrt(c.In)),
            Bias: data.NonZero(c.Out, 0.5f, c.DType),
            A: data.NonZero(c.R * c.In, 1f / MathF.Sqrt(c.In), c.DType),
            B: data.NonZero(c.Out * c.R, 1f / MathF.Sqrt(c.R), c.DType),
            Dy: data.NonZero(c.M * c.Out, 1f, c.DType));
    }

    /// <summary>deq(W) computed here from the weight's codes and statistics (nested: dyn8[q]·absmax2 + offset).</summary>
    internal static float[] ReferenceWeight(QuantizedWeight q)
    {
        float[] absmax;
        if (q.IsNested)
        {
            byte[] qabsmax = q.QuantizedAbsmaxToArray();
            float[] absmax2 = q.NestedAbsmaxToArray(), dyn = Nf4Reference.DynamicSigned();
            absmax = new float[qabsmax.Length];
            for (int b = 0; b < absmax.Length; b++) absmax[b] = dyn[qabsmax[b]] * absmax2[b / 256] + q.Offset;
        }
        else
        {
            absmax = q.AbsmaxToArray();
        }
        return Nf4Reference.Dequantize(q.QuantType, q.CodesToArray(), absmax, (int)q.ElementCount, q.BlockSize);
    }

    private const float Scale = 1.5f;
    private const ulong DropoutSeed = 1234;

    [TestCaseSource(nameof(Cases))]
    public void MatmulAndForward(Nf4Case c) => CheckMatmulAndForward(c, Device.Cpu, Device.Simt);

    [TestCaseSource(nameof(Cases))]
    public void Backward(Nf4Case c) => CheckBackward(c, Device.Cpu, Device.Simt);

    /// <summary>Matmul and Qlora.Forward on each device against the reference, and every device after the first against the first.</summary>
    internal static void CheckMatmulAndForward(Nf4Case c, params Device[] devices)
    {
        Inputs input = MakeInputs(c);
        float[]? firstY = null, firstBase = null;
        foreach (Device device in devices)
        {
            string name = device.Kind.ToString();
            using Tensor wDense = Tensor.FromArray(device, input.W, c.Out, c.In);
            using QuantizedWeight w = Ops.Nf4.Quantize(wDense, QuantType.Nf4, c.BlockSize, c.Nested);
            float[] deq = ReferenceWeight(w);
            var reference = Reference.LoraForward(c.M, c.In, c.Out, c.R, input.X, deq, input.Bias, input.A, input.B, Scale, c.Dropout, DropoutSeed);
            var plain = Reference.LoraForward(c.M, c.In, c.Out, c.R, input.X, deq, input.Bias, input.A, new float[input.B.Length], 0f, 0f, 0);
            Expect.NotVacuous("y reference", reference.Y);

            using Tensor x = Tensor.FromArray(device, input.X, c.DType, c.M, c.In);
            using Tensor bias = Tensor.FromArray(device, input.Bias, c.DType, c.Out);
            using Tensor a = Tensor.FromArray(device, input.A, c.DType, c.R, c.In);
            using Tensor b = Tensor.FromArray(device, input.B, c.DType, c.Out, c.R);

            using Tensor baseY = Ops.Nf4.Matmul(x, w, bias);
            Assert.That(baseY.DType, Is.EqualTo(c.DType));
            float[] baseValues = baseY.ToArray();
            double[] baseBound = Tolerance.QuantizedBaseBounds(plain.Y, plain.YAbs, c.In + 1, c.DType);
            Expect.Close($"{name} matmul", baseValues, plain.Y, baseBound);

            var (yTensor, uTensor) = Ops.Qlora.Forward(x, w, bias, a, b, Scale, c.Dropout, DropoutSeed);
            using (yTensor)
            using (uTensor)
            {
                float[] y = yTensor.ToArray(), u = uTensor.ToArray();
                Expect.Close($"{name} u", u, reference.U, Tolerance.Bounds(reference.U, reference.UAbs, c.In + 1, DType.F32));
                double[] yBound = Tolerance.QuantizedBaseBounds(reference.Y, reference.YAbs, 2 * c.In + c.R + 3, c.DType);
                Expect.Close($"{name} y", y, reference.Y, yBound);
                if (firstY is null)
                {
                    firstY = y;
                    firstBase = baseValues;
                }
                else
                {
                    Expect.Agree("simt vs cpu y", firstY, y, yBound);
                    Expect.Agree("simt vs cpu matmul", firstBase!, baseValues, baseBound);
                }
            }
        }
    }

    /// <summary>Qlora.Backward on each device against the reference.</summary>
    internal static void CheckBackward(Nf4Case c, params Device[] devices)
    {
        Inputs input = MakeInputs(c);
        foreach (Device device in devices)
        {
            string name = device.Kind.ToString();
            using Tensor wDense = Tensor.FromArray(device, input.W, c.Out, c.In);
            using QuantizedWeight w = Ops.Nf4.Quantize(wDense, QuantType.Nf4, c.BlockSize, c.Nested);
            float[] deq = ReferenceWeight(w);
            using Tensor x = Tensor.FromArray(device, input.X, c.DType, c.M, c.In);
            using Tensor a = Tensor.FromArray(device, input.A, c.DType, c.R, c.In);
            using Tensor b = Tensor.FromArray(device, input.B, c.DType, c.Out, c.R);
            using Tensor dy = Tensor.FromArray(device, input.Dy, c.DType, c.M, c.Out);
            var forward = Reference.LoraForward(c.M, c.In, c.Out, c.R, input.X, deq, null, input.A, input.B, Scale, c.Dropout, DropoutSeed);
            float[] uValues = Array.ConvertAll(forward.U, v => (float)v);
            using Tensor u = Tensor.FromArray(device, uValues, c.M, c.R);
            var reference = Reference.LoraBackward(c.M, c.In, c.Out, c.R, input.X, deq, input.A, input.B, uValues, input.Dy, Scale, c.Dropout, DropoutSeed);
            Expect.NotVacuous("dx reference", reference.Dx);

            var (dx, dA, dB) = Ops.Qlora.Backward(x, w, a, b, u, dy, Scale, c.Dropout, DropoutSeed);
            using (dx)
            using (dA)
            using (dB)
            {
                Expect.Close($"{name} dx", dx!.ToArray(), reference.Dx,
                             Tolerance.QuantizedBaseBounds(reference.Dx, reference.DxAbs, 2 * c.Out + c.R + 3, c.DType));
                Expect.Close($"{name} dA", dA!.ToArray(), reference.DA, Tolerance.Bounds(reference.DA, reference.DAAbs, c.Out + c.M + 3, c.DType));
                Expect.Close($"{name} dB", dB!.ToArray(), reference.DB, Tolerance.Bounds(reference.DB, reference.DBAbs, c.M + 2, c.DType));
            }
        }
    }
}
