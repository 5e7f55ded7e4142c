using System.Globalization;

namespace LoraKernels.Tests.Parity;

/// <summary>One LoRA problem size: M tokens, in and out features, rank r.</summary>
public readonly record struct LoraShape(int M, int In, int Out, int R)
{
    public override string ToString() => $"M{M}_in{In}_out{Out}_r{R}";
}

/// <summary>A LoRA parity case: shape, storage dtype, bias on/off, dropout probability.</summary>
public sealed record LoraCase(LoraShape Shape, DType DType, bool Bias, float Dropout)
{
    /// <summary>PEFT's scale alpha/r with alpha = 16, so r = 1 amplifies the LoRA branch 16× and r = 64 damps it.</summary>
    public float Scale => 16f / Shape.R;

    /// <summary>The dropout seed; fixed, and different from the data seeds.</summary>
    public ulong DropoutSeed => 0xD20F_0005ul + (ulong)Shape.M;

    public string Describe(string op) => string.Create(CultureInfo.InvariantCulture,
        $"{op}_{DType}_{Shape}{(Bias ? "_bias" : "")}_drop{Dropout}");
}

/// <summary>
/// The LoRA parity cases. Sizes cover M = 1 (decode), 7, 16 (the decode/tiled boundary of
/// kernels/lora.cu), 33 and 130 (two 64-row tiles and a remainder), in/out that are multiples of
/// no tile (97×53 and 33×130: 16-deep K slices, 64-wide tiles, 4- and 8-wide vectors), ranks
/// 1, 8, 16, 64 (64 fills a tile exactly), one `in` past the decode kernel's 2048-column chunk,
/// F32 and BF16, bias on and off, dropout 0 and 0.25: every combination (the emulator runs
/// them all in seconds).
/// </summary>
internal static class LoraCases
{
    private static readonly (int In, int Out)[] Features = [(97, 53), (33, 130)];
    private static readonly int[] Tokens = [1, 7, 16, 33, 130];
    private static readonly int[] Ranks = [1, 8, 16, 64];

    public static IEnumerable<LoraShape> Shapes()
    {
        foreach (int m in Tokens)
            foreach (var (inFeatures, outFeatures) in Features)
                foreach (int r in Ranks)
                    yield return new LoraShape(m, inFeatures, outFeatures, r);
        // More than one 2048-column chunk of x staged by the decode kernel (M <= 16).
        yield return new LoraShape(3, 2053, 37, 8);
    }

    public static IEnumerable<LoraCase> All()
    {
        foreach (LoraShape shape in Shapes())
            foreach (DType dtype in new[] { DType.F32, DType.BF16 })
                foreach (bool bias in new[] { false, true })
                    foreach (float dropout in new[] { 0f, 0.25f })
                        yield return new LoraCase(shape, dtype, bias, dropout);
    }

    /// <summary>Cases for ops without bias (backward, merge): the bias flag is fixed off.</summary>
    public static IEnumerable<LoraCase> WithoutBias() => All().Where(c => !c.Bias);

    public static IEnumerable<TestCaseData> Named(string op, IEnumerable<LoraCase> cases) =>
        cases.Select(c => new TestCaseData(c).SetName(c.Describe(op)));
}

/// <summary>The case lists the parity fixtures run (shared by the CPU/emulator and the CUDA fixtures).</summary>
internal static class LoraCaseSources
{
    public static IEnumerable<TestCaseData> Forward() => LoraCases.Named("Forward", LoraCases.All());

    public static IEnumerable<TestCaseData> Backward() => LoraCases.Named("Backward", LoraCases.WithoutBias());

    /// <summary>One gradient at a time (the others must come back null), on both kernel paths and dtypes, with dropout.</summary>
    public static IEnumerable<TestCaseData> BackwardSingleOutput()
    {
        foreach (LoraGradients output in new[] { LoraGradients.Dx, LoraGradients.DA, LoraGradients.DB })
            foreach (DType dtype in new[] { DType.F32, DType.BF16 })
                foreach (LoraShape shape in new[] { new LoraShape(7, 97, 53, 8), new LoraShape(33, 33, 130, 16) })
                {
                    var c = new LoraCase(shape, dtype, Bias: false, Dropout: 0.25f);
                    yield return new TestCaseData(c, output).SetName(c.Describe($"Backward{output}Only"));
                }
    }

    /// <summary>
    /// The shapes a GPU run adds (the emulator's cases above stay small): `in` a multiple of 8, so
    /// decode takes its 16-byte vector path, M on both sides of every path switch (1 and 16 decode,
    /// 17 and 512 tiled, 512 several 64-row tiles and a whole tensor-core tile count), both dtypes.
    /// </summary>
    public static IEnumerable<TestCaseData> GpuForward() =>
        LoraCases.Named("GpuForward", GpuCases(bias: true));

    public static IEnumerable<TestCaseData> GpuBackward() =>
        LoraCases.Named("GpuBackward", GpuCases(bias: false));

    private static IEnumerable<LoraCase> GpuCases(bool bias) =>
        from m in new[] { 1, 16, 17, 512 }
        from features in new[] { (In: 256, Out: 72), (In: 1024, Out: 136) }
        from r in new[] { 8, 16 }
        from dtype in new[] { DType.F32, DType.BF16 }
        from dropout in new[] { 0f, 0.25f }
        select new LoraCase(new LoraShape(m, features.In, features.Out, r), dtype, bias, dropout);

    /// <summary>Merge/unmerge depend on (out, in, r) and the dtype only.</summary>
    public static IEnumerable<TestCaseData> Merge() =>
        LoraCases.Shapes().Select(s => s with { M = 1 }).Distinct()
            .SelectMany(s => new[] { DType.F32, DType.BF16 }.Select(dtype => new LoraCase(s, dtype, Bias: false, Dropout: 0f)))
            .Select(c => new TestCaseData(c).SetName(string.Create(CultureInfo.InvariantCulture,
                $"MergeUnmerge_{c.DType}_out{c.Shape.Out}_in{c.Shape.In}_r{c.Shape.R}")));
}
