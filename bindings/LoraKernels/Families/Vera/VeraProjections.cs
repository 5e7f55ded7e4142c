// VeRA's shared frozen projections (REFERENCE.md §3.2): one pair per model, vera_A [r, max_in] and
// vera_B [max_out, r], sized from the largest in/out of all adapted layers; layer l reads the
// top-left slices A_l = vera_A[:, :in_l] and B_l = vera_B[:out_l, :]. Values as PEFT's
// kaiming-uniform variant, U(±sqrt(6/fan_in)) with fan_in = max_in for vera_A and r for vera_B,
// drawn vera_A first, then vera_B, from LoraKernels' SplitMix64 seeded with projection_prng_key
// (reproducible within LoraKernels, not PyTorch's draws: REFERENCE.md §10.1 and §11; FromTensors
// loads saved projections, e.g. a PEFT checkpoint's base_model.vera_A / vera_B, to match it). Never trained, never counted as parameters. The layers
// that read them do not own them: dispose the projections after the last layer that uses them.
using LoraKernels.Runtime;

namespace LoraKernels.Layers;

public sealed class VeraProjections : IDisposable
{
    private VeraProjections(Tensor veraA, Tensor veraB, ulong projectionPrngKey)
    {
        VeraA = veraA;
        VeraB = veraB;
        ProjectionPrngKey = projectionPrngKey;
    }

    /// <summary>vera_A [r, max_in], frozen.</summary>
    public Tensor VeraA { get; }

    /// <summary>vera_B [max_out, r], frozen.</summary>
    public Tensor VeraB { get; }

    public ulong ProjectionPrngKey { get; }
    public Device Device => VeraA.Device;
    public DType DType => VeraA.DType;
    public int Rank => (int)VeraA.Shape[0];
    public int MaxIn => (int)VeraA.Shape[1];
    public int MaxOut => (int)VeraB.Shape[0];

    /// <summary>Draws vera_A [r, maxIn] ~ U(±sqrt(6/maxIn)) and then vera_B [maxOut, r] ~ U(±sqrt(6/r)) from SplitMix64(projectionPrngKey).</summary>
    public static VeraProjections Create(Device device, int r, int maxIn, int maxOut, ulong projectionPrngKey = 0,
                                         DType dtype = DType.F32)
    {
        const string op = "VeraProjections.Create";
        ArgumentNullException.ThrowIfNull(device);
        if (r < 1) throw new ArgumentOutOfRangeException(nameof(r), r, $"{op}: the rank r must be >= 1.");
        if (maxIn < 1) throw new ArgumentOutOfRangeException(nameof(maxIn), maxIn, $"{op}: maxIn must be >= 1.");
        if (maxOut < 1) throw new ArgumentOutOfRangeException(nameof(maxOut), maxOut, $"{op}: maxOut must be >= 1.");
        if ((long)r * maxIn > Ops.Checks.MaxElements || (long)r * maxOut > Ops.Checks.MaxElements)
            throw new ArgumentException($"{op}: [{r}, {maxIn}] or [{maxOut}, {r}] is over 2^31 - 1 elements.");

        var generator = new SplitMix64(projectionPrngKey);
        float[] a = Uniform(generator, (long)r * maxIn, MathF.Sqrt(6f / maxIn));
        float[] b = Uniform(generator, (long)maxOut * r, MathF.Sqrt(6f / r));
        Tensor veraA = Tensor.FromArray(device, a, dtype, r, maxIn);
        try
        {
            return new VeraProjections(veraA, Tensor.FromArray(device, b, dtype, maxOut, r), projectionPrngKey);
        }
        catch
        {
            veraA.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Projections with saved values (a copy: the caller keeps <paramref name="veraA"/> [r, maxIn] and
    /// <paramref name="veraB"/> [maxOut, r], which must share r, dtype and device and be finite), e.g. PEFT's
    /// base_model.vera_A / vera_B saved with save_projection=True.
    /// </summary>
    public static VeraProjections FromTensors(Tensor veraA, Tensor veraB, ulong projectionPrngKey = 0)
    {
        const string op = "VeraProjections.FromTensors";
        Ops.Checks.Alive(veraA, op, nameof(veraA));
        Ops.Checks.Alive(veraB, op, nameof(veraB));
        var (r, _) = Ops.Checks.Matrix(op, nameof(veraA), veraA, "r, max_in");
        Ops.Checks.Matrix(op, nameof(veraB), veraB, "max_out, r");
        if (veraB.Shape[1] != r || veraB.DType != veraA.DType || !ReferenceEquals(veraB.Device, veraA.Device))
            throw new ArgumentException(
                $"{op}: veraB must be [max_out, r = {r}] with veraA's dtype and device ({veraA.Describe()}), got {veraB.Describe()}", nameof(veraB));
        const string why = "frozen projections holding NaN or Inf make every VeRA layer's output non-finite.";
        Ops.Checks.AllFinite(op, nameof(veraA), veraA, why);
        Ops.Checks.AllFinite(op, nameof(veraB), veraB, why);
        Tensor a = veraA.Clone();
        try
        {
            return new VeraProjections(a, veraB.Clone(), projectionPrngKey);
        }
        catch
        {
            a.Dispose();
            throw;
        }
    }

    /// <summary>Projections for every layer of <paramref name="shapes"/> (PEFT's _find_dim: the element-wise max of in and out).</summary>
    public static VeraProjections ForLayers(Device device, IEnumerable<(int In, int Out)> shapes, int r,
                                            ulong projectionPrngKey = 0, DType dtype = DType.F32)
    {
        ArgumentNullException.ThrowIfNull(shapes);
        int maxIn = 0, maxOut = 0;
        foreach (var (inFeatures, outFeatures) in shapes)
        {
            if (inFeatures < 1 || outFeatures < 1)
                throw new ArgumentException($"VeraProjections.ForLayers: a layer has (in, out) = ({inFeatures}, {outFeatures}); both must be >= 1.", nameof(shapes));
            maxIn = Math.Max(maxIn, inFeatures);
            maxOut = Math.Max(maxOut, outFeatures);
        }
        if (maxIn == 0) throw new ArgumentException("VeraProjections.ForLayers: no layer shapes given.", nameof(shapes));
        return Create(device, r, maxIn, maxOut, projectionPrngKey, dtype);
    }

    private static float[] Uniform(SplitMix64 generator, long count, float bound)
    {
        float[] values = new float[count];
        for (long i = 0; i < count; i++) values[i] = generator.NextUniform(bound);
        return values;
    }

    public void Dispose()
    {
        VeraA.Dispose();
        VeraB.Dispose();
    }
}
