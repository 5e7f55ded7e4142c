// The low-rank delta s·B·A that LoRA, rsLoRA, LoRA-FA, QLoRA and DoRA add to their frozen base
// (REFERENCE.md section 1): lora_A [r, in] starts U(±1/sqrt(in)) (PEFT's kaiming_uniform with
// a = sqrt(5)) drawn from the library's SplitMix64 generator seeded with `seed`, lora_B [out, r]
// starts at zero, so a new delta adds nothing, and the branch is scaled by s = alpha/r, or
// alpha/sqrt(r) with rsLoRA. Dropout acts on the branch's input only, with a fresh seed for every
// training forward drawn from a stream apart from the initialisation's. Kept in one place so that
// every layer built from equal seeds starts from the same A and draws the same dropout seeds.
using LoraKernels.Autograd;
using LoraKernels.Runtime;

namespace LoraKernels.Layers;

internal sealed class LowRankDelta : IDisposable
{
    // Separates the dropout seed stream from the initialisation stream drawn from the same seed.
    private const ulong DropoutStream = 0xD1B54A32D192ED03ul;

    private readonly SplitMix64 _dropoutSeeds;

    /// <summary>
    /// A and B for a [out, in] base; A trains unless <paramref name="trainA"/> is false (LoRA-FA freezes it).
    /// Call <see cref="CheckArguments(string, int, float, float, long, long)"/> first; nothing is left allocated if B fails.
    /// </summary>
    public LowRankDelta(Device device, DType dtype, int r, float alpha, float dropout, bool useRsLora, ulong seed,
                        int inFeatures, int outFeatures, bool trainA = true, LoraInit init = LoraInit.Default)
    {
        Rank = r;
        Alpha = alpha;
        Dropout = dropout;
        UseRsLora = useRsLora;
        Scale = ScaleOf(alpha, r, useRsLora);
        _dropoutSeeds = new SplitMix64(seed ^ DropoutStream);
        float[] initialA = init switch
        {
            LoraInit.Default => InitialA(seed, r, inFeatures),
            LoraInit.Gaussian => GaussianA(seed, r, inFeatures),
            _ => throw new ArgumentException(
                $"init {init} replaces the base weight too, which a layer constructor cannot do; build the layer with Pissa.CreateLayer.", nameof(init)),
        };
        A = new Parameter("lora_A", Tensor.FromArray(device, initialA, dtype, r, inFeatures), requiresGrad: trainA);
        try
        {
            B = new Parameter("lora_B", Tensor.Zeros(device, dtype, outFeatures, r));
        }
        catch
        {
            A.Dispose();
            throw;
        }
    }

    public int Rank { get; }
    public float Alpha { get; }
    public float Dropout { get; }
    public bool UseRsLora { get; }

    /// <summary>s = alpha/r, or alpha/sqrt(r) with rsLoRA.</summary>
    public float Scale { get; }

    /// <summary>lora_A [r, in].</summary>
    public Parameter A { get; }

    /// <summary>lora_B [out, r].</summary>
    public Parameter B { get; }

    /// <summary>The dropout probability and seed of the next forward: (Dropout, a fresh seed) while training, else (0, 0).</summary>
    public (float P, ulong Seed) NextDropout(bool training) => training && Dropout > 0f ? (Dropout, NextDropoutSeed()) : (0f, 0ul);

    /// <summary>The next seed of the dropout stream (what the next training forward with dropout uses).</summary>
    public ulong NextDropoutSeed() => _dropoutSeeds.NextUInt64();

    public void Dispose()
    {
        A.Dispose();
        B.Dispose();
    }

    /// <summary>Throws unless r ≥ 1, alpha is finite and the dropout probability is in [0, 1).</summary>
    public static void CheckArguments(string op, int r, float alpha, float dropout)
    {
        if (r < 1) throw new ArgumentOutOfRangeException(nameof(r), r, $"{op}: the rank r must be >= 1.");
        if (!float.IsFinite(alpha)) throw new ArgumentOutOfRangeException(nameof(alpha), alpha, $"{op}: alpha must be finite.");
        Ops.Checks.DropoutProbability(op, nameof(dropout), dropout);
    }

    /// <summary><see cref="CheckArguments(string, int, float, float)"/>, and A [r, in] and B [out, r] within 32-bit indexing, for a [out, in] base.</summary>
    public static void CheckArguments(string op, int r, float alpha, float dropout, long outFeatures, long inFeatures)
    {
        CheckArguments(op, r, alpha, dropout);
        if ((long)r * inFeatures > Ops.Checks.MaxElements || (long)r * outFeatures > Ops.Checks.MaxElements)
            throw new ArgumentOutOfRangeException(nameof(r), r,
                $"{op}: rank r = {r} makes A [r, in] = [{r}, {inFeatures}] or B [out, r] = [{outFeatures}, {r}] exceed 2^31 - 1 elements, " +
                "the kernels' 32-bit indexing (a useful rank is at most min(in, out)).");
    }

    /// <summary>s = alpha/r, or alpha/sqrt(r) with rsLoRA.</summary>
    public static float ScaleOf(float alpha, int r, bool useRsLora) => useRsLora ? alpha / MathF.Sqrt(r) : alpha / r;

    /// <summary>A's initial values for init_lora_weights="gaussian": N(0, (1/r)²), row-major [r, in], from SplitMix64(seed).</summary>
    public static float[] GaussianA(ulong seed, int r, int inFeatures)
    {
        float[] values = new float[(long)r * inFeatures];
        new SplitMix64(seed).FillNormal(values, 1.0 / r);
        return values;
    }

    /// <summary>A's initial values: U(±1/sqrt(in)), row-major [r, in], from SplitMix64(seed).</summary>
    public static float[] InitialA(ulong seed, int r, int inFeatures)
    {
        var generator = new SplitMix64(seed);
        float bound = 1f / MathF.Sqrt(inFeatures);
        float[] values = new float[(long)r * inFeatures];
        for (int i = 0; i < values.Length; i++) values[i] = generator.NextUniform(bound);
        return values;
    }
}
