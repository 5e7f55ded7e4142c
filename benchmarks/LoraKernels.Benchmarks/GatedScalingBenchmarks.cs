using BenchmarkDotNet.Attributes;
using LoraKernels.Interop;

namespace LoraKernels.Benchmarks;

/// <summary>
/// How the gated forward's time scales with the pool: M = 4096 tokens, in = out = 256 (so the experts' term,
/// M·k·(in + out) FMAs, is visible beside the base product's M·in·out), over pools of 16, 256 and 4096 rank-1 experts.
/// <see cref="GatedScalingBenchmarks"/> runs the top-k forward (k = 1, 4, 16, fixed routings): its time grows with k
/// and stays flat in E; <see cref="GatedDenseScalingBenchmarks"/> routes every token through every expert (a per-token
/// gate [M, E]): it grows with E.
/// </summary>
public abstract class GatedPoolScaling
{
    public const int Tokens = 4096, Features = 256;

    [Params(16, 256, 4096)]
    public int Experts { get; set; }

    /// <summary>The experts each token picks (the dense form keeps one routing it does not read).</summary>
    protected abstract int Picked { get; }

    private protected ScalingBuffers Buffers { get; private set; } = null!;

    [GlobalSetup]
    public void Setup() => Buffers = new ScalingBuffers(Tokens, Features, Experts, Picked);

    [GlobalCleanup]
    public void Cleanup() => Buffers.Dispose();
}

[BenchmarkCategory("cpu", "gated-scaling")]
public unsafe class GatedScalingBenchmarks : GatedPoolScaling
{
    [Params(1, 4, 16)]
    public int K { get; set; }

    protected override int Picked => K;

    [Benchmark]
    public void TopKForward()
    {
        ScalingBuffers b = Buffers;
        Check.Cpu(NativeCpu.lk_cpu_gated_topk_forward(Tokens, Features, Features, Experts, K, b.X.Pointer, b.W0.Pointer, null, b.A.Pointer,
                                                      b.B.Pointer, b.Expert.Pointer, b.Weight.Pointer, 1f, 0f, 0, b.Y.Pointer, b.H.Pointer));
    }
}

[BenchmarkCategory("cpu", "gated-scaling")]
public unsafe class GatedDenseScalingBenchmarks : GatedPoolScaling
{
    protected override int Picked => 1;

    [Benchmark]
    public void DenseForward()
    {
        ScalingBuffers b = Buffers;
        Check.Cpu(NativeCpu.lk_cpu_gated_forward(Tokens, Features, Features, Experts, b.X.Pointer, b.W0.Pointer, null, b.A.Pointer, b.B.Pointer,
                                                 b.Gate.Pointer, Experts, 1f, 0f, 0, b.Y.Pointer, b.U.Pointer));
    }
}

/// <summary>The scaling benchmarks' inputs: x, W0, a pool of E experts, k distinct experts per token spread over it, outputs.</summary>
internal sealed unsafe class ScalingBuffers : IDisposable
{
    public readonly NativeFloats X, W0, A, B, Expert, Weight, Y, H, Gate, U;

    public ScalingBuffers(int tokens, int features, int experts, int k)
    {
        var random = new Random(tokens + experts + k);
        float[] Fill(int count, float bound) => random.Uniform(count, bound);
        var expert = new float[tokens * k];
        for (int m = 0; m < tokens; m++)
            for (int t = 0; t < k; t++) expert[m * k + t] = (m * 7 + t * (experts / k)) % experts;
        X = new NativeFloats(Fill(tokens * features, 1f));
        W0 = new NativeFloats(Fill(features * features, 1f / MathF.Sqrt(features)));
        A = new NativeFloats(Fill(experts * features, 1f / MathF.Sqrt(features)));
        B = new NativeFloats(Fill(features * experts, 0.01f));
        Expert = new NativeFloats(expert);
        Weight = new NativeFloats(Fill(tokens * k, 1f));
        Y = new NativeFloats(tokens * features);
        H = new NativeFloats(tokens * k);
        Gate = new NativeFloats(Fill(tokens * experts, 1f));
        U = new NativeFloats(tokens * experts);
    }

    public void Dispose()
    {
        foreach (NativeFloats buffer in new[] { X, W0, A, B, Expert, Weight, Y, H, Gate, U }) buffer.Dispose();
    }
}
