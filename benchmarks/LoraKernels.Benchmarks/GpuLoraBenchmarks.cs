using BenchmarkDotNet.Attributes;
using LoraKernels.Families.Lora;
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
    // The cuBLAS baseline's operand addresses, leased for the whole run.
    private BufferLeases _leases = null!;
    private ulong _xAddress, _w0Address, _aAddress, _bAddress, _yAddress, _uAddress;

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
        _leases = new BufferLeases();
        (_xAddress, _w0Address, _aAddress, _bAddress) = (_leases.Address(_x), _leases.Address(_w0), _leases.Address(_a), _leases.Address(_b));
        (_yAddress, _uAddress) = (_leases.Address(_y), _leases.Address(_u));
        // Compile (NVRTC) and load the kernels outside the measurement.
        FusedForward();
        FusedForwardInto();
        CublasForward();
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _leases.Dispose();
        foreach (Tensor t in new[] { _x, _w0, _a, _b, _y, _u, _yFused, _uFused }) t.Dispose();
    }

    [Benchmark(Baseline = true), BenchmarkCategory("Forward")]
    public void CublasForward()
    {
        int n = Features;
        _blas.Sgemm(false, true, M, n, n, 1f, _xAddress, n, _w0Address, n, 0f, _yAddress, n);
        _blas.Sgemm(false, true, M, Rank, n, 1f, _xAddress, n, _aAddress, n, 0f, _uAddress, Rank);
        _blas.Sgemm(false, true, M, n, Rank, Scale, _uAddress, Rank, _bAddress, Rank, 1f, _yAddress, n);
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
        ILoraKernels.On(_device).Forward(_x, _w0, null, _a, _b, Scale, 0f, 0, _yFused, _uFused);
        _device.Synchronize();
    }
}
