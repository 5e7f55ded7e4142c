// The rank-r adapter pair that LoraLinear, LoraFaLinear and QloraLinear share (REFERENCE.md section 1):
// lora_A [r, in] starts U(±1/sqrt(in)) (PEFT's kaiming_uniform with a = sqrt(5)) drawn from the
// library's SplitMix64 generator seeded with `seed`, lora_B [out, r] starts at zero, and the branch is
// scaled by s = alpha/r, or alpha/sqrt(r) with rsLoRA. Kept in one place so that the three layers
// built from equal seeds start from the same A and draw the same dropout seeds.
using LoraKernels.Autograd;
using LoraKernels.Runtime;

namespace LoraKernels.Layers;

internal static class RankAdapter
{
    // Separates the dropout seed stream from the initialisation stream drawn from the same seed.
    private const ulong DropoutStream = 0xD1B54A32D192ED03ul;

    /// <summary>Throws unless r ≥ 1, alpha is finite and the dropout probability is in [0, 1).</summary>
    internal static void CheckArguments(string op, int r, float alpha, float dropout)
    {
        if (r < 1) throw new ArgumentOutOfRangeException(nameof(r), r, $"{op}: the rank r must be >= 1.");
        if (!float.IsFinite(alpha)) throw new ArgumentOutOfRangeException(nameof(alpha), alpha, $"{op}: alpha must be finite.");
        Ops.Checks.DropoutProbability(op, nameof(dropout), dropout);
    }

    /// <summary><see cref="CheckArguments(string, int, float, float)"/> and <see cref="CheckSize"/> for a layer of [out, in].</summary>
    internal static void CheckArguments(string op, int r, float alpha, float dropout, long outFeatures, long inFeatures)
    {
        CheckArguments(op, r, alpha, dropout);
        CheckSize(op, r, outFeatures, inFeatures);
    }

    /// <summary>
    /// A [r, in] and B [out, r] must each fit the kernels' 32-bit indexing; a rank beyond that is an
    /// ArgumentOutOfRangeException naming r and the sizes, before anything is allocated.
    /// </summary>
    internal static void CheckSize(string op, int r, long outFeatures, long inFeatures)
    {
        if ((long)r * inFeatures > Ops.Checks.MaxElements || (long)r * outFeatures > Ops.Checks.MaxElements)
            throw new ArgumentOutOfRangeException(nameof(r), r,
                $"{op}: rank r = {r} makes A [r, in] = [{r}, {inFeatures}] or B [out, r] = [{outFeatures}, {r}] exceed 2^31 - 1 elements, " +
                "the kernels' 32-bit indexing (a useful rank is at most min(in, out)).");
    }

    /// <summary>s = alpha/r, or alpha/sqrt(r) with rsLoRA.</summary>
    internal static float Scale(float alpha, int r, bool useRsLora) => useRsLora ? alpha / MathF.Sqrt(r) : alpha / r;

    /// <summary>The generator of per-forward dropout seeds, a stream apart from the initialisation's.</summary>
    internal static SplitMix64 DropoutSeeds(ulong seed) => new(seed ^ DropoutStream);

    /// <summary>A's initial values: U(±1/sqrt(in)), row-major [r, in], from SplitMix64(seed).</summary>
    internal static float[] InitialA(ulong seed, int r, int inFeatures)
    {
        var generator = new SplitMix64(seed);
        float bound = 1f / MathF.Sqrt(inFeatures);
        float[] values = new float[(long)r * inFeatures];
        for (int i = 0; i < values.Length; i++) values[i] = generator.NextUniform(bound);
        return values;
    }

    /// <summary>lora_A's initial tensor [r, in] on <paramref name="device"/> in <paramref name="dtype"/>.</summary>
    internal static Tensor InitialATensor(Device device, DType dtype, int r, int inFeatures, ulong seed) =>
        Tensor.FromArray(device, InitialA(seed, r, inFeatures), dtype, r, inFeatures);

    /// <summary>The trainable lora_A [r, in], initialised as <see cref="InitialA"/>.</summary>
    internal static Parameter CreateA(Device device, DType dtype, int r, int inFeatures, ulong seed) =>
        new("lora_A", InitialATensor(device, dtype, r, inFeatures, seed));

    /// <summary>The trainable lora_B [out, r] = 0, so a new adapter adds nothing to the base.</summary>
    internal static Parameter CreateB(Device device, DType dtype, int r, int outFeatures) =>
        new("lora_B", Tensor.Zeros(device, dtype, outFeatures, r));

    /// <summary>lora_A and lora_B together; nothing is left allocated when B fails.</summary>
    internal static (Parameter A, Parameter B) CreatePair(Device device, DType dtype, int r, int inFeatures, int outFeatures, ulong seed)
    {
        Parameter a = CreateA(device, dtype, r, inFeatures, seed);
        try
        {
            return (a, CreateB(device, dtype, r, outFeatures));
        }
        catch
        {
            a.Dispose();
            throw;
        }
    }
}
