using System.Globalization;
using System.Text;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Reports;
using LoraKernels.Families.Qlora;
using LoraKernels.Interop;
using LoraKernels.Runtime;

namespace LoraKernels.Benchmarks;

/// <summary>
/// The CPU NF4 product y = x·deq(W)ᵀ (lk_cpu_nf4_matmul, bitsandbytes' layout: block size 64, plain
/// statistics) on a 4096 × 4096 weight at M = 1 (decode) and M = 16, beside what a user would run
/// otherwise: the fp32 GEMV/GEMM of the same shape on a dense W (OpenBLAS, the baseline, and
/// lk_cpu_sgemm), and dequantize-then-sgemm (lk_cpu_dequantize_4bit into a dense buffer, then
/// lk_cpu_sgemm). Every method writes into preallocated outputs. At these M the product is bound by
/// reading W, so the table reports GB/s counted in NF4 bytes (codes n/2 + absmax 4n/64 + x + y) for
/// every method, i.e. the rate at which each streams the same information, and its fraction of the
/// measured memory bandwidth; the fp32 methods actually read 8× more bytes of W. The NF4 weight
/// (9.4 MB) would stay in the last-level cache between calls, so the NF4 methods rotate through
/// <see cref="Copies"/> copies of it (75 MB, like the 64 MB fp32 W) and each call reads W from memory.
/// GlobalSetup checks that the NF4 product equals dequantize-then-sgemm before anything is timed.
/// </summary>
[BenchmarkCategory("cpu", "nf4")]
public unsafe class Nf4Benchmarks
{
    public const int Features = 4096;
    public const int BlockSize = 64;
    public const int Copies = 8;

    [Params(1, 16)]
    public int M { get; set; }

    private Tensor _x = null!, _y = null!, _dense = null!, _dequantized = null!;
    private QuantizedWeight[] _weights = null!;
    private int _next;
    private NativeFloats _nx = null!, _nw = null!, _ny = null!;
    // lk_cpu_sgemm's operands, leased for the whole run.
    private BufferLeases _leases = null!;
    private float* _xPointer, _densePointer, _dequantizedPointer, _yPointer;

    [GlobalSetup]
    public void Setup()
    {
        var random = new Random(4096);
        float[] Fill(int count, float bound)
        {
            var values = new float[count];
            for (int i = 0; i < count; i++) values[i] = (float)(random.NextDouble() * 2 - 1) * bound;
            return values;
        }
        const int n = Features;
        float[] x = Fill(M * n, 1f), w = Fill(n * n, 1f / MathF.Sqrt(n));
        Device cpu = Device.Cpu;
        _x = Tensor.FromArray(cpu, x, M, n);
        _y = Tensor.Zeros(cpu, DType.F32, M, n);
        _dense = Tensor.FromArray(cpu, w, n, n);
        using (QuantizedWeight quantized = Ops.Nf4.Quantize(_dense, QuantType.Nf4, BlockSize))
        {
            IReadOnlyList<Ops.StateTensor> state = Ops.Nf4.ExportState(quantized);
            _weights = Enumerable.Range(0, Copies).Select(_ => Ops.Nf4.ImportState(cpu, state)).ToArray();
        }
        _dequantized = Tensor.Zeros(cpu, DType.F32, n, n);
        _leases = new BufferLeases();
        _xPointer = (float*)_leases.Address(_x);
        _densePointer = (float*)_leases.Address(_dense);
        _dequantizedPointer = (float*)_leases.Address(_dequantized);
        _yPointer = (float*)_leases.Address(_y);
        _nx = new NativeFloats(x);
        _nw = new NativeFloats(w);
        _ny = new NativeFloats(M * n);
        CheckSameMath();
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _leases.Dispose();
        foreach (IDisposable d in new IDisposable[] { _x, _y, _dense, _dequantized, _nx, _nw, _ny }.Concat(_weights)) d.Dispose();
    }

    [Benchmark(Baseline = true)]
    public void Fp32OpenBlas() =>
        OpenBlas.Sgemm(false, true, M, Features, Features, 1f, _nx.Pointer, Features, _nw.Pointer, Features, 0f, _ny.Pointer, Features);

    [Benchmark]
    public void Fp32LkSgemm() =>
        Check.Cpu(NativeCpu.lk_cpu_sgemm(0, 1, M, Features, Features, 1f, _xPointer, Features, _densePointer, Features,
                                         0f, _yPointer, Features));

    [Benchmark]
    public void DequantizeThenSgemm()
    {
        IQloraKernels.On(Device.Cpu).Dequantize(NextWeight(), _dequantized);
        Check.Cpu(NativeCpu.lk_cpu_sgemm(0, 1, M, Features, Features, 1f, _xPointer, Features, _dequantizedPointer, Features,
                                         0f, _yPointer, Features));
    }

    [Benchmark]
    public void Nf4Matmul() => IQloraKernels.On(Device.Cpu).Matmul(_x, NextWeight(), null, _y);

    private QuantizedWeight NextWeight() => _weights[_next++ % Copies];

    /// <summary>Bytes of one NF4 product at M: packed codes, fp32 absmax, x read and y written.</summary>
    public static double Nf4Bytes(int m) =>
        (double)Features * Features / 2 + 4.0 * Features * Features / BlockSize + 4.0 * m * Features * 2;

    /// <summary>The NF4 product and dequantize-then-sgemm must agree (both are fp32 sums over the same deq(W)).</summary>
    private void CheckSameMath()
    {
        Nf4Matmul();
        float[] fused = _y.ToArray();
        DequantizeThenSgemm();
        float[] reference = _y.ToArray();
        double largest = reference.Max(v => Math.Abs((double)v)), error = 0;
        for (int i = 0; i < fused.Length; i++) error = Math.Max(error, Math.Abs(fused[i] - (double)reference[i]));
        // Sums of 4096 fp32 products in different orders: far below 1e-4 of the largest output.
        if (!(error <= 1e-4 * largest))
            throw new InvalidOperationException($"Nf4Matmul and dequantize-then-sgemm disagree: max |difference| {error:E2} vs max |y| {largest:E2}.");
    }

    /// <summary>The NF4 table printed after BenchmarkDotNet (empty when no Nf4Benchmarks case ran).</summary>
    internal static string Table(IEnumerable<Summary> summaries, MachinePeaks? peaks)
    {
        var rows = new List<string[]>();
        foreach (Summary summary in summaries)
        {
            foreach (var benchmark in summary.BenchmarksCases.Where(c => c.Descriptor.Type == typeof(Nf4Benchmarks)))
            {
                double? ns = summary[benchmark]?.ResultStatistics?.Mean;
                int m = Convert.ToInt32(benchmark.Parameters["M"], CultureInfo.InvariantCulture);
                double? gbs = ns is { } t ? Nf4Bytes(m) / t : null;
                rows.Add([
                    benchmark.Descriptor.WorkloadMethod.Name, m.ToString(CultureInfo.InvariantCulture),
                    ns is { } time ? (time / 1e3).ToString("F1", CultureInfo.InvariantCulture) + " µs" : "NA",
                    gbs is { } g ? g.ToString("F1", CultureInfo.InvariantCulture) : "NA",
                    gbs is { } rate && peaks is not null ? (100 * rate / peaks.GBytesPerSecond).ToString("F1", CultureInfo.InvariantCulture) + " %" : "NA",
                ]);
            }
        }
        if (rows.Count == 0) return "";
        string[] header = ["method", "M", "mean time", "GB/s (NF4 bytes)", "% BW peak"];
        int[] widths = header.Select((h, i) => Math.Max(h.Length, rows.Max(r => r[i].Length))).ToArray();
        var text = new StringBuilder();
        text.AppendLine($"NF4 y = x·deq(W)ᵀ, W {Features} × {Features}, block size {BlockSize}, fp32 x and y; GB/s counts the NF4 bytes");
        text.AppendLine("(codes + absmax + x + y) for every method, so it compares rates of the same work; fp32 methods read 8× more of W.");
        void Line(string[] cells) => text.AppendLine("| " + string.Join(" | ", cells.Select((c, i) => c.PadRight(widths[i]))) + " |");
        Line(header);
        text.AppendLine("|" + string.Join("|", widths.Select(w => new string('-', w + 2))) + "|");
        foreach (string[] row in rows) Line(row);
        return text.ToString();
    }
}
