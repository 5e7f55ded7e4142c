using System.Diagnostics;
using LoraKernels.Runtime;

namespace LoraKernels.Benchmarks.GpuComparison;

/// <summary>Times work queued between Start and Stop, in milliseconds.</summary>
internal interface IGpuTimer : IDisposable
{
    void Start();
    float Stop();
}

/// <summary>CUDA events on the device's stream (CudaTimer): GPU time only.</summary>
internal sealed class CudaEventTimer(CudaKernelDevice device) : IGpuTimer
{
    private readonly CudaTimer _timer = new(device);
    public void Start() => _timer.Start();
    public float Stop() => _timer.Stop();
    public void Dispose() => _timer.Dispose();
}

/// <summary>The wall clock, for the emulator, whose launches finish before they return.</summary>
internal sealed class WallClockTimer : IGpuTimer
{
    private readonly Stopwatch _clock = new();
    public void Start() => _clock.Restart();
    public float Stop() => (float)_clock.Elapsed.TotalMilliseconds;
    public void Dispose() { }
}
