using System.Globalization;
using System.Text;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Reports;
using LoraKernels.Interop;

namespace LoraKernels.Benchmarks;

/// <summary>
/// The gated-rank family's bars on the CPU at M = 512, in = out = 4096 (fp32, no dropout, no bias), each method writing
/// into preallocated buffers:
///   step:   a LoRA r = 16 training step (lk_cpu_lora_forward + lk_cpu_lora_backward: dx, dA, dB) against the gated step
///           with a per-rank gate (lk_cpu_gated_forward + lk_cpu_gated_backward: dx, dA, dB, dgate); target ≤ 1.1×;
///   router: a LoRA r = 4 forward against the top-k router's forward over a pool of 64 rank-1 experts, k = 4: the
///           router's logits (lk_cpu_sgemm, x·Wrᵀ), softmax, top-k with renormalisation and the experts' forward
///           (lk_cpu_gated_topk_forward: the base product and the picked experts); target ≤ 1.3×.
/// The table after BenchmarkDotNet prints the ratios, and those of <see cref="GatedPruningBenchmarks"/>.
/// </summary>
[BenchmarkCategory("cpu", "gated")]
public unsafe class GatedBenchmarks
{
    public const int M = 512, Features = 4096, Rank = 16, RouterRank = 4, Experts = 64, TopK = 4;
    public const double StepTarget = 1.1, RouterTarget = 1.3;
    private const float Scale = 2f;

    private NativeFloats _x = null!, _w0 = null!, _a = null!, _b = null!, _gate = null!, _y = null!, _u = null!, _dy = null!;
    private NativeFloats _dx = null!, _dA = null!, _dB = null!, _dGate = null!;
    private NativeFloats _router = null!, _poolA = null!, _poolB = null!, _logits = null!, _probs = null!, _expert = null!, _weight = null!, _h = null!;

    [GlobalSetup]
    public void Setup()
    {
        var random = new Random(1109);
        float[] Fill(int count, float bound, float offset = 0f) => random.Uniform(count, bound, offset);
        const int n = Features;
        _x = new NativeFloats(Fill(M * n, 1f));
        _w0 = new NativeFloats(Fill(n * n, 1f / MathF.Sqrt(n)));
        _a = new NativeFloats(Fill(Rank * n, 1f / MathF.Sqrt(n)));
        _b = new NativeFloats(Fill(n * Rank, 0.01f));
        _gate = new NativeFloats(Fill(Rank, 0.5f, 1f));
        _dy = new NativeFloats(Fill(M * n, 1f));
        _y = new NativeFloats(M * n);
        _u = new NativeFloats(M * Rank);
        _dx = new NativeFloats(M * n);
        _dA = new NativeFloats(Rank * n);
        _dB = new NativeFloats(n * Rank);
        _dGate = new NativeFloats(Rank);
        _router = new NativeFloats(Fill(Experts * n, 1f / MathF.Sqrt(n)));
        _poolA = new NativeFloats(Fill(Experts * n, 1f / MathF.Sqrt(n)));
        _poolB = new NativeFloats(Fill(n * Experts, 0.01f));
        _logits = new NativeFloats(M * Experts);
        _probs = new NativeFloats(M * Experts);
        _expert = new NativeFloats(M * TopK);
        _weight = new NativeFloats(M * TopK);
        _h = new NativeFloats(M * TopK);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        foreach (NativeFloats buffer in new[] { _x, _w0, _a, _b, _gate, _y, _u, _dy, _dx, _dA, _dB, _dGate, _router, _poolA, _poolB, _logits,
                                                _probs, _expert, _weight, _h })
            buffer.Dispose();
    }

    [Benchmark(Baseline = true), BenchmarkCategory("step")]
    public void LoraStep()
    {
        Check.Cpu(NativeCpu.lk_cpu_lora_forward(M, Features, Features, Rank, _x.Pointer, _w0.Pointer, null, _a.Pointer, _b.Pointer, Scale, 0f, 0,
                                                _y.Pointer, _u.Pointer));
        Check.Cpu(NativeCpu.lk_cpu_lora_backward(M, Features, Features, Rank, _x.Pointer, _w0.Pointer, _a.Pointer, _b.Pointer, _u.Pointer,
                                                 _dy.Pointer, Scale, 0f, 0, _dx.Pointer, _dA.Pointer, _dB.Pointer));
    }

    [Benchmark, BenchmarkCategory("step")]
    public void GatedStep()
    {
        Check.Cpu(NativeCpu.lk_cpu_gated_forward(M, Features, Features, Rank, _x.Pointer, _w0.Pointer, null, _a.Pointer, _b.Pointer, _gate.Pointer,
                                                 0, Scale, 0f, 0, _y.Pointer, _u.Pointer));
        Check.Cpu(NativeCpu.lk_cpu_gated_backward(M, Features, Features, Rank, _x.Pointer, _w0.Pointer, _a.Pointer, _b.Pointer, _gate.Pointer,
                                                  0, _u.Pointer, _dy.Pointer, Scale, 0f, 0, _dx.Pointer, _dA.Pointer, _dB.Pointer,
                                                  _dGate.Pointer));
    }

    [Benchmark(Baseline = true), BenchmarkCategory("router")]
    public void LoraForwardRank4() =>
        Check.Cpu(NativeCpu.lk_cpu_lora_forward(M, Features, Features, RouterRank, _x.Pointer, _w0.Pointer, null, _a.Pointer, _b.Pointer, Scale,
                                                0f, 0, _y.Pointer, _u.Pointer));

    [Benchmark, BenchmarkCategory("router")]
    public void RouterTopKForward()
    {
        Check.Cpu(NativeCpu.lk_cpu_sgemm(0, 1, M, Experts, Features, 1f, _x.Pointer, Features, _router.Pointer, Features, 0f, _logits.Pointer,
                                         Experts));
        Check.Cpu(NativeCpu.lk_cpu_gated_softmax(M, Experts, _logits.Pointer, _probs.Pointer));
        Check.Cpu(NativeCpu.lk_cpu_gated_route_topk(M, Experts, TopK, _probs.Pointer, 1, _expert.Pointer, _weight.Pointer));
        Check.Cpu(NativeCpu.lk_cpu_gated_topk_forward(M, Features, Features, Experts, TopK, _x.Pointer, _w0.Pointer, null, _poolA.Pointer,
                                                      _poolB.Pointer, _expert.Pointer, _weight.Pointer, Scale, 0f, 0, _y.Pointer, _h.Pointer));
    }

    /// <summary>The gated family's ratios printed after BenchmarkDotNet (empty when no GatedBenchmarks case ran).</summary>
    internal static string Table(IEnumerable<Summary> summaries)
    {
        var means = new Dictionary<string, double>();
        foreach (Summary summary in summaries)
            foreach (var benchmark in summary.BenchmarksCases.Where(c => c.Descriptor.Type == typeof(GatedBenchmarks) ||
                                                                         c.Descriptor.Type == typeof(GatedPruningBenchmarks)))
                if (summary[benchmark]?.ResultStatistics?.Mean is { } ns)
                    means[benchmark.Descriptor.WorkloadMethod.Name + benchmark.Parameters.DisplayInfo] = ns;
        if (means.Count == 0) return "";
        string Ms(string name) => means.TryGetValue(name, out double ns) ? (ns / 1e6).ToString("F1", CultureInfo.InvariantCulture) + " ms" : "NA";
        string Ratio(string name, string baseline, double? target) =>
            means.TryGetValue(name, out double a) && means.TryGetValue(baseline, out double b)
                ? string.Create(CultureInfo.InvariantCulture, $", ratio {a / b:F3}") +
                  (target is { } t ? string.Create(CultureInfo.InvariantCulture, $" (target <= {t:F1}: {(a / b <= t ? "met" : "NOT met")})") : "")
                : "";
        var text = new StringBuilder();
        text.AppendLine($"Gated-rank family, CPU fp32, M = {M}:");
        text.AppendLine($"  training step, in = out = {Features}, r = {Rank}: LoRA {Ms(nameof(LoraStep))}, per-rank gated {Ms(nameof(GatedStep))}" +
                        Ratio(nameof(GatedStep), nameof(LoraStep), StepTarget));
        text.AppendLine($"  forward, in = out = {Features}: LoRA r = {RouterRank} {Ms(nameof(LoraForwardRank4))}, top-{TopK} router over {Experts} experts " +
                        $"{Ms(nameof(RouterTopKForward))}" + Ratio(nameof(RouterTopKForward), nameof(LoraForwardRank4), RouterTarget));
        foreach (int features in new[] { GatedPruningBenchmarks.NarrowFeatures, Features })
        {
            string parameters = $"[Features={features}]", full = nameof(GatedPruningBenchmarks.ForwardRank16) + parameters,
                   pruned = nameof(GatedPruningBenchmarks.ForwardPrunedRank4) + parameters;
            if (means.ContainsKey(full))
                text.AppendLine($"  SoRA forward, M = {M}, in = out = {features}: r = {Rank} {Ms(full)}, pruned to r = " +
                                $"{GatedPruningBenchmarks.PrunedRank} {Ms(pruned)}" + Ratio(pruned, full, null));
        }
        return text.ToString();
    }
}
