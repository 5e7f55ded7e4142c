// The SIMT emulator as a device: kernels/*.cu run on the CPU through the same GPU backend, launch
// geometry and argument packing as on CUDA, so CI exercises the GPU code path without a GPU.
using LoraKernels.Backends;
using LoraKernels.Backends.Gpu;
using LoraKernels.Interop;
using LoraKernels.Runtime;

namespace LoraKernels;

public sealed class SimtDevice : Device
{
    internal SimtDevice() : base(DeviceKind.Simt)
    {
        KernelDevice = new SimtKernelDevice(Counter);
        Backend = new GpuBackend(KernelDevice);
    }

    public override string Name => "simt (emulator)";

    public override string ToString() => "simt";

    public override void Synchronize() => KernelDevice.Synchronize();

    /// <summary>The largest worker count <see cref="SetWorkerThreads"/> accepts.</summary>
    public const int MaxWorkerThreads = 4096;

    /// <summary>Worker threads that run blocks in parallel (lk_simt_set_num_threads; default one per core, 1 = sequential).</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="threads"/> is below 1 or above <see cref="MaxWorkerThreads"/> (use <see cref="ResetWorkerThreads"/> for the default).</exception>
    public void SetWorkerThreads(int threads)
    {
        if (threads < 1 || threads > MaxWorkerThreads)
            throw new ArgumentOutOfRangeException(nameof(threads), threads,
                $"SimtDevice.SetWorkerThreads needs a count in [1, {MaxWorkerThreads}]; call ResetWorkerThreads() for the default (one per core).");
        Check.Simt(NativeSimt.lk_simt_set_num_threads(threads));
    }

    /// <summary>Returns the worker count to its default, one per core.</summary>
    public void ResetWorkerThreads() => Check.Simt(NativeSimt.lk_simt_set_num_threads(0));

    internal SimtKernelDevice KernelDevice { get; }

    internal override IBackend Backend { get; }

    internal override DeviceBuffer Allocate(long bytes) => KernelDevice.Allocate(bytes);

    internal override DeviceBuffer Allocate(long bytes, MemoryKind kind) => KernelDevice.Allocate(bytes, kind);

    internal override ITransferQueue CreateTransferQueue() => new HostTransferQueue();

    internal override void Upload(DeviceBuffer destination, long destinationOffsetBytes, ReadOnlySpan<byte> source) =>
        KernelDevice.Upload(destination, destinationOffsetBytes, source);

    internal override void Download(DeviceBuffer source, long sourceOffsetBytes, Span<byte> destination) =>
        KernelDevice.Download(source, sourceOffsetBytes, destination);

    internal override void Copy(DeviceBuffer source, long sourceOffsetBytes, DeviceBuffer destination, long destinationOffsetBytes, long bytes) =>
        KernelDevice.CopyDeviceToDevice(source, sourceOffsetBytes, destination, destinationOffsetBytes, bytes);

    internal override void Memset(DeviceBuffer destination, long offsetBytes, long bytes, byte value) =>
        KernelDevice.Memset(destination, offsetBytes, bytes, value);
}
