namespace LoraKernels.Tests.Safety;

/// <summary>
/// The child program of <see cref="OpenMpWaitPolicyTests"/> ("wait-policy"): runs one CPU op, so the CPU
/// library and libgomp are loaded, and prints the wait policy the library reports.
/// </summary>
internal static class WaitPolicyProgram
{
    public static int Run(string[] args)
    {
        using Tensor x = Tensor.FromArray(Device.Cpu, [1f, -2f, 3f], 3);
        using Tensor y = Ops.Elementwise.Relu(x);
        Console.WriteLine($"policy: {CpuDevice.OpenMpWaitPolicy}");
        return y.ToArray()[2] == 3f ? 0 : 1;
    }
}
