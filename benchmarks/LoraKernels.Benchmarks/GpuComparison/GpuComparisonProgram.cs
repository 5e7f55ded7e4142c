using System.Globalization;
using System.Text;
using System.Text.Json;
using LoraKernels.Families.Lora;
using LoraKernels.Families.Qlora;
using LoraKernels.Runtime;

namespace LoraKernels.Benchmarks.GpuComparison;

/// <summary>
/// The GPU bundle's lean comparison (`LoraKernels.Tests gpu-compare --out DIR [--quick]`): LoRA forward and
/// backward at M ∈ {1, 16, 512, 8192} tokens for in × out = 4096 × 4096 and 4096 × 14336, r = 16, bf16,
/// the fused kernels against the cuBLAS sequence PEFT runs (LoraForwardPath.VendorGemm, CublasLoraBackward),
/// and the 4-bit decode (M = 1, 16) against cuBLAS's bf16 GEMV of the same weight. Each case runs once,
/// is checked against the CPU on sampled rows (SampledReference) and only then timed: CUDA events around
/// each call on the device's stream, the L2 cache (50 MB on an H100, which holds a 4096² bf16 W0) flushed
/// by a memset of twice its size before every call, at least 5 and at most 30 calls or about 0.4 s of GPU
/// time, the median reported. Writes lorakernels.json and lorakernels.md to DIR (peft_compare.py --merge
/// joins them with PyTorch's numbers). Exit 0 when every case checked out, 1 when one did not, 2 without a GPU.
/// `--quick` runs 1024² at M ∈ {1, 16, 512} only (a smoke test); `--probe` only says which device would run. `--device simt` runs the whole program on
/// the emulator at 96 x 80 (M = 1, 16, 40) with a wall-clock timer: the tests' check of its cases and checks.
/// </summary>
public static class GpuComparisonProgram
{
    public const string Command = "gpu-compare";
    private const int Rank = 16;
    private const float Scale = 2f;  // lora_alpha 32 / r 16
    private const int MinCalls = 5, MaxCalls = 30;
    private const double TimeBudgetMs = 400;

    private sealed record Result(string Op, int M, int In, int Out, string Impl, double? MedianMs, double? MinMs, double Flops,
                                 double Bytes, double WorstRatio, bool Passed);

    public static int Run(string[] args)
    {
        string outDir = ".";
        for (int i = 0; i < args.Length - 1; i++)
            if (args[i] == "--out") outDir = args[i + 1];
        bool quick = args.Contains("--quick"), emulated = args.Contains("simt");
        Target target;
        if (emulated)
        {
            target = new Target(Device.Simt, ((SimtDevice)Device.Simt).KernelDevice, new WallClockTimer(), 1 << 20,
                                $"{Device.Simt.Name}, wall clock (a check of the program, not a measurement)");
        }
        else if (Device.IsCudaAvailable)
        {
            var cuda = (CudaDevice)Device.Cuda();
            target = new Target(cuda, cuda.KernelDevice, new CudaEventTimer(cuda.KernelDevice), 2L * Math.Max(cuda.KernelDevice.L2CacheBytes, 1 << 20),
                                $"{cuda.Name}, tensor cores {cuda.TensorCores}, NVRTC {NvrtcCompiler.Version.Major}.{NvrtcCompiler.Version.Minor} " +
                                $"target {cuda.NvrtcTarget}, driver {CudaDevice.DriverVersion}, stream-ordered allocation {cuda.StreamOrderedAllocation}");
        }
        else
        {
            Console.Error.WriteLine($"{Command}: no usable CUDA device: {CudaReason()}");
            return 2;
        }
        if (args.Contains("--probe"))
        {
            Console.WriteLine(target.Description);
            return 0;
        }
        Directory.CreateDirectory(outDir);
        Console.WriteLine($"{Command}: {target.Description}");
        (int In, int Out)[] shapes = emulated ? [(96, 80)] : quick ? [(1024, 1024)] : [(4096, 4096), (4096, 14336)];
        int[] tokens = emulated ? [1, 16, 40] : quick ? [1, 16, 512] : [1, 16, 512, 8192];

        var results = new List<Result>();
        using IGpuTimer timer = target.Timer;
        using DeviceBuffer flush = target.Kernels.Allocate(target.FlushBytes);
        var run = new Session(target, timer, flush);
        foreach (var (inFeatures, outFeatures) in shapes)
        {
            var weights = Weights.Create(target.Device, inFeatures, outFeatures);
            try
            {
                foreach (int m in tokens)
                    results.AddRange(LoraCases(run, weights, m));
                foreach (int m in tokens.Where(t => t <= 16))
                    results.AddRange(Nf4Cases(run, weights, m));
            }
            finally
            {
                weights.Dispose();
            }
        }

        File.WriteAllText(Path.Combine(outDir, "lorakernels.json"), Json(target, results));
        string table = Markdown(target, results);
        File.WriteAllText(Path.Combine(outDir, "lorakernels.md"), table);
        Console.WriteLine(table);
        bool passed = results.All(r => r.Passed);
        Console.WriteLine(passed ? $"{Command}: every case checked against the CPU" : $"{Command}: FAILED: some outputs disagree with the CPU");
        return passed ? 0 : 1;
    }

    /// <summary>The device the cases run on, its kernel device (memset, vendor math), its timer and the L2 flush size.</summary>
    private sealed record Target(Device Device, IKernelDevice Kernels, IGpuTimer Timer, long FlushBytes, string Description);

    /// <summary>What every case measures with.</summary>
    private sealed record Session(Target Target, IGpuTimer Timer, DeviceBuffer Flush);

    /// <summary>The frozen base and adapter of one shape, on the GPU (bf16) and on the host (the same rounded values).</summary>
    private sealed class Weights : IDisposable
    {
        public required int In, Out;
        public required Tensor W0, A, B;
        public required float[] W0Host, AHost, BHost;
        public required QuantizedWeight W4;
        public required float[] W4Host;  // deq(W) as the 4-bit kernels see it (fp32)

        public static Weights Create(Device cuda, int inFeatures, int outFeatures)
        {
            float[] w0 = Values(outFeatures * inFeatures, 1f / MathF.Sqrt(inFeatures), 1);
            float[] a = Values(Rank * inFeatures, 1f / MathF.Sqrt(inFeatures), 2);
            float[] b = Values(outFeatures * Rank, 0.1f, 3);
            Tensor w0T = Tensor.FromArray(cuda, w0, DType.BF16, outFeatures, inFeatures);
            QuantizedWeight w4 = Ops.Nf4.Quantize(w0T, QuantType.Nf4, 64, doubleQuant: false);
            using Tensor deq = Ops.Nf4.Dequantize(w4);
            return new Weights
            {
                In = inFeatures, Out = outFeatures,
                W0 = w0T, A = Tensor.FromArray(cuda, a, DType.BF16, Rank, inFeatures), B = Tensor.FromArray(cuda, b, DType.BF16, outFeatures, Rank),
                W0Host = w0, AHost = a, BHost = b, W4 = w4, W4Host = deq.ToArray(),
            };
        }

        public void Dispose()
        {
            W0.Dispose();
            A.Dispose();
            B.Dispose();
            W4.Dispose();
        }
    }

    /// <summary>n values uniform in ±bound, rounded to bf16 (so the host holds what the GPU holds).</summary>
    private static float[] Values(int n, float bound, ulong stream)
    {
        var values = new float[n];
        Parallel.For(0, (n + 65535) / 65536, chunk =>
        {
            var random = new SplitMix64(stream * 0x9E3779B97F4A7C15ul + (ulong)chunk);
            for (int i = chunk * 65536; i < Math.Min(n, (chunk + 1) * 65536); i++)
                values[i] = BFloat16.Round(random.NextUniform(bound));
        });
        return values;
    }

    private static IEnumerable<Result> LoraCases(Session run, Weights w, int m)
    {
        Device cuda = run.Target.Device;
        int n = w.In, o = w.Out;
        float[] x = Values(m * n, 1f, 10 + (ulong)m), dy = Values(m * o, 1f, 20 + (ulong)m);
        using Tensor xT = Tensor.FromArray(cuda, x, DType.BF16, m, n), dyT = Tensor.FromArray(cuda, dy, DType.BF16, m, o);
        using Tensor y = Tensor.Empty(cuda, DType.BF16, m, o), u = Tensor.Empty(cuda, DType.F32, m, Rank);
        using Tensor yBlas = Tensor.Empty(cuda, DType.BF16, m, o), uBlas = Tensor.Empty(cuda, DType.F32, m, Rank);
        ILoraKernels fused = ILoraKernels.On(cuda);
        VendorLoraForward vendor = VendorLoraForward.On(cuda);
        double forwardFlops = 2.0 * m * ((double)n * o + (double)Rank * (n + o));
        double forwardBytes = 2.0 * ((double)o * n + Rank * (n + o) + (double)m * (n + o)) + 4.0 * m * Rank;
        int[] rows = SampledReference.Rows(m);

        // u in double for the references: u[t, j] = Σ_k x[t, k]·A[j, k] (every row: the backward needs all).
        double[] uRef = new double[(long)m * Rank];
        Parallel.For(0, m, t =>
        {
            for (int j = 0; j < Rank; j++)
            {
                double s = 0;
                for (int k = 0; k < n; k++) s += (double)x[(long)t * n + k] * w.AHost[(long)j * n + k];
                uRef[(long)t * Rank + j] = s;
            }
        });
        double ForwardTerm(int i, int j, int k) => k < n
            ? (double)x[(long)i * n + k] * w.W0Host[(long)j * n + k]
            : Scale * uRef[(long)i * Rank + (k - n)] * w.BHost[(long)j * Rank + (k - n)];

        yield return Measure(run, "forward", m, n, o, "lorakernels", forwardFlops, forwardBytes,
                             () => fused.Forward(xT, w.W0, null, w.A, w.B, Scale, 0f, 0, y, u),
                             () => SampledReference.WorstRatio(y.ToArray(), o, rows, n + Rank, ForwardTerm));
        yield return Measure(run, "forward", m, n, o, "cublas", forwardFlops, forwardBytes,
                             () => vendor.Forward(xT, w.W0, null, w.A, w.B, Scale, 0f, 0, yBlas, uBlas),
                             () => SampledReference.WorstRatio(yBlas.ToArray(), o, rows, n + Rank, ForwardTerm));

        // Backward from the fused forward's u (fp32; bf16 for cuBLAS, as PEFT keeps it).
        fused.Forward(xT, w.W0, null, w.A, w.B, Scale, 0f, 0, y, u);
        using Tensor u16 = Ops.Elementwise.Cast(u, DType.BF16);
        using Tensor dx = Tensor.Empty(cuda, DType.BF16, m, n), dA = Tensor.Empty(cuda, DType.BF16, Rank, n), dB = Tensor.Empty(cuda, DType.BF16, o, Rank);
        using Tensor dxBlas = Tensor.Empty(cuda, DType.BF16, m, n), dABlas = Tensor.Empty(cuda, DType.BF16, Rank, n);
        using Tensor dBBlas = Tensor.Empty(cuda, DType.BF16, o, Rank), du16 = Tensor.Empty(cuda, DType.BF16, m, Rank);
        double backwardFlops = 2.0 * m * ((double)n * o + 2.0 * Rank * (n + o));
        double backwardBytes = 2.0 * ((double)o * n + 2.0 * m * n + (double)m * o + 2.0 * Rank * (n + o)) + 4.0 * m * Rank;
        double[] duRef = new double[(long)m * Rank];
        Parallel.For(0, m, t =>
        {
            for (int j = 0; j < Rank; j++)
            {
                double s = 0;
                for (int k = 0; k < o; k++) s += (double)dy[(long)t * o + k] * w.BHost[(long)k * Rank + j];
                duRef[(long)t * Rank + j] = Scale * s;
            }
        });
        float[] uHost = u.ToArray();
        Func<double> CheckBackward(Tensor dxOut, Tensor dAOut, Tensor dBOut) => () =>
        {
            double dxRatio = SampledReference.WorstRatio(dxOut.ToArray(), n, rows, o + Rank, (i, k, t) => t < o
                ? (double)dy[(long)i * o + t] * w.W0Host[(long)t * n + k]
                : duRef[(long)i * Rank + (t - o)] * w.AHost[(long)(t - o) * n + k]);
            double dARatio = SampledReference.WorstRatio(dAOut.ToArray(), n, Enumerable.Range(0, Rank).ToArray(), m,
                                                         (j, k, t) => duRef[(long)t * Rank + j] * x[(long)t * n + k]);
            double dBRatio = SampledReference.WorstRatio(dBOut.ToArray(), Rank, SampledReference.Rows(o), m,
                                                         (i, j, t) => Scale * (double)dy[(long)t * o + i] * uHost[(long)t * Rank + j]);
            return Math.Max(dxRatio, Math.Max(dARatio, dBRatio));
        };
        yield return Measure(run, "backward", m, n, o, "lorakernels", backwardFlops, backwardBytes,
                             () => fused.Backward(xT, w.W0, w.A, w.B, u, dyT, Scale, 0f, 0, dx, dA, dB), CheckBackward(dx, dA, dB));
        var blas = new CublasLoraBackward(run.Target.Kernels.VendorMath, m, n, o, Rank, Scale);
        using var leases = new BufferLeases();
        ulong[] p = [leases.Address(xT), leases.Address(w.W0), leases.Address(w.A), leases.Address(w.B), leases.Address(u16),
                     leases.Address(dyT), leases.Address(dxBlas), leases.Address(dABlas), leases.Address(dBBlas), leases.Address(du16)];
        yield return Measure(run, "backward", m, n, o, "cublas", backwardFlops, backwardBytes,
                             () => blas.Run(p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9]), CheckBackward(dxBlas, dABlas, dBBlas));
    }

    private static IEnumerable<Result> Nf4Cases(Session run, Weights w, int m)
    {
        Device cuda = run.Target.Device;
        int n = w.In, o = w.Out;
        float[] x = Values(m * n, 1f, 30 + (ulong)m);
        using Tensor xT = Tensor.FromArray(cuda, x, DType.BF16, m, n);
        using Tensor y = Tensor.Empty(cuda, DType.BF16, m, o), yBlas = Tensor.Empty(cuda, DType.BF16, m, o);
        int[] rows = SampledReference.Rows(m);
        double flops = 2.0 * m * n * o;
        IQloraKernels kernels = IQloraKernels.On(cuda);
        yield return Measure(run, "nf4_decode", m, n, o, "lorakernels", flops,
                             w.W4.CodeBytes + w.W4.StatisticsBytes + 2.0 * m * (n + o),
                             () => kernels.Matmul(xT, w.W4, null, y),
                             () => SampledReference.WorstRatio(y.ToArray(), o, rows, n, (i, j, k) => (double)x[(long)i * n + k] * w.W4Host[(long)j * n + k]));
        using var leases = new BufferLeases();
        ulong xAddress = leases.Address(xT), wAddress = leases.Address(w.W0), yAddress = leases.Address(yBlas);
        IVendorMath blas = run.Target.Kernels.VendorMath;
        yield return Measure(run, "nf4_decode", m, n, o, "cublas_bf16", flops, 2.0 * ((double)o * n + m * (n + o)),
                             () => blas.GemmBf16(false, true, m, o, n, 1f, xAddress, n, wAddress, n, 0f, yAddress, o, DType.BF16),
                             () => SampledReference.WorstRatio(yBlas.ToArray(), o, rows, n, (i, j, k) => (double)x[(long)i * n + k] * w.W0Host[(long)j * n + k]));
    }

    /// <summary>Runs the case once, checks it, and times it (see the class comment) only when the check passed.</summary>
    private static Result Measure(Session run, string op, int m, int n, int o, string impl, double flops, double bytes, Action call,
                                  Func<double> check)
    {
        call();
        run.Target.Device.Synchronize();
        double ratio = check();
        bool passed = ratio <= 1;
        double? median = null, min = null;
        if (passed)
        {
            var times = new List<double>();
            while (times.Count < MinCalls || (times.Count < MaxCalls && times.Sum() < TimeBudgetMs))
            {
                run.Target.Kernels.Memset(run.Flush, 0, run.Flush.SizeInBytes, (byte)times.Count);
                run.Timer.Start();
                call();
                times.Add(run.Timer.Stop());
            }
            times.Sort();
            (median, min) = (times[times.Count / 2], times[0]);
        }
        var result = new Result(op, m, n, o, impl, median, min, flops, bytes, ratio, passed);
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"  {op,-10} M={m,-5} {n}x{o,-6} {impl,-12} {(passed ? $"{median:F4} ms ({flops / median!.Value / 1e9:F1} TFLOP/s, {bytes / median.Value / 1e6:F0} GB/s)" : "NOT TIMED")}  check {ratio:F3}"));
        return result;
    }

    private static string Json(Target target, List<Result> results)
    {
        using var stream = new MemoryStream();
        using (var json = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true }))
        {
            json.WriteStartObject();
            json.WriteString("device", target.Description);
            json.WriteNumber("rank", Rank);
            json.WriteString("dtype", "bf16");
            json.WriteStartArray("results");
            foreach (Result r in results)
            {
                json.WriteStartObject();
                json.WriteString("op", r.Op);
                json.WriteNumber("M", r.M);
                json.WriteNumber("in", r.In);
                json.WriteNumber("out", r.Out);
                json.WriteString("impl", r.Impl);
                if (r.MedianMs is { } median) json.WriteNumber("median_ms", median); else json.WriteNull("median_ms");
                if (r.MinMs is { } min) json.WriteNumber("min_ms", min); else json.WriteNull("min_ms");
                json.WriteNumber("flops", r.Flops);
                json.WriteNumber("bytes", r.Bytes);
                json.WriteNumber("check_worst_ratio", double.IsFinite(r.WorstRatio) ? r.WorstRatio : -1);
                json.WriteBoolean("check_passed", r.Passed);
                json.WriteEndObject();
            }
            json.WriteEndArray();
            json.WriteEndObject();
        }
        return Encoding.UTF8.GetString(stream.ToArray());
    }

    private static string Markdown(Target target, List<Result> results)
    {
        var text = new StringBuilder();
        text.AppendLine(CultureInfo.InvariantCulture, $"LoraKernels vs cuBLAS on {target.Description}; bf16, r = {Rank} (median GPU ms; L2 flushed before each call)");
        text.AppendLine();
        text.AppendLine("| op | M | in x out | lorakernels ms | cublas ms | cublas / lorakernels |");
        text.AppendLine("| --- | ---: | --- | ---: | ---: | ---: |");
        foreach (var group in results.GroupBy(r => (r.Op, r.M, r.In, r.Out)))
        {
            Result? ours = group.FirstOrDefault(r => r.Impl == "lorakernels");
            Result? theirs = group.FirstOrDefault(r => r.Impl.StartsWith("cublas", StringComparison.Ordinal));
            string Ms(Result? r) => r?.MedianMs is { } v ? v.ToString("F4", CultureInfo.InvariantCulture) : r is null ? "-" : "check failed";
            string ratio = ours?.MedianMs is { } a && theirs?.MedianMs is { } b ? (b / a).ToString("F2", CultureInfo.InvariantCulture) : "-";
            text.AppendLine(CultureInfo.InvariantCulture, $"| {group.Key.Op} | {group.Key.M} | {group.Key.In}x{group.Key.Out} | {Ms(ours)} | {Ms(theirs)} | {ratio} |");
        }
        return text.ToString();
    }

    private static string CudaReason()
    {
        try
        {
            return $"Device.Cuda() gives {Device.Cuda().Name}";
        }
        catch (CudaUnavailableException e)
        {
            return e.Message.Split('\n')[0].Trim();
        }
    }
}
