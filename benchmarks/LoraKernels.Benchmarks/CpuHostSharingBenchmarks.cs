using BenchmarkDotNet.Attributes;
using LoraKernels.Families.Lora;

namespace LoraKernels.Benchmarks;

/// <summary>
/// LoraKernels as a guest in a host process that has its own thread pool: a LoRA decode forward
/// (M = 1, 4096², r = 16, the fused CPU kernel) and a host BLAS call (OpenBLAS sgemm, M = 16, 4096²,
/// its own pthreads) alone and alternating. With idle OpenMP workers spinning between our calls
/// (OMP_WAIT_POLICY=ACTIVE, or libgomp's default spin), the alternating pair costs more than the
/// sum of the two alone because our spinners take the cores OpenBLAS needs; with the library's
/// default (PASSIVE) it should cost their sum. The policy is fixed when libgomp loads, so compare
/// runs of the same filter under different environments (docs/API.md, "Threads"):
///   ./build.sh bench --filter '*HostSharing*'                       # LoraKernels' default, PASSIVE
///   OMP_WAIT_POLICY=ACTIVE ./build.sh bench --filter '*HostSharing*'
///   GOMP_SPINCOUNT=300000 ./build.sh bench --filter '*HostSharing*' # libgomp's own default
/// The run prints the policy in effect (CpuDevice.OpenMpWaitPolicy).
/// </summary>
[BenchmarkCategory("cpu")]
public unsafe class CpuHostSharingBenchmarks
{
    private const int Features = 4096, HostRows = 16;
    private Tensor _x = null!, _w0 = null!, _a = null!, _b = null!, _y = null!, _u = null!;
    private NativeFloats _hostX = null!, _hostW = null!, _hostY = null!;

    [GlobalSetup]
    public void Setup()
    {
        Console.WriteLine($"// OpenMP wait policy: {CpuDevice.OpenMpWaitPolicy}");
        var random = new Random(7);
        float[] Fill(int count)
        {
            var values = new float[count];
            for (int i = 0; i < count; i++) values[i] = (float)(random.NextDouble() * 2 - 1) / 64f;
            return values;
        }
        Device cpu = Device.Cpu;
        _x = Tensor.FromArray(cpu, Fill(Features), 1, Features);
        _w0 = Tensor.FromArray(cpu, Fill(Features * Features), Features, Features);
        _a = Tensor.FromArray(cpu, Fill(CpuLoraBenchmarks.Rank * Features), CpuLoraBenchmarks.Rank, Features);
        _b = Tensor.FromArray(cpu, Fill(Features * CpuLoraBenchmarks.Rank), Features, CpuLoraBenchmarks.Rank);
        _y = Tensor.Zeros(cpu, DType.F32, 1, Features);
        _u = Tensor.Zeros(cpu, DType.F32, 1, CpuLoraBenchmarks.Rank);
        _hostX = new NativeFloats(Fill(HostRows * Features));
        _hostW = new NativeFloats(Fill(Features * Features));
        _hostY = new NativeFloats(HostRows * Features);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        foreach (IDisposable d in new IDisposable[] { _x, _w0, _a, _b, _y, _u, _hostX, _hostW, _hostY }) d.Dispose();
    }

    [Benchmark, BenchmarkCategory("HostSharing")]
    public void LoraDecodeAlone() => ILoraKernels.On(Device.Cpu).Forward(_x, _w0, null, _a, _b, 2f, 0f, 0, _y, _u);

    [Benchmark, BenchmarkCategory("HostSharing")]
    public void HostBlasAlone() =>
        OpenBlas.Sgemm(false, true, HostRows, Features, Features, 1f, _hostX.Pointer, Features, _hostW.Pointer, Features, 0f, _hostY.Pointer, Features);

    [Benchmark, BenchmarkCategory("HostSharing")]
    public void Alternating()
    {
        LoraDecodeAlone();
        HostBlasAlone();
    }
}
