using LoraKernels.Autograd;
using LoraKernels.Optim;

namespace LoraKernels.Tests.Optim;

/// <summary>
/// A set of parameters on one device and a fixed sequence of gradients for them, the same on every device
/// and every run: what the optimizer tests step. Each element keeps its gradient's sign across steps
/// (magnitudes vary), so every element moves by about lr per step and a wrong or missing update shows.
/// Sizes: 1, a prime below the GPU kernels' 4096-element block run, primes above it, and a BF16 parameter.
/// </summary>
internal sealed class OptimizerProblem : IDisposable
{
    public static readonly (string Name, int Size, DType DType)[] DefaultShapes =
        [("p1", 1, DType.F32), ("p251", 251, DType.F32), ("p4099", 4099, DType.F32), ("bf16_5003", 5003, DType.BF16)];

    private readonly float[][] _signs;
    private readonly TestData _data;

    public OptimizerProblem(Device device, string name, (string Name, int Size, DType DType)[]? shapes = null)
    {
        Device = device;
        shapes ??= DefaultShapes;
        _data = new TestData(TestData.SeedFor(name));
        Initial = shapes.Select(s => _data.NonZero(s.Size, 1f, s.DType)).ToArray();
        _signs = shapes.Select(s => _data.NonZero(s.Size)).ToArray();
        Parameters = shapes.Select((s, i) => new Parameter(s.Name, Tensor.FromArray(device, Initial[i], s.DType, s.Size))).ToArray();
    }

    /// <summary>The CPU and emulator cases of a test taking a DeviceKind, named by it.</summary>
    public static IEnumerable<TestCaseData> CpuAndSimt() =>
        [new TestCaseData(DeviceKind.Cpu).SetName("Cpu"), new TestCaseData(DeviceKind.Simt).SetName("Simt")];

    public static Device On(DeviceKind kind) => kind == DeviceKind.Cpu ? Device.Cpu : Device.Simt;

    public Device Device { get; }
    public Parameter[] Parameters { get; }
    public float[][] Initial { get; }

    /// <summary>The parameters by name (what checkpoints take).</summary>
    public IReadOnlyDictionary<string, Parameter> Named => Parameters.ToDictionary(p => p.Name, p => p);

    /// <summary>The gradients of step <paramref name="step"/>, one array per parameter (the same for a given step on every problem of this name).</summary>
    public float[][] Gradients(int step)
    {
        var data = new TestData(TestData.SeedFor($"grad{step}") ^ (ulong)_signs.Length);
        return _signs.Select(signs => data.NonZero(signs.Length, 0.5f).Select((g, i) => MathF.CopySign(g, signs[i])).ToArray()).ToArray();
    }

    /// <summary>Sets every parameter's gradient to <paramref name="gradients"/>.</summary>
    public void SetGradients(float[][] gradients)
    {
        for (int i = 0; i < Parameters.Length; i++)
            Parameters[i].Grad = Tensor.FromArray(Device, gradients[i], DType.F32, Parameters[i].Value.ElementCount);
    }

    /// <summary>Runs steps <paramref name="first"/> .. <paramref name="last"/> (inclusive) with their gradients.</summary>
    public void Train(Optimizer optimizer, int first, int last)
    {
        for (int step = first; step <= last; step++)
        {
            SetGradients(Gradients(step));
            Assert.That(optimizer.Step(), Is.True, $"step {step} applied");
            optimizer.ZeroGrad();
        }
    }

    /// <summary>Every parameter's values, as floats.</summary>
    public float[][] Values() => Parameters.Select(p => p.Value.ToArray()).ToArray();

    /// <summary>Two groups: the first two parameters at lr, weight decay 0.1; the rest at 4·lr, no decay.</summary>
    public ParameterGroup[] TwoGroups(float lr) =>
        [new ParameterGroup("slow", Parameters.Take(2), lr, 0.1f), new ParameterGroup("fast", Parameters.Skip(2), 4 * lr, 0f)];

    public void Dispose()
    {
        foreach (Parameter parameter in Parameters) parameter.Dispose();
    }

    /// <summary>Asserts two problems' parameters are equal bit for bit.</summary>
    public static void ExpectSameBits(string what, float[][] first, float[][] second)
    {
        Assert.That(second, Has.Length.EqualTo(first.Length), $"{what}: parameter count");
        for (int i = 0; i < first.Length; i++) Expect.Exact($"{what}, parameter {i}", second[i], first[i]);
    }
}
