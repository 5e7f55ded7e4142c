using System.Globalization;
using System.Text;

namespace LoraKernels.Tests.Support;

/// <summary>Element-wise comparisons that name the worst elements when they fail, and guards against vacuous passes.</summary>
internal static class Expect
{
    /// <summary>Asserts |actual[i] - reference[i]| ≤ bound[i] for every i, and that actual is finite.</summary>
    public static void Close(string what, float[] actual, double[] reference, double[] bound)
    {
        Assert.That(actual, Has.Length.EqualTo(reference.Length), $"{what}: element count");
        int failures = 0;
        var report = new StringBuilder();
        double worstRatio = 0;
        int worst = -1;
        for (int i = 0; i < actual.Length; i++)
        {
            double error = Math.Abs(actual[i] - reference[i]);
            bool ok = float.IsFinite(actual[i]) && error <= bound[i];
            double ratio = float.IsFinite(actual[i]) ? error / bound[i] : double.PositiveInfinity;
            if (ratio > worstRatio) { worstRatio = ratio; worst = i; }
            if (!ok && failures++ < 8)
                report.AppendLine(string.Create(CultureInfo.InvariantCulture,
                    $"  [{i}] got {actual[i]:R}, reference {reference[i]:R}, error {error:E3} > bound {bound[i]:E3}"));
        }
        if (failures > 0)
            Assert.Fail($"{what}: {failures} of {actual.Length} elements outside the bound (worst error/bound {worstRatio:F2} at [{worst}]):\n{report}");
    }

    /// <summary>Asserts two devices' results agree within the sum of their bounds against the reference.</summary>
    public static void Agree(string what, float[] first, float[] second, double[] bound)
    {
        Assert.That(second, Has.Length.EqualTo(first.Length), $"{what}: element count");
        var twice = Array.ConvertAll(bound, b => 2 * b);
        Close(what, second, Array.ConvertAll(first, v => (double)v), twice);
    }

    /// <summary>Asserts the reference is finite and has non-zero elements, so matching it proves something.</summary>
    public static void NotVacuous(string what, double[] reference)
    {
        Assert.That(reference, Is.Not.Empty, $"{what}: empty reference");
        Assert.That(reference.All(double.IsFinite), Is.True, $"{what}: reference has non-finite values");
        int nonZero = reference.Count(v => v != 0.0);
        Assert.That(nonZero, Is.GreaterThan(reference.Length / 2), $"{what}: reference is mostly zero ({nonZero} of {reference.Length} non-zero)");
    }

    /// <summary>Asserts two arrays are bit for bit equal (for ops that must be exact: ReLU, casts).</summary>
    public static void Exact(string what, float[] actual, float[] expected)
    {
        Assert.That(actual, Has.Length.EqualTo(expected.Length), $"{what}: element count");
        for (int i = 0; i < actual.Length; i++)
            if (BitConverter.SingleToUInt32Bits(actual[i]) != BitConverter.SingleToUInt32Bits(expected[i]))
                Assert.Fail(string.Create(CultureInfo.InvariantCulture,
                    $"{what}: [{i}] got {actual[i]:R} (0x{BitConverter.SingleToUInt32Bits(actual[i]):X8}), expected {expected[i]:R} (0x{BitConverter.SingleToUInt32Bits(expected[i]):X8})"));
    }
}
