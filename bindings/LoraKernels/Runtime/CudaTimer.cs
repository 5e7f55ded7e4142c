// GPU time of work queued on a CUDA device's stream, from a pair of CUDA events recorded around it:
// what the GPU spent, without the host's launch overhead or a synchronisation's wake-up. The lean
// GPU comparison (benchmarks' GpuComparison) times every case with it.
namespace LoraKernels.Runtime;

internal sealed unsafe class CudaTimer : IDisposable
{
    private readonly CudaKernelDevice _device;
    private readonly CudaEvent _start, _stop;

    public CudaTimer(CudaKernelDevice device)
    {
        _device = device;
        device.Enter();
        _start = CudaEvent.Create(device.Context, timing: true);
        try
        {
            _stop = CudaEvent.Create(device.Context, timing: true);
        }
        catch
        {
            _start.Dispose();
            throw;
        }
    }

    /// <summary>Records the start event on the device's stream (after the work already queued).</summary>
    public void Start()
    {
        _device.Enter();
        _device.Cuda(Interop.CudaDriver.cuEventRecord(_start.Raw, _device.Stream.DangerousGetHandle()));
    }

    /// <summary>Records the stop event, waits for it, and returns the milliseconds between the two events.</summary>
    public float Stop()
    {
        _device.Enter();
        _device.Cuda(Interop.CudaDriver.cuEventRecord(_stop.Raw, _device.Stream.DangerousGetHandle()));
        _device.Cuda(Interop.CudaDriver.cuEventSynchronize(_stop.Raw));
        float milliseconds;
        _device.Cuda(Interop.CudaDriver.cuEventElapsedTime(&milliseconds, _start.Raw, _stop.Raw));
        return milliseconds;
    }

    public void Dispose()
    {
        _stop.Dispose();
        _start.Dispose();
    }
}
