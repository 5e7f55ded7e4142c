using BenchmarkDotNet.Attributes;
using LoraKernels.Ops;
using LoraKernels.Runtime;

namespace LoraKernels.Benchmarks;

/// <summary>
/// The fused forward on a CUDA GPU beside the cuBLAS GEMMs of the same shapes (through the CUDA
/// device's vendor math: y = x·W0ᵀ; u = x·Aᵀ; y += s·u·Bᵀ). Both synchronize before returning,
/// so the clock covers the GPU work and not just the launches. FusedForward is the public op, which
/// allocates its outputs on each call (cuMemAlloc/cuMemFree included); FusedForwardInto runs the same
/// kernels into preallocated outputs, as the cuBLAS baseline does. Runs only where Device.IsCudaAvailable.
/// </summary>
[BenchmarkCategory("cuda")]
public class GpuLoraBenchmarks
{
    public const int Rank = 16;
    private const float Scale = 2f;

    [Params(1, 16, 512)]
    public int M { get; set; }

    /// <summary>in = out.</summary>
    [Params(1024, 4096)]
    public int Features { get; set; }

    private CudaDevice _device = null!;
    private IVendorMath _blas = null!;
    private Tensor _x = null!, _w0 = null!, _a = null!, _b = null!, _y = null!, _u = null!, _yFused = null!, _uFused = null!;

    [GlobalSetup]
    public void Setup()
    {
        _device = (CudaDevice)Device.Cuda();
        _blas = _device.KernelDevice.VendorMath;
        var random = new Random(12345);
        float[] Fill(int count, float bound)
        {
            var values = new float[count];
            for (int i = 0; i < count; i++) values[i] = (float)(random.NextDouble() * 2 - 1) * bound;
            return values;
        }
        int n = Features;
        _x = Tensor.FromArray(_device, Fill(M * n, 1f), M, n);
        _w0 = Tensor.FromArray(_device, Fill(n * n, 1f / MathF.Sqrt(n)), n, n);
        _a = Tensor.FromArray(_device, Fill(Rank * n, 1f / MathF.Sqrt(n)), Rank, n);
        _b = Tensor.FromArray(_device, Fill(n * Rank, 0.1f), n, Rank);
        _y = Tensor.Zeros(_device, DType.F32, M, n);
        _u = Tensor.Zeros(_device, DType.F32, M, Rank);
        _yFused = Tensor.Zeros(_device, DType.F32, M, n);
        _uFused = Tensor.Zeros(_device, DType.F32, M, Rank);
        // Compile (NVRTC) and load the kernels outside the measurement.
        FusedForward();
        FusedForwardInto();
        CublasForward();
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        foreach (Tensor t in new[] { _x, _w0, _a, _b, _y, _u, _yFused, _uFused }) t.Dispose();
    }

    [Benchmark(Baseline = true), BenchmarkCategory("Forward")]
    public void CublasForward()
    {
        int n = Features;
        _blas.Sgemm(false, true, M, n, n, 1f, _x.Address, n, _w0.Address, n, 0f, _y.Address, n);
        _blas.Sgemm(false, true, M, Rank, n, 1f, _x.Address, n, _a.Address, n, 0f, _u.Address, Rank);
        _blas.Sgemm(false, true, M, n, Rank, Scale, _u.Address, Rank, _b.Address, Rank, 1f, _y.Address, n);
        _device.Synchronize();
    }

    [Benchmark, BenchmarkCategory("Forward")]
    public void FusedForward()
    {
        var (y, u) = Lora.Forward(_x, _w0, null, _a, _b, Scale);
        _device.Synchronize();
        y.Dispose();
        u.Dispose();
    }

    [Benchmark, BenchmarkCategory("Forward")]
    public void FusedForwardInto()
    {
        _device.Backend.LoraForward(_x, _w0, null, _a, _b, Scale, 0f, 0, _yFused, _uFused);
        _device.Synchronize();
    }
}
