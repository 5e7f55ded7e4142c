using BenchmarkDotNet.Attributes;
using LoraKernels.Interop;

namespace LoraKernels.Benchmarks;

/// <summary>
/// What SoRA's pruning saves: the gated forward at r = 16 against the same layer pruned to its 4 surviving ranks, at
/// M = 512 and in = out = 256 (the adapter's M·r·(in + out) FMAs are 2r/n = 12.5 % of the base product's at r = 16) and
/// 4096 (0.8 %: there the pruned adapter is smaller, in parameters and optimizer state, but the layer is the base
/// product's time). GatedBenchmarks.Table prints the ratios.
/// </summary>
[BenchmarkCategory("cpu", "gated")]
public unsafe class GatedPruningBenchmarks
{
    public const int M = GatedBenchmarks.M, Rank = GatedBenchmarks.Rank, PrunedRank = 4, NarrowFeatures = 256;
    private const float Scale = 2f;

    [Params(NarrowFeatures, GatedBenchmarks.Features)]
    public int Features { get; set; }

    private NativeFloats _x = null!, _w0 = null!, _a = null!, _b = null!, _gate = null!, _prunedA = null!, _prunedB = null!, _prunedGate = null!;
    private NativeFloats _y = null!, _u = null!;

    [GlobalSetup]
    public void Setup()
    {
        var random = new Random(1110);
        int n = Features;
        float bound = 1f / MathF.Sqrt(n);
        _x = new NativeFloats(random.Uniform(M * n, 1f));
        _w0 = new NativeFloats(random.Uniform(n * n, bound));
        _a = new NativeFloats(random.Uniform(Rank * n, bound));
        _b = new NativeFloats(random.Uniform(n * Rank, 0.01f));
        _gate = new NativeFloats(random.Uniform(Rank, 0.5f, 1f));
        _prunedA = new NativeFloats(random.Uniform(PrunedRank * n, bound));
        _prunedB = new NativeFloats(random.Uniform(n * PrunedRank, 0.01f));
        _prunedGate = new NativeFloats(random.Uniform(PrunedRank, 0.5f, 1f));
        _y = new NativeFloats(M * n);
        _u = new NativeFloats(M * Rank);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        foreach (NativeFloats buffer in new[] { _x, _w0, _a, _b, _gate, _prunedA, _prunedB, _prunedGate, _y, _u }) buffer.Dispose();
    }

    [Benchmark(Baseline = true)]
    public void ForwardRank16() => Forward(Rank, _a, _b, _gate);

    [Benchmark]
    public void ForwardPrunedRank4() => Forward(PrunedRank, _prunedA, _prunedB, _prunedGate);

    private void Forward(int rank, NativeFloats a, NativeFloats b, NativeFloats gate) =>
        Check.Cpu(NativeCpu.lk_cpu_gated_forward(M, Features, Features, rank, _x.Pointer, _w0.Pointer, null, a.Pointer, b.Pointer, gate.Pointer,
                                                 0, Scale, 0f, 0, _y.Pointer, _u.Pointer));
}
