namespace LoraKernels.Tests.Parity;

/// <summary>Which gradients a backward case asks for.</summary>
[Flags]
public enum LoraGradients { Dx = 1, DA = 2, DB = 4, All = Dx | DA | DB }

/// <summary>
/// The LoRA parity checks, written once and run on any list of devices: each device is checked
/// against the double-precision reference, and every device after the first against the first.
/// </summary>
internal static class LoraParity
{
    /// <summary>Inputs of one case, already rounded through the case's dtype.</summary>
    private sealed record Inputs(float[] X, float[] W0, float[]? Bias, float[] A, float[] B);

    private static Inputs MakeInputs(LoraCase c, TestData data)
    {
        LoraShape s = c.Shape;
        // Magnitudes keep every output O(1): W0 and A ~ 1/√in, B ~ 1/√r, as trained layers are.
        return new Inputs(
            X: data.NonZero(s.M * s.In, 1f, c.DType),
            W0: data.NonZero(s.Out * s.In, 1f / MathF.Sqrt(s.In), c.DType),
            Bias: c.Bias ? data.NonZero(s.Out, 0.5f, c.DType) : null,
            A: data.NonZero(s.R * s.In, 1f / MathF.Sqrt(s.In), c.DType),
            B: data.NonZero(s.Out * s.R, 1f / MathF.Sqrt(s.R), c.DType));
    }

    public static void Forward(LoraCase c, params Device[] devices) => Forward(c, LoraForwardPath.Fused, devices);

    /// <summary>
    /// The forward with <paramref name="path"/> on every device but the CPU (which runs the fused kernels).
    /// The vendor GEMM sequence rounds as PEFT does with bf16 tensors: y after x·W0ᵀ and after the bias, and u
    /// before its product with B, three more roundings of terms no larger than Σ|terms|: 3·2⁻⁸·Σ|terms| for BF16.
    /// </summary>
    public static void Forward(LoraCase c, LoraForwardPath path, params Device[] devices)
    {
        LoraShape s = c.Shape;
        var data = new TestData(TestData.SeedFor(c.Describe("Forward")));
        Inputs input = MakeInputs(c, data);
        var reference = Reference.LoraForward(s.M, s.In, s.Out, s.R, input.X, input.W0, input.Bias, input.A, input.B,
                                              c.Scale, c.Dropout, c.DropoutSeed);
        Expect.NotVacuous("u reference", reference.U);
        Expect.NotVacuous("y reference", reference.Y);
        // u sums `in` products of three factors (x, its dropout factor, A): K = in + 1.
        double[] uBound = Tolerance.Bounds(reference.U, reference.UAbs, s.In + 1, DType.F32);
        // y chains u's reduction with r more products, the scale, in products of x W0 and the bias.
        double[] yBound = Tolerance.Bounds(reference.Y, reference.YAbs, s.In + 1 + s.R + 1 + s.In + 1, c.DType);
        if (path == LoraForwardPath.VendorGemm && c.DType == DType.BF16)
            for (int i = 0; i < yBound.Length; i++) yBound[i] += 3 * Tolerance.Bf16Rounding * reference.YAbs[i];

        float[]? firstY = null, firstU = null;
        string? firstName = null;
        foreach (Device device in devices)
        {
            string name = device.Kind.ToString();
            using var x = Tensor.FromArray(device, input.X, c.DType, s.M, s.In);
            using var w0 = Tensor.FromArray(device, input.W0, c.DType, s.Out, s.In);
            using var bias = input.Bias is null ? null : Tensor.FromArray(device, input.Bias, c.DType, s.Out);
            using var a = Tensor.FromArray(device, input.A, c.DType, s.R, s.In);
            using var b = Tensor.FromArray(device, input.B, c.DType, s.Out, s.R);
            var (yTensor, uTensor) = Lora.Forward(x, w0, bias, a, b, c.Scale, c.Dropout, c.DropoutSeed,
                                                  device.Kind == DeviceKind.Cpu ? LoraForwardPath.Fused : path);
            using (yTensor)
            using (uTensor)
            {
                AssertTensor($"{name} y", yTensor, c.DType, s.M, s.Out);
                AssertTensor($"{name} u", uTensor, DType.F32, s.M, s.R);
                float[] y = yTensor.ToArray(), u = uTensor.ToArray();
                Expect.Close($"{name} u", u, reference.U, uBound);
                Expect.Close($"{name} y", y, reference.Y, yBound);
                if (firstY is null)
                {
                    (firstY, firstU, firstName) = (y, u, name);
                }
                else
                {
                    Expect.Agree($"{name} u vs {firstName}", firstU!, u, uBound);
                    Expect.Agree($"{name} y vs {firstName}", firstY, y, yBound);
                }
            }
        }
    }

    public static void Backward(LoraCase c, LoraGradients wanted, params Device[] devices)
    {
        LoraShape s = c.Shape;
        var data = new TestData(TestData.SeedFor(c.Describe("Backward")));
        Inputs input = MakeInputs(c, data);
        float[] dy = data.NonZero(s.M * s.Out, 1f, c.DType);
        // u as the forward would have kept it (fp32), given to every device and the reference alike.
        float[] u = Array.ConvertAll(
            Reference.LoraForward(s.M, s.In, s.Out, s.R, input.X, input.W0, null, input.A, input.B, c.Scale, c.Dropout, c.DropoutSeed).U,
            v => (float)v);
        var reference = Reference.LoraBackward(s.M, s.In, s.Out, s.R, input.X, input.W0, input.A, input.B, u, dy,
                                               c.Scale, c.Dropout, c.DropoutSeed);
        Expect.NotVacuous("dx reference", reference.Dx);
        Expect.NotVacuous("dA reference", reference.DA);
        Expect.NotVacuous("dB reference", reference.DB);
        // du = scale·dy B (K = out, + scale); dB = scale·dyᵀ u (K = M + 1);
        // dA = duᵀ dropout(x) (K = out + 1 + M + 1); dx = dy W0 + f·du A (K = out + (out + 1 + r + 1)).
        double[] dBBound = Tolerance.Bounds(reference.DB, reference.DBAbs, s.M + 1, c.DType);
        double[] dABound = Tolerance.Bounds(reference.DA, reference.DAAbs, s.Out + 1 + s.M + 1, c.DType);
        double[] dxBound = Tolerance.Bounds(reference.Dx, reference.DxAbs, s.Out + s.Out + 1 + s.R + 1, c.DType);

        var first = new Dictionary<string, float[]>();
        string? firstName = null;
        foreach (Device device in devices)
        {
            string name = device.Kind.ToString();
            using var x = Tensor.FromArray(device, input.X, c.DType, s.M, s.In);
            using var w0 = Tensor.FromArray(device, input.W0, c.DType, s.Out, s.In);
            using var a = Tensor.FromArray(device, input.A, c.DType, s.R, s.In);
            using var b = Tensor.FromArray(device, input.B, c.DType, s.Out, s.R);
            using var uTensor = Tensor.FromArray(device, u, DType.F32, s.M, s.R);
            using var dyTensor = Tensor.FromArray(device, dy, c.DType, s.M, s.Out);
            var (dx, dA, dB) = Lora.Backward(x, w0, a, b, uTensor, dyTensor, c.Scale, c.Dropout, c.DropoutSeed,
                                             needDx: wanted.HasFlag(LoraGradients.Dx), needDA: wanted.HasFlag(LoraGradients.DA),
                                             needDB: wanted.HasFlag(LoraGradients.DB));
            using (dx)
            using (dA)
            using (dB)
            {
                Compare("dx", dx, LoraGradients.Dx, s.M, s.In, reference.Dx, dxBound);
                Compare("dA", dA, LoraGradients.DA, s.R, s.In, reference.DA, dABound);
                Compare("dB", dB, LoraGradients.DB, s.Out, s.R, reference.DB, dBBound);
            }
            firstName ??= name;

            void Compare(string what, Tensor? tensor, LoraGradients flag, int rows, int columns, double[] expected, double[] bound)
            {
                if (!wanted.HasFlag(flag))
                {
                    Assert.That(tensor, Is.Null, $"{name} {what} was not requested but was returned");
                    return;
                }
                Assert.That(tensor, Is.Not.Null, $"{name} {what} was requested but not returned");
                AssertTensor($"{name} {what}", tensor!, c.DType, rows, columns);
                float[] values = tensor!.ToArray();
                Expect.Close($"{name} {what}", values, expected, bound);
                if (first.TryGetValue(what, out float[]? firstValues))
                    Expect.Agree($"{name} {what} vs {firstName}", firstValues, values, bound);
                else
                    first[what] = values;
            }
        }
    }

    /// <summary>
    /// Merge then unmerge in place, each against the reference. Unmerge's reference starts from the
    /// device's merged weights, so each op is judged on its own error; together they bound the round trip.
    /// </summary>
    public static void MergeUnmerge(LoraCase c, params Device[] devices)
    {
        LoraShape s = c.Shape;
        var data = new TestData(TestData.SeedFor(c.Describe("Merge")));
        Inputs input = MakeInputs(c, data);
        var (merged, mergedAbs) = Reference.LoraMerge(s.Out, s.In, s.R, input.W0, input.A, input.B, c.Scale);
        Expect.NotVacuous("merged reference", merged);
        // Σ of r products, times scale, plus W: K = r + 2.
        double[] mergeBound = Tolerance.Bounds(merged, mergedAbs, s.R + 2, c.DType);

        float[]? firstMerged = null;
        string? firstName = null;
        foreach (Device device in devices)
        {
            string name = device.Kind.ToString();
            using var w = Tensor.FromArray(device, input.W0, c.DType, s.Out, s.In);
            using var a = Tensor.FromArray(device, input.A, c.DType, s.R, s.In);
            using var b = Tensor.FromArray(device, input.B, c.DType, s.Out, s.R);

            Lora.Merge(w, a, b, c.Scale);
            float[] deviceMerged = w.ToArray();
            Expect.Close($"{name} merge", deviceMerged, merged, mergeBound);
            if (firstMerged is null) (firstMerged, firstName) = (deviceMerged, name);
            else Expect.Agree($"{name} merge vs {firstName}", firstMerged, deviceMerged, mergeBound);

            Lora.Unmerge(w, a, b, c.Scale);
            var (restored, restoredAbs) = Reference.LoraMerge(s.Out, s.In, s.R, deviceMerged, input.A, input.B, -c.Scale);
            Expect.Close($"{name} unmerge", w.ToArray(), restored, Tolerance.Bounds(restored, restoredAbs, s.R + 2, c.DType));
        }
    }

    private static void AssertTensor(string what, Tensor tensor, DType dtype, params long[] shape)
    {
        Assert.That(tensor.DType, Is.EqualTo(dtype), $"{what} dtype");
        Assert.That(tensor.Shape, Is.EqualTo(shape), $"{what} shape");
    }
}
