namespace LoraKernels.Demo.Training;

/// <summary>
/// A small seeded generator (SplitMix64), so the demo's weights, hidden change and batches are
/// the same on every run and every device.
/// </summary>
public sealed class SplitMixRandom(ulong seed)
{
    private ulong _state = seed;

    public ulong NextUInt64()
    {
        ulong z = _state += 0x9E3779B97F4A7C15ul;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ul;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBul;
        return z ^ (z >> 31);
    }

    /// <summary>Uniform in [0, 1) with 24 random bits.</summary>
    public float NextFloat() => (NextUInt64() >> 40) * (1.0f / 16777216.0f);

    /// <summary>Uniform in [-bound, bound).</summary>
    public float Uniform(float bound) => (2f * NextFloat() - 1f) * bound;

    /// <summary>Standard normal (Box-Muller; the second value is discarded for simplicity).</summary>
    public float Normal()
    {
        double u1 = 1.0 - (NextUInt64() >> 11) * (1.0 / 9007199254740992.0);  // (0, 1]
        double u2 = (NextUInt64() >> 11) * (1.0 / 9007199254740992.0);
        return (float)(Math.Sqrt(-2.0 * Math.Log(u1)) * Math.Cos(2.0 * Math.PI * u2));
    }

    public float[] Uniform(int count, float bound)
    {
        var values = new float[count];
        for (int i = 0; i < values.Length; i++) values[i] = Uniform(bound);
        return values;
    }

    public float[] Normal(int count, float standardDeviation)
    {
        var values = new float[count];
        for (int i = 0; i < values.Length; i++) values[i] = Normal() * standardDeviation;
        return values;
    }
}
