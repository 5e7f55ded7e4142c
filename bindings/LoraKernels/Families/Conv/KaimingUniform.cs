// PEFT's default initialisation of an adapter factor, kaiming_uniform_ with a = √5 (REFERENCE.md §1.4): for a
// tensor whose fan-in (its second dimension times any kernel extents) is F, gain √(1/3) makes the bound 1/√F, so
// the values are U(±1/√F). Drawn from LoraKernels' SplitMix64 (reproducible within LoraKernels, not PyTorch's
// draws: REFERENCE.md §11). The convolution, Kronecker and Tucker adapters draw every random factor here.
using LoraKernels.Runtime;

namespace LoraKernels.Families.Conv;

internal static class KaimingUniform
{
    /// <summary><paramref name="count"/> values U(±1/√<paramref name="fanIn"/>) from <paramref name="generator"/>.</summary>
    public static float[] Draw(SplitMix64 generator, long count, long fanIn)
    {
        float bound = 1f / MathF.Sqrt(fanIn);
        float[] values = new float[count];
        for (long i = 0; i < count; i++) values[i] = generator.NextUniform(bound);
        return values;
    }
}
