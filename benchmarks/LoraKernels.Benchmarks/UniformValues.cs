namespace LoraKernels.Benchmarks;

/// <summary>Benchmark operands: reproducible values drawn uniformly from (-bound, bound) by a seeded System.Random.</summary>
internal sealed class UniformValues(int seed)
{
    private readonly Random _random = new(seed);

    /// <summary>The next <paramref name="count"/> values, each in (-bound, bound).</summary>
    public float[] Next(int count, float bound)
    {
        var values = new float[count];
        for (int i = 0; i < count; i++) values[i] = (float)(_random.NextDouble() * 2 - 1) * bound;
        return values;
    }
}
