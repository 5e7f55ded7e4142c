namespace LoraKernels.Tests.SegmentedAdapters;

/// <summary>
/// One segmented case: M rows, a dense base (or a base per adapter when <see cref="Grouped"/>), n adapters of
/// rank r, and a segment table of the given layout.
/// Layouts: "random" (segments of 0..5 rows, empty ones included, some rows in no segment, some segments
/// with adapter -1, the table shuffled: any order is allowed), "perrow" (every row its own segment and,
/// up to n, its own adapter: decode), "long" (one segment over 70 rows: past one 64-row tile), "single"
/// (one adapter for the whole batch). Row 0 always has an adapter, so no reference is all base.
/// </summary>
public sealed record SegmentedCase(int M, int In, int Out, int R, int Adapters, string Layout, bool Grouped, DType DType)
{
    public override string ToString() =>
        $"M{M}_in{In}_out{Out}_r{R}_n{Adapters}_{Layout}_{(Grouped ? "grouped" : "dense")}_{DType}";
}

/// <summary>The inputs of a case (rounded through its dtype) and the double-precision reference of each op.</summary>
internal sealed class SegmentedData
{
    public SegmentedData(SegmentedCase c)
    {
        Case = c;
        var data = new TestData(TestData.SeedFor(c.ToString()));
        int bases = c.Grouped ? c.Adapters : 1;
        // Magnitudes keep outputs O(1), as in trained layers: W0 and A ~ 1/√in, B ~ 1/√r.
        X = data.NonZero(c.M * c.In, 1f, c.DType);
        W0 = data.NonZero(bases * c.Out * c.In, 1f / MathF.Sqrt(c.In), c.DType);
        Bias = c.Grouped ? null : data.NonZero(c.Out, 0.5f, c.DType);
        A = data.NonZero(c.Adapters * c.R * c.In, 1f / MathF.Sqrt(c.In), c.DType);
        B = data.NonZero(c.Adapters * c.Out * c.R, 1f / MathF.Sqrt(c.R), c.DType);
        Scales = data.NonZero(c.Adapters, 2f);
        Dy = data.NonZero(c.M * c.Out, 1f, c.DType);
        Segments = MakeSegments(data, c);
        Table = SegmentTable.FromSegments(c.M, c.Adapters, Segments);
    }

    public SegmentedCase Case { get; }
    public float[] X { get; }
    public float[] W0 { get; }
    public float[]? Bias { get; }
    public float[] A { get; }
    public float[] B { get; }
    public float[] Scales { get; }
    public float[] Dy { get; }
    public Segment[] Segments { get; }
    public SegmentTable Table { get; }

    public float[] AdapterA(int a) => A[(a * Case.R * Case.In)..((a + 1) * Case.R * Case.In)];
    public float[] AdapterB(int a) => B[(a * Case.Out * Case.R)..((a + 1) * Case.Out * Case.R)];
    public float[] BaseOf(int a) => Case.Grouped ? W0[(a * Case.Out * Case.In)..((a + 1) * Case.Out * Case.In)] : W0;
    public float[] Rows(float[] values, int start, int length, int width) => values[(start * width)..((start + length) * width)];

    /// <summary>u, y and their Σ|terms|: each row through the single-adapter LoRA reference with its adapter's slices (the base alone without one).</summary>
    public Reference.ForwardResult Forward()
    {
        SegmentedCase c = Case;
        var u = new double[c.M * c.R];
        var uAbs = new double[c.M * c.R];
        var y = new double[c.M * c.Out];
        var yAbs = new double[c.M * c.Out];
        for (int m = 0; m < c.M; m++)
        {
            int a = Table.RowAdapters[m], r = a >= 0 ? c.R : 0;
            var row = Reference.LoraForward(1, c.In, c.Out, r, Rows(X, m, 1, c.In), BaseOf(Math.Max(a, 0)), Bias,
                                            a >= 0 ? AdapterA(a) : [], a >= 0 ? AdapterB(a) : [], a >= 0 ? Scales[a] : 0f, 0f, 0);
            row.U.CopyTo(u, m * c.R);
            row.UAbs.CopyTo(uAbs, m * c.R);
            row.Y.CopyTo(y, m * c.Out);
            row.YAbs.CopyTo(yAbs, m * c.Out);
        }
        return new Reference.ForwardResult(u, uAbs, y, yAbs);
    }

    /// <summary>dx per row, and dA, dB per adapter summed over its rows (with Σ|terms|), from the single-adapter LoRA reference.</summary>
    public Reference.BackwardResult Backward(float[] u)
    {
        SegmentedCase c = Case;
        var dx = new double[c.M * c.In];
        var dxAbs = new double[c.M * c.In];
        var dA = new double[c.Adapters * c.R * c.In];
        var dAAbs = new double[dA.Length];
        var dB = new double[c.Adapters * c.Out * c.R];
        var dBAbs = new double[dB.Length];
        for (int m = 0; m < c.M; m++)
        {
            int a = Table.RowAdapters[m], r = a >= 0 ? c.R : 0;
            var row = Reference.LoraBackward(1, c.In, c.Out, r, Rows(X, m, 1, c.In), BaseOf(Math.Max(a, 0)),
                                             a >= 0 ? AdapterA(a) : [], a >= 0 ? AdapterB(a) : [], a >= 0 ? Rows(u, m, 1, c.R) : [],
                                             Rows(Dy, m, 1, c.Out), a >= 0 ? Scales[a] : 0f, 0f, 0);
            row.Dx.CopyTo(dx, m * c.In);
            row.DxAbs.CopyTo(dxAbs, m * c.In);
            if (a < 0) continue;
            Accumulate(dA, row.DA, a * c.R * c.In);
            Accumulate(dAAbs, row.DAAbs, a * c.R * c.In);
            Accumulate(dB, row.DB, a * c.Out * c.R);
            Accumulate(dBAbs, row.DBAbs, a * c.Out * c.R);
        }
        return new Reference.BackwardResult(dx, dxAbs, dA, dAAbs, dB, dBAbs);
    }

    private static void Accumulate(double[] target, double[] values, int offset)
    {
        for (int i = 0; i < values.Length; i++) target[offset + i] += values[i];
    }

    private static Segment[] MakeSegments(TestData data, SegmentedCase c)
    {
        var segments = new List<Segment>();
        int Next(int bound) => (int)(data.NextDouble() * bound);
        int Adapter() => c.Grouped ? Next(c.Adapters) : Next(c.Adapters + 1) - 1;
        switch (c.Layout)
        {
            case "single":
                segments.Add(new Segment(0, c.M, 0));
                break;
            case "perrow":
                for (int m = 0; m < c.M; m++) segments.Add(new Segment(m, 1, m % c.Adapters));
                break;
            case "long":
                segments.Add(new Segment(0, 1, 0));
                segments.Add(new Segment(1, c.M - 1, 1 % c.Adapters));
                segments.Add(new Segment(c.M, 0, Adapter()));
                break;
            case "random":
                for (int cursor = 0; cursor < c.M;)
                {
                    if (Next(5) == 0) segments.Add(new Segment(cursor, 0, Adapter()));
                    if (!c.Grouped && cursor > 0 && Next(4) == 0)
                    {
                        cursor++;  // a row in no segment
                        continue;
                    }
                    int length = Math.Min(c.M - cursor, 1 + Next(5)), adapter = Adapter();
                    segments.Add(new Segment(cursor, length, cursor == 0 ? Math.Max(adapter, 0) : adapter));
                    cursor += length;
                }
                for (int i = segments.Count - 1; i > 0; i--)
                {
                    int j = Next(i + 1);
                    (segments[i], segments[j]) = (segments[j], segments[i]);
                }
                break;
            default:
                throw new ArgumentException($"unknown layout {c.Layout}");
        }
        return segments.ToArray();
    }
}
