// The library's seeded random generator (REFERENCE.md section 11: distributions and bounds as PEFT,
// values reproducible within LoraKernels, not bit-equal to PyTorch's draws). SplitMix64
// (Steele, Lea, Flood 2014): a 64-bit counter advanced by the golden-ratio constant and mixed by
// the same finaliser kernels/common.cuh uses for dropout. Floats take the top 24 bits, so every
// value is an exact multiple of 2^-24 in [0, 1).
namespace LoraKernels.Runtime;

internal sealed class SplitMix64
{
    private ulong _state;

    public SplitMix64(ulong seed) => _state = seed;

    public ulong NextUInt64()
    {
        ulong z = _state += 0x9E3779B97F4A7C15ul;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ul;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBul;
        return z ^ (z >> 31);
    }

    /// <summary>Uniform in [0, 1), a multiple of 2^-24.</summary>
    public float NextSingle() => (NextUInt64() >> 40) * (1.0f / 16777216.0f);

    /// <summary>Uniform in [-bound, bound).</summary>
    public float NextUniform(float bound) => (2.0f * NextSingle() - 1.0f) * bound;

    /// <summary>
    /// Fills <paramref name="values"/> with N(0, std²) draws, two per Box-Muller pair of uniforms (u1 in
    /// (0, 1] so the log is finite, 53-bit uniforms, computed in double and rounded once).
    /// </summary>
    public void FillNormal(Span<float> values, double std = 1.0)
    {
        for (int i = 0; i < values.Length; i += 2)
        {
            double u1 = 1.0 - (NextUInt64() >> 11) * (1.0 / 9007199254740992.0);
            double u2 = (NextUInt64() >> 11) * (1.0 / 9007199254740992.0);
            double radius = Math.Sqrt(-2.0 * Math.Log(u1)) * std;
            values[i] = (float)(radius * Math.Cos(2.0 * Math.PI * u2));
            if (i + 1 < values.Length) values[i + 1] = (float)(radius * Math.Sin(2.0 * Math.PI * u2));
        }
    }
}
