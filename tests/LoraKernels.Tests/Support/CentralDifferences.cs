namespace LoraKernels.Tests.Support;

/// <summary>Gradients of a double-precision loss by central differences, for checking a reference's chain rule.</summary>
internal static class CentralDifferences
{
    /// <summary>
    /// (loss(v + h) − loss(v − h)) / 2h for each element of <paramref name="values"/>, perturbed in place (and restored);
    /// <paramref name="loss"/> must read the array. Exact for a loss linear in the element, else O(h²·|loss'''|).
    /// </summary>
    public static double[] Of(float[] values, Func<double> loss, float h)
    {
        var gradient = new double[values.Length];
        for (int i = 0; i < values.Length; i++)
        {
            float saved = values[i];
            values[i] = saved + h;
            double plus = loss();
            values[i] = saved - h;
            double minus = loss();
            values[i] = saved;
            gradient[i] = (plus - minus) / (2 * h);
        }
        return gradient;
    }
}
