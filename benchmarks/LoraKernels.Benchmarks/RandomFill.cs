namespace LoraKernels.Benchmarks;

/// <summary>The benchmarks' inputs: values drawn uniformly from [offset − bound, offset + bound).</summary>
internal static class RandomFill
{
    public static float[] Uniform(this Random random, int count, float bound, float offset = 0f)
    {
        var values = new float[count];
        for (int i = 0; i < count; i++) values[i] = offset + (float)(random.NextDouble() * 2 - 1) * bound;
        return values;
    }
}
