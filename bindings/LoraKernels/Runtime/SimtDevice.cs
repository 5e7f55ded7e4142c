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

    /// <summary>Worker threads that run blocks in parallel (lk_simt_set_num_threads; default one per core, 1 = sequential).</summary>
    public void SetWorkerThreads(int threads) => Check.Simt(NativeSimt.lk_simt_set_num_threads(threads));

    internal SimtKernelDevice KernelDevice { get; }

    internal override IBackend Backend { get; }

    internal override DeviceBuffer Allocate(long bytes) => KernelDevice.Allocate(bytes);

    internal override void Upload(DeviceBuffer destination, long destinationOffsetBytes, ReadOnlySpan<byte> source) =>
        KernelDevice.Upload(destination, destinationOffsetBytes, source);

    internal override void Download(DeviceBuffer source, long sourceOffsetBytes, Span<byte> destination) =>
        KernelDevice.Download(source, sourceOffsetBytes, destination);

    internal override void Copy(DeviceBuffer source, long sourceOffsetBytes, DeviceBuffer destination, long destinationOffsetBytes, long bytes) =>
        KernelDevice.CopyDeviceToDevice(source, sourceOffsetBytes, destination, destinationOffsetBytes, bytes);

    internal override void Memset(DeviceBuffer destination, long offsetBytes, long bytes, byte value) =>
        KernelDevice.Memset(destination, offsetBytes, bytes, value);
}
