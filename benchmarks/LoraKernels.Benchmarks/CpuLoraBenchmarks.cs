using BenchmarkDotNet.Attributes;
using LoraKernels.Families.Lora;
using LoraKernels.Ops;

namespace LoraKernels.Benchmarks;

/// <summary>
/// The fused CPU kernels (Lora.Forward / Lora.Backward on Device.Cpu) beside the composition of
/// OpenBLAS GEMMs a user would otherwise write for the same math, on the same fp32 inputs.
/// Forward: y = x·W0ᵀ; u = x·Aᵀ; y += s·u·Bᵀ (three sgemm calls, beta = 1 for the last).
/// Backward: du = s·dy·B; dB = s·dyᵀ·u; dA = duᵀ·x; dx = dy·W0; dx += du·A (five calls).
/// in = out, r = 16, no dropout and no bias (the baseline would need a masked copy of x otherwise).
/// Fused*: the public ops, which allocate their outputs on each call (as users get them; fresh
/// pages cost page faults). Fused*Into: the same kernels through the device's backend, writing
/// into preallocated outputs as the baseline does, which compares the kernels alone.
/// </summary>
[BenchmarkCategory("cpu")]
public unsafe class CpuLoraBenchmarks
{
    public const int Rank = 16;
    private const float Scale = 2f;

    [Params(1, 16, 512)]
    public int M { get; set; }

    /// <summary>in = out.</summary>
    [Params(1024, 4096)]
    public int Features { get; set; }

    private Tensor _x = null!, _w0 = null!, _a = null!, _b = null!, _u = null!, _dy = null!;
    private Tensor _y = null!, _uOut = null!, _dx = null!, _dA = null!, _dB = null!;
    private NativeFloats _nx = null!, _nw0 = null!, _na = null!, _nb = null!, _ny = null!, _nuForward = null!, _nu = null!, _ndy = null!;
    private NativeFloats _ndu = null!, _ndx = null!, _ndA = null!, _ndB = null!;

    [GlobalSetup]
    public void Setup()
    {
        var random = new Random(12345);
        float[] Fill(int count, float bound)
        {
            var values = new float[count];
            for (int i = 0; i < count; i++) values[i] = (float)(random.NextDouble() * 2 - 1) * bound;
            return values;
        }
        int n = Features;
        float[] x = Fill(M * n, 1f), w0 = Fill(n * n, 1f / MathF.Sqrt(n)), a = Fill(Rank * n, 1f / MathF.Sqrt(n));
        float[] b = Fill(n * Rank, 0.1f), dy = Fill(M * n, 1f), u = Fill(M * Rank, 1f);

        Device cpu = Device.Cpu;
        _x = Tensor.FromArray(cpu, x, M, n);
        _w0 = Tensor.FromArray(cpu, w0, n, n);
        _a = Tensor.FromArray(cpu, a, Rank, n);
        _b = Tensor.FromArray(cpu, b, n, Rank);
        _u = Tensor.FromArray(cpu, u, M, Rank);
        _dy = Tensor.FromArray(cpu, dy, M, n);
        _y = Tensor.Zeros(cpu, DType.F32, M, n);
        _uOut = Tensor.Zeros(cpu, DType.F32, M, Rank);
        _dx = Tensor.Zeros(cpu, DType.F32, M, n);
        _dA = Tensor.Zeros(cpu, DType.F32, Rank, n);
        _dB = Tensor.Zeros(cpu, DType.F32, n, Rank);

        _nx = new NativeFloats(x);
        _nw0 = new NativeFloats(w0);
        _na = new NativeFloats(a);
        _nb = new NativeFloats(b);
        _nu = new NativeFloats(u);
        _ndy = new NativeFloats(dy);
        _ny = new NativeFloats(M * n);
        _nuForward = new NativeFloats(M * Rank);
        _ndu = new NativeFloats(M * Rank);
        _ndx = new NativeFloats(M * n);
        _ndA = new NativeFloats(Rank * n);
        _ndB = new NativeFloats(n * Rank);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        foreach (IDisposable d in new IDisposable[] { _x, _w0, _a, _b, _u, _dy, _y, _uOut, _dx, _dA, _dB, _nx, _nw0, _na, _nb, _nu, _ndy, _ny, _nuForward, _ndu, _ndx, _ndA, _ndB })
            d.Dispose();
    }

    [Benchmark(Baseline = true), BenchmarkCategory("Forward")]
    public void OpenBlasForward()
    {
        int n = Features;
        OpenBlas.Sgemm(false, true, M, n, n, 1f, _nx.Pointer, n, _nw0.Pointer, n, 0f, _ny.Pointer, n);
        OpenBlas.Sgemm(false, true, M, Rank, n, 1f, _nx.Pointer, n, _na.Pointer, n, 0f, _nuForward.Pointer, Rank);
        OpenBlas.Sgemm(false, true, M, n, Rank, Scale, _nuForward.Pointer, Rank, _nb.Pointer, Rank, 1f, _ny.Pointer, n);
    }

    [Benchmark, BenchmarkCategory("Forward")]
    public void FusedForward()
    {
        var (y, u) = Lora.Forward(_x, _w0, null, _a, _b, Scale);
        y.Dispose();
        u.Dispose();
    }

    [Benchmark, BenchmarkCategory("Forward")]
    public void FusedForwardInto() => ILoraKernels.On(Device.Cpu).Forward(_x, _w0, null, _a, _b, Scale, 0f, 0, _y, _uOut);

    [Benchmark(Baseline = true), BenchmarkCategory("Backward")]
    public void OpenBlasBackward()
    {
        int n = Features;
        OpenBlas.Sgemm(false, false, M, Rank, n, Scale, _ndy.Pointer, n, _nb.Pointer, Rank, 0f, _ndu.Pointer, Rank);
        OpenBlas.Sgemm(true, false, n, Rank, M, Scale, _ndy.Pointer, n, _nu.Pointer, Rank, 0f, _ndB.Pointer, Rank);
        OpenBlas.Sgemm(true, false, Rank, n, M, 1f, _ndu.Pointer, Rank, _nx.Pointer, n, 0f, _ndA.Pointer, n);
        OpenBlas.Sgemm(false, false, M, n, n, 1f, _ndy.Pointer, n, _nw0.Pointer, n, 0f, _ndx.Pointer, n);
        OpenBlas.Sgemm(false, false, M, n, Rank, 1f, _ndu.Pointer, Rank, _na.Pointer, n, 1f, _ndx.Pointer, n);
    }

    [Benchmark, BenchmarkCategory("Backward")]
    public void FusedBackward()
    {
        var (dx, dA, dB) = Lora.Backward(_x, _w0, _a, _b, _u, _dy, Scale);
        dx?.Dispose();
        dA?.Dispose();
        dB?.Dispose();
    }

    [Benchmark, BenchmarkCategory("Backward")]
    public void FusedBackwardInto() => ILoraKernels.On(Device.Cpu).Backward(_x, _w0, _a, _b, _u, _dy, Scale, 0f, 0, _dx, _dA, _dB);

    /// <summary>
    /// Runs the fused ops and the baseline once each and returns, per output, the largest
    /// |fused - baseline| divided by the largest |baseline| element: a check that both sides of
    /// every comparison compute the same math (Program refuses to benchmark otherwise).
    /// </summary>
    internal (string Output, double Error)[] CompareWithBaseline()
    {
        OpenBlasForward();
        OpenBlasBackward();
        var (y, u) = Lora.Forward(_x, _w0, null, _a, _b, Scale);
        var (dx, dA, dB) = Lora.Backward(_x, _w0, _a, _b, _u, _dy, Scale);
        using (y) using (u) using (dx) using (dA) using (dB)
        {
            return
            [
                ("y", Difference(y, _ny)), ("u", Difference(u, _nuForward)),
                ("dx", Difference(dx!, _ndx)), ("dA", Difference(dA!, _ndA)), ("dB", Difference(dB!, _ndB)),
            ];
        }
    }

    private static double Difference(Tensor fused, NativeFloats baseline)
    {
        float[] values = fused.ToArray();
        var expected = new ReadOnlySpan<float>(baseline.Pointer, baseline.Length);
        double largest = 0, error = 0;
        for (int i = 0; i < values.Length; i++)
        {
            largest = Math.Max(largest, Math.Abs(expected[i]));
            error = Math.Max(error, Math.Abs(values[i] - expected[i]));
        }
        return values.Length == expected.Length && largest > 0 ? error / largest : double.PositiveInfinity;
    }
}
