namespace LoraKernels.Tests.Support;

/// <summary>The devices a test runs on; a CUDA test is skipped (never passed) where there is no GPU.</summary>
internal static class Devices
{
    /// <summary>Null when a GPU is usable, else the first line of what the resolver or driver said (asked once per run).</summary>
    private static readonly Lazy<string?> CudaUnavailableReason = new(() =>
    {
        if (Device.IsCudaAvailable) return null;
        try
        {
            return $"Device.IsCudaAvailable is false although Device.Cuda() gives {Device.Cuda().Name}";
        }
        catch (CudaUnavailableException e)
        {
            string firstLine = e.Message.Split('\n')[0].Trim();
            return firstLine.EndsWith("Tried:", StringComparison.Ordinal) ? firstLine[..^"Tried:".Length].TrimEnd() : firstLine;
        }
    });

    /// <summary>The CUDA device, or Assert.Ignore with the reason it is unavailable.</summary>
    public static Device CudaOrIgnore()
    {
        if (CudaUnavailableReason.Value is { } reason) Assert.Ignore($"no CUDA device: {reason}");
        return Device.Cuda();
    }

    /// <summary>
    /// The cases of a CUDA test where a GPU is present; elsewhere one ignored placeholder that carries
    /// the reason, so a machine without a GPU reports each CUDA test once, as skipped, instead of
    /// hundreds of identical skips (the placeholder never runs, so its arguments are unused).
    /// </summary>
    /// Names get a "Cuda_" prefix, so a GPU run's results read apart from the emulator's.
    public static IEnumerable<TestCaseData> CudaCases(string test, int arity, IEnumerable<TestCaseData> cases)
    {
        if (CudaUnavailableReason.Value is not { } reason)
            return cases.Select(c => new TestCaseData(c.Arguments).SetName("Cuda_" + c.TestName));
        var placeholder = new TestCaseData(new object?[arity]).SetName($"Cuda_{test}_NoCudaDevice").Ignore($"no CUDA device: {reason}");
        return [placeholder];
    }
}
