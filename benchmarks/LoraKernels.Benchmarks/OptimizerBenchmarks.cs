using System.Globalization;
using System.Text;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Reports;
using LoraKernels.Autograd;
using LoraKernels.Interop;
using LoraKernels.Optim;

namespace LoraKernels.Benchmarks;

/// <summary>
/// The optimizers on the CPU, against issue 8's two bars:
/// (1) the fused AdamW kernel (lk_cpu_adamw, torch form) over 64 parameters of 256 Ki elements (16.8 M elements,
/// 470 MB moved a call: p, m, v read and written and g read, 28 bytes an element) should move at least 60% of the
/// machine's memory bandwidth. Two references are printed beside it: MachinePeaks' .NET streaming-read probe (the
/// peak every other table uses; it understates what native code reads), and lk_cpu_axpy over the same 16.8 M
/// elements (y += a·x: 12 bytes an element read and written by the same library's native loop), the bandwidth a
/// native read-modify-write stream reaches on this machine.
/// (2) a whole AdamW step (Optimizer.Step: the gradient-norm pass and the update) of 8 Mi elements whose 64 MiB of
/// state is paged to a memory-mapped file under a RAM budget of a quarter of it should cost at most 2× the same
/// step with resident state. The paging file lives in LORAKERNELS_PAGING_DIR (default the temporary folder) and
/// stays in the page cache while RAM is free, so this measures the paging machinery (page population ahead of the
/// update, release after it), not the disk. On a shared machine the load drifts between BenchmarkDotNet's runs of
/// the two steps, so the table also gives the ratio of steps run alternately in one window (medians of 9 pairs).
/// </summary>
[BenchmarkCategory("cpu", "optim")]
public unsafe class OptimizerBenchmarks
{
    public const int Tensors = 64, TensorElements = 1 << 18;
    public const long KernelElements = (long)Tensors * TensorElements;
    public const int StepElements = 8 << 20;
    public const double AdamWBytesPerElement = 28, AxpyBytesPerElement = 12;
    public const double BandwidthTarget = 0.6, PagedTarget = 2.0;

    private NativeFloats _p = null!, _g = null!, _m = null!, _v = null!;
    private AdamWSegment[] _segments = null!;
    private Parameter _parameter = null!;
    private AdamW _resident = null!, _paged = null!;

    [GlobalSetup]
    public void Setup()
    {
        var random = new Random(8);
        float[] Fill(long count, float scale, bool positive = false)
        {
            var values = new float[count];
            for (long i = 0; i < count; i++) values[i] = (float)(positive ? random.NextDouble() : random.NextDouble() * 2 - 1) * scale;
            return values;
        }
        _p = new NativeFloats(Fill(KernelElements, 1f));
        _g = new NativeFloats(Fill(KernelElements, 1e-2f));
        _m = new NativeFloats(Fill(KernelElements, 1e-3f));
        _v = new NativeFloats(Fill(KernelElements, 1e-5f, positive: true));
        _segments = new AdamWSegment[Tensors];
        for (int t = 0; t < Tensors; t++)
        {
            long offset = (long)t * TensorElements * sizeof(float);
            _segments[t] = new AdamWSegment
            {
                Param = (ulong)_p.Pointer + (ulong)offset, Grad = (ulong)_g.Pointer + (ulong)offset,
                M = (ulong)_m.Pointer + (ulong)offset, V = (ulong)_v.Pointer + (ulong)offset,
                N = TensorElements, Decay = 1f - 1e-5f, StepSize = -1e-3f, BiasCorrection2Sqrt = 0.5f, Eps = 1e-8f,
            };
        }

        _parameter = new Parameter("p", Tensor.FromArray(Device.Cpu, Fill(StepElements, 1f), StepElements));
        _parameter.Grad = Tensor.FromArray(Device.Cpu, Fill(StepElements, 1e-2f), StepElements);
        _resident = new AdamW([_parameter], lr: 1e-5f);
        _paged = new AdamW([_parameter], lr: 1e-5f, paging: new StatePaging(8L * StepElements / 4));
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _resident.Dispose();
        _paged.Dispose();
        _parameter.Dispose();
        foreach (NativeFloats buffer in new[] { _p, _g, _m, _v }) buffer.Dispose();
    }

    [Benchmark]
    public void AdamWKernel()
    {
        fixed (AdamWSegment* segments = _segments) Check.Cpu(NativeCpu.lk_cpu_adamw(segments, Tensors, 0.9f, 0.999f, 1f, 0));
    }

    [Benchmark]
    public void NativeAxpy() => Check.Cpu(NativeCpu.lk_cpu_axpy(KernelElements, 1e-9f, _g.Pointer, _m.Pointer));

    [Benchmark]
    public void ResidentStep() => _resident.Step();

    [Benchmark]
    public void PagedStep() => _paged.Step();

    /// <summary>Median times of resident and paged steps run alternately (so both see the same load), in ns.</summary>
    private static (double Resident, double Paged) Interleaved(int pairs = 9)
    {
        var benchmarks = new OptimizerBenchmarks();
        benchmarks.Setup();
        try
        {
            benchmarks.ResidentStep();
            benchmarks.PagedStep();
            var resident = new List<double>(pairs);
            var paged = new List<double>(pairs);
            for (int i = 0; i < pairs; i++)
            {
                long start = System.Diagnostics.Stopwatch.GetTimestamp();
                benchmarks.ResidentStep();
                long middle = System.Diagnostics.Stopwatch.GetTimestamp();
                benchmarks.PagedStep();
                long end = System.Diagnostics.Stopwatch.GetTimestamp();
                resident.Add(System.Diagnostics.Stopwatch.GetElapsedTime(start, middle).TotalNanoseconds);
                paged.Add(System.Diagnostics.Stopwatch.GetElapsedTime(middle, end).TotalNanoseconds);
            }
            return (resident.Order().ElementAt(pairs / 2), paged.Order().ElementAt(pairs / 2));
        }
        finally
        {
            benchmarks.Cleanup();
        }
    }

    /// <summary>The two bars, printed after BenchmarkDotNet (empty when no OptimizerBenchmarks case ran).</summary>
    internal static string Table(IEnumerable<Summary> summaries, MachinePeaks? peaks)
    {
        var ns = new Dictionary<string, double>();
        foreach (Summary summary in summaries)
            foreach (var benchmark in summary.BenchmarksCases.Where(c => c.Descriptor.Type == typeof(OptimizerBenchmarks)))
                if (summary[benchmark]?.ResultStatistics?.Mean is double mean) ns[benchmark.Descriptor.WorkloadMethod.Name] = mean;
        if (ns.Count == 0) return "";
        string F(double value, string format = "F1") => value.ToString(format, CultureInfo.InvariantCulture);
        var text = new StringBuilder();
        text.AppendLine($"Optimizers on the CPU ({Device.Cpu.Name}):");
        if (ns.TryGetValue(nameof(AdamWKernel), out double adamw))
        {
            double gbs = AdamWBytesPerElement * KernelElements / adamw;
            text.Append($"  fused AdamW, {Tensors} tensors × {TensorElements} elements: {F(adamw / 1e6, "F2")} ms, {F(gbs)} GB/s");
            if (peaks is not null)
                text.Append($" = {F(100 * gbs / peaks.GBytesPerSecond)} % of the .NET read probe ({F(peaks.GBytesPerSecond)} GB/s)");
            if (ns.TryGetValue(nameof(NativeAxpy), out double axpy))
            {
                double native = AxpyBytesPerElement * KernelElements / axpy;
                text.Append($", {F(100 * gbs / native)} % of native axpy's {F(native)} GB/s");
                text.Append($" (target >= {F(100 * BandwidthTarget, "F0")} %: {(gbs >= BandwidthTarget * native ? "met" : "NOT met")} against axpy)");
            }
            text.AppendLine();
        }
        if (ns.TryGetValue(nameof(ResidentStep), out double resident) && ns.TryGetValue(nameof(PagedStep), out double paged))
        {
            double ratio = paged / resident;
            text.AppendLine($"  AdamW step of {StepElements >> 20} Mi elements ({8 * (long)StepElements >> 20} MiB of state): resident {F(resident / 1e6, "F2")} ms, " +
                            $"paged with a RAM budget of a quarter {F(paged / 1e6, "F2")} ms, paged / resident = {F(ratio, "F2")} " +
                            $"(target <= {F(PagedTarget)}: {(ratio <= PagedTarget ? "met" : "NOT met")})");
            var (r, p) = Interleaved();
            text.AppendLine($"  the same steps alternated in one window, medians of 9: resident {F(r / 1e6, "F2")} ms, paged {F(p / 1e6, "F2")} ms, " +
                            $"paged / resident = {F(p / r, "F2")} (target <= {F(PagedTarget)}: {(p / r <= PagedTarget ? "met" : "NOT met")})");
        }
        return text.ToString();
    }
}
