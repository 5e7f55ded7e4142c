using System.Globalization;
using System.Text;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Reports;
using LoraKernels.Families.Kron;
using LoraKernels.Families.Lora;
using LoraKernels.Ops;

namespace LoraKernels.Benchmarks;

/// <summary>
/// The Kronecker adapter's forward against a plain LoRA r = 16 forward of the same layer on the CPU: in = out = 4096,
/// factors 64 x 64 ⊗ 64 x 64 (dense), fp32, no bias, M = 512 (the issue's bar: Kron ≤ 1.2 × LoRA) and M = 16. Both
/// through the public ops (which allocate their outputs, and Kron its [M·in_m, out_k] workspace, on each call, as a
/// layer's caller gets them) and through the kernels into preallocated outputs (*Into; Kron's workspace is still
/// allocated per call). The adapter adds 2·M·in_m·out_k·(in_n + out_l) FLOPs (0.54 GFLOP at M = 512) to the base's
/// 2·M·out·in; LoRA's adds 2·M·r·(in + out). The table after BenchmarkDotNet prints the ratios and the memory the
/// Kronecker op allocates per call beside the [out, in] buffer it never forms.
/// </summary>
[BenchmarkCategory("cpu", "kron")]
public class KronBenchmarks
{
    public const int Features = 4096, Factor = 64, Rank = 16;
    public const double TargetRatio = 1.2;

    [Params(16, 512)]
    public int M { get; set; }

    private Tensor _x = null!, _w0 = null!, _a = null!, _b = null!, _w1 = null!, _w2 = null!, _y = null!, _u = null!;

    [GlobalSetup]
    public void Setup()
    {
        var values = new UniformValues(4096);
        float[] Fill(int count, float bound) => values.Next(count, bound);
        Device cpu = Device.Cpu;
        _x = Tensor.FromArray(cpu, Fill(M * Features, 1f), M, Features);
        _w0 = Tensor.FromArray(cpu, Fill(Features * Features, 1f / Factor), Features, Features);
        _a = Tensor.FromArray(cpu, Fill(Rank * Features, 1f / Factor), Rank, Features);
        _b = Tensor.FromArray(cpu, Fill(Features * Rank, 0.1f), Features, Rank);
        _w1 = Tensor.FromArray(cpu, Fill(Factor * Factor, 0.1f), Factor, Factor);
        _w2 = Tensor.FromArray(cpu, Fill(Factor * Factor, 1f / 8), Factor, Factor);
        _y = Tensor.Zeros(cpu, DType.F32, M, Features);
        _u = Tensor.Zeros(cpu, DType.F32, M, Rank);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        foreach (Tensor t in new[] { _x, _w0, _a, _b, _w1, _w2, _y, _u }) t.Dispose();
    }

    [Benchmark(Baseline = true)]
    public void LoraForward()
    {
        var (y, u) = Lora.Forward(_x, _w0, null, _a, _b, 2f);
        y.Dispose();
        u.Dispose();
    }

    [Benchmark]
    public void KronForward() => Kron.Forward(_x, _w0, null, _w1, _w2, 0.5f).Dispose();

    [Benchmark]
    public void LoraForwardInto() => ILoraKernels.On(Device.Cpu).Forward(_x, _w0, null, _a, _b, 2f, 0f, 0, _y, _u);

    [Benchmark]
    public void KronForwardInto() => IKronKernels.On(Device.Cpu).Forward(_x, _w0, null, _w1, _w2, new KronShape(Factor, Factor, Factor, Factor), 0.5f, _y);

    /// <summary>The Kron/LoRA table printed after BenchmarkDotNet (empty when no KronBenchmarks case ran).</summary>
    internal static string Table(IEnumerable<Summary> summaries)
    {
        var times = MeanTimes.Of<KronBenchmarks>(summaries, nameof(M));
        if (times.Count == 0) return "";
        var text = new StringBuilder();
        text.AppendLine($"Kronecker (64x64 ⊗ 64x64) vs LoRA r = {Rank} forward, CPU fp32, in = out = {Features}:");
        foreach (int m in times.Keys.Select(k => k.Value).Distinct().Order())
        {
            string Pair(string lora, string kron)
            {
                if (!times.TryGetValue((m, lora), out double l) || !times.TryGetValue((m, kron), out double k)) return "NA";
                string verdict = m == 512 ? $" (target <= {TargetRatio:F1}: {(k / l <= TargetRatio ? "met" : "NOT met")})" : "";
                return string.Create(CultureInfo.InvariantCulture, $"LoRA {l / 1e6:F2} ms, Kron {k / 1e6:F2} ms, Kron / LoRA = {k / l:F3}{verdict}");
            }
            text.AppendLine($"  M = {m}, public ops: {Pair(nameof(LoraForward), nameof(KronForward))}");
            text.AppendLine($"  M = {m}, kernels into preallocated y: {Pair(nameof(LoraForwardInto), nameof(KronForwardInto))}");
            long workspace = (long)m * Factor * Factor * sizeof(float), output = (long)m * Features * sizeof(float);
            text.AppendLine(string.Create(CultureInfo.InvariantCulture,
                $"  M = {m}, device memory a Kron forward allocates: y {output / 1048576.0:F1} MiB + workspace {workspace / 1048576.0:F1} MiB (M·in_m·out_k floats); an [out, in] ΔW would be {(long)Features * Features * sizeof(float) / 1048576.0:F0} MiB"));
        }
        text.AppendLine("  (native heap during a forward + backward at M = 512: tests/native/cpu/kron_memory_test.cpp, kron_memory_tests)");
        return text.ToString();
    }
}
