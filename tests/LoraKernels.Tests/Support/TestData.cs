namespace LoraKernels.Tests.Support;

/// <summary>Seeded, non-zero test inputs (SplitMix64), the same on every run.</summary>
internal sealed class TestData(ulong seed)
{
    private ulong _state = seed;

    private ulong Next()
    {
        ulong z = _state += 0x9E3779B97F4A7C15ul;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ul;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBul;
        return z ^ (z >> 31);
    }

    /// <summary>Uniform in [0, 1).</summary>
    public double NextDouble() => (Next() >> 11) * (1.0 / 9007199254740992.0);

    /// <summary>
    /// Values with magnitude in [0.1, 1]·<paramref name="bound"/> and a random sign, never zero,
    /// so no product is trivially zero and a dropped or mis-indexed term always shows.
    /// </summary>
    public float[] NonZero(int count, float bound = 1f)
    {
        var values = new float[count];
        for (int i = 0; i < count; i++)
        {
            double magnitude = 0.1 + 0.9 * NextDouble();
            values[i] = (float)((Next() & 1) == 0 ? magnitude * bound : -magnitude * bound);
        }
        return values;
    }

    /// <summary>Like <see cref="NonZero(int, float)"/>, rounded through <paramref name="dtype"/> (what the device will hold).</summary>
    public float[] NonZero(int count, float bound, DType dtype) => Reference.RoundTo(dtype, NonZero(count, bound));

    /// <summary>A seed derived from a case's name, so each case gets its own data but the same every run.</summary>
    public static ulong SeedFor(string name)
    {
        ulong hash = 14695981039346656037ul;  // FNV-1a
        foreach (char c in name) hash = (hash ^ c) * 1099511628211ul;
        return hash;
    }
}
