using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace LoraKernels.Benchmarks;

/// <summary>
/// The machine's measured limits, taken in the same run as the benchmarks so each result can be
/// reported as a fraction of them: the fp32 FMA rate (every core, the widest vectors, enough
/// independent accumulators to cover the FMA latency) and the memory bandwidth (every core
/// streaming reads through an array far larger than the last-level cache).
/// </summary>
internal sealed record MachinePeaks(double Gflops, string FmaKernel, double GBytesPerSecond, long StreamBytes, int Threads)
{
    /// <summary>Set by Program before the benchmarks run; read by the summary columns (same process: in-process toolchain).</summary>
    public static MachinePeaks? Current { get; set; }

    public override string ToString() =>
        $"fp32 FMA peak {Gflops:F1} GFLOP/s ({FmaKernel}, {Threads} threads); memory read bandwidth {GBytesPerSecond:F1} GB/s ({StreamBytes / (1L << 30)} GiB stream)";

    public static MachinePeaks Measure(long streamBytes = 1L << 30)
    {
        int threads = Environment.ProcessorCount;
        var (gflops, kernel) = MeasureFma(threads);
        double bandwidth = MeasureReadBandwidth(threads, streamBytes);
        return new MachinePeaks(gflops, kernel, bandwidth, streamBytes, threads);
    }

    // ---- FMA -------------------------------------------------------------------------------------

    private const int FmaIterations = 20_000_000;
    // Independent accumulators: at least FMA latency (4 cycles) × FMA pipes (2) on current x86
    // cores, and few enough to stay in registers (32 zmm with AVX-512, 16 ymm with AVX2 alone).
    private const int Accumulators512 = 16;
    private const int Accumulators256 = 12;

    private static (double Gflops, string Kernel) MeasureFma(int threads)
    {
        bool wide = Vector512.IsHardwareAccelerated;
        int lanes = wide ? Vector512<float>.Count : Vector256<float>.Count;
        int accumulators = wide ? Accumulators512 : Accumulators256;
        Func<int, float> kernel = wide ? Fma512 : Fma256;
        kernel(1000);  // JIT and warm-up
        double best = 0;
        for (int attempt = 0; attempt < 7; attempt++)  // the best of several: other processes only ever slow it down
        {
            var clock = Stopwatch.StartNew();
            var sink = new float[threads];
            Parallel.For(0, threads, new ParallelOptions { MaxDegreeOfParallelism = threads }, t => sink[t] = kernel(FmaIterations));
            double seconds = clock.Elapsed.TotalSeconds;
            GC.KeepAlive(sink);
            double flops = 2.0 * lanes * accumulators * (double)FmaIterations * threads;
            best = Math.Max(best, flops / seconds / 1e9);
        }
        return (best, wide ? "Vector512 FMA" : "Vector256 FMA");
    }

    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static float Fma512(int iterations)
    {
        Vector512<float> m = Vector512.Create(0.999999f), a = Vector512.Create(1e-7f);
        Vector512<float> c0 = Vector512.Create(1f), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0;
        Vector512<float> c8 = c0, c9 = c0, c10 = c0, c11 = c0, c12 = c0, c13 = c0, c14 = c0, c15 = c0;
        for (int i = 0; i < iterations; i++)
        {
            c0 = Vector512.FusedMultiplyAdd(c0, m, a); c1 = Vector512.FusedMultiplyAdd(c1, m, a);
            c2 = Vector512.FusedMultiplyAdd(c2, m, a); c3 = Vector512.FusedMultiplyAdd(c3, m, a);
            c4 = Vector512.FusedMultiplyAdd(c4, m, a); c5 = Vector512.FusedMultiplyAdd(c5, m, a);
            c6 = Vector512.FusedMultiplyAdd(c6, m, a); c7 = Vector512.FusedMultiplyAdd(c7, m, a);
            c8 = Vector512.FusedMultiplyAdd(c8, m, a); c9 = Vector512.FusedMultiplyAdd(c9, m, a);
            c10 = Vector512.FusedMultiplyAdd(c10, m, a); c11 = Vector512.FusedMultiplyAdd(c11, m, a);
            c12 = Vector512.FusedMultiplyAdd(c12, m, a); c13 = Vector512.FusedMultiplyAdd(c13, m, a);
            c14 = Vector512.FusedMultiplyAdd(c14, m, a); c15 = Vector512.FusedMultiplyAdd(c15, m, a);
        }
        Vector512<float> sum = ((c0 + c1) + (c2 + c3)) + ((c4 + c5) + (c6 + c7)) + ((c8 + c9) + (c10 + c11)) + ((c12 + c13) + (c14 + c15));
        return Vector512.Sum(sum);
    }

    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static float Fma256(int iterations)
    {
        Vector256<float> m = Vector256.Create(0.999999f), a = Vector256.Create(1e-7f);
        Vector256<float> c0 = Vector256.Create(1f), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0;
        Vector256<float> c8 = c0, c9 = c0, c10 = c0, c11 = c0;
        for (int i = 0; i < iterations; i++)
        {
            c0 = Vector256.FusedMultiplyAdd(c0, m, a); c1 = Vector256.FusedMultiplyAdd(c1, m, a);
            c2 = Vector256.FusedMultiplyAdd(c2, m, a); c3 = Vector256.FusedMultiplyAdd(c3, m, a);
            c4 = Vector256.FusedMultiplyAdd(c4, m, a); c5 = Vector256.FusedMultiplyAdd(c5, m, a);
            c6 = Vector256.FusedMultiplyAdd(c6, m, a); c7 = Vector256.FusedMultiplyAdd(c7, m, a);
            c8 = Vector256.FusedMultiplyAdd(c8, m, a); c9 = Vector256.FusedMultiplyAdd(c9, m, a);
            c10 = Vector256.FusedMultiplyAdd(c10, m, a); c11 = Vector256.FusedMultiplyAdd(c11, m, a);
        }
        Vector256<float> sum = ((c0 + c1) + (c2 + c3)) + ((c4 + c5) + (c6 + c7)) + ((c8 + c9) + (c10 + c11));
        return Vector256.Sum(sum);
    }

    // ---- memory bandwidth ------------------------------------------------------------------------

    private static unsafe double MeasureReadBandwidth(int threads, long bytes)
    {
        long count = bytes / sizeof(float);
        float* data = (float*)NativeMemory.AlignedAlloc((nuint)bytes, 64);
        try
        {
            // Touch every page (and give the sum something non-trivial to read).
            Parallel.For(0, threads, new ParallelOptions { MaxDegreeOfParallelism = threads }, t =>
            {
                var (begin, end) = Slice(count, threads, t);
                new Span<float>(data + begin, checked((int)(end - begin))).Fill(1f / (t + 1));
            });
            double best = 0;
            for (int pass = 0; pass < 4; pass++)
            {
                var sums = new float[threads];
                double seconds = TimeOnDedicatedThreads(threads, t =>
                {
                    var (begin, end) = Slice(count, threads, t);
                    sums[t] = SumRange(data + begin, end - begin);
                });
                GC.KeepAlive(sums);
                if (pass > 0) best = Math.Max(best, bytes / seconds / 1e9);  // pass 0 warms up
            }
            return best;
        }
        finally
        {
            NativeMemory.AlignedFree(data);
        }
    }

    // One dedicated thread per part, released together: Parallel.For may run several parts on
    // one pool thread while the pool is still growing, which halves a streaming read's rate.
    private static double TimeOnDedicatedThreads(int threads, Action<int> body)
    {
        using var start = new ManualResetEventSlim(false);
        var workers = new Thread[threads];
        for (int t = 0; t < threads; t++)
        {
            int part = t;
            workers[t] = new Thread(() => { start.Wait(); body(part); }) { IsBackground = true };
            workers[t].Start();
        }
        var clock = Stopwatch.StartNew();
        start.Set();
        foreach (Thread worker in workers) worker.Join();
        return clock.Elapsed.TotalSeconds;
    }

    private static (long Begin, long End) Slice(long count, int parts, int part)
    {
        long perPart = count / parts / 64 * 64;
        long begin = part * perPart;
        return (begin, part == parts - 1 ? count : begin + perPart);
    }

    // AggressiveOptimization: called only a few times, so tiered JIT would otherwise time the
    // unoptimised tier-0 loop and understate the bandwidth.
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static unsafe float SumRange(float* p, long n)
    {
        // Four independent accumulators so the adds never limit a streaming read.
        Vector256<float> s0 = default, s1 = default, s2 = default, s3 = default;
        long i = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            Vector512<float> w0 = default, w1 = default, w2 = default, w3 = default;
            for (; i + 64 <= n; i += 64)
            {
                w0 += Vector512.LoadAligned(p + i);
                w1 += Vector512.LoadAligned(p + i + 16);
                w2 += Vector512.LoadAligned(p + i + 32);
                w3 += Vector512.LoadAligned(p + i + 48);
            }
            return Vector512.Sum((w0 + w1) + (w2 + w3)) + ScalarTail(p, i, n);
        }
        for (; i + 32 <= n; i += 32)
        {
            s0 += Vector256.LoadAligned(p + i);
            s1 += Vector256.LoadAligned(p + i + 8);
            s2 += Vector256.LoadAligned(p + i + 16);
            s3 += Vector256.LoadAligned(p + i + 24);
        }
        return Vector256.Sum((s0 + s1) + (s2 + s3)) + ScalarTail(p, i, n);
    }

    private static unsafe float ScalarTail(float* p, long i, long n)
    {
        float sum = 0;
        for (; i < n; i++) sum += p[i];
        return sum;
    }
}
