// One NVIDIA GPU: kernels/*.cu compiled by NVRTC (or loaded from the AOT fatbin) and launched
// through the CUDA driver API by the GPU backend; cuBLAS/cuSOLVER for vendor math.
using LoraKernels.Backends;
using LoraKernels.Backends.Gpu;
using LoraKernels.Runtime;

namespace LoraKernels;

public sealed class CudaDevice : Device
{
    private static readonly object Gate = new();
    private static readonly Dictionary<int, CudaDevice> Instances = new();
    private bool _disposed;

    private CudaDevice(int ordinal) : base(DeviceKind.Cuda)
    {
        KernelDevice = new CudaKernelDevice(ordinal, Counter);
        Backend = new GpuBackend(KernelDevice);
    }

    internal static CudaDevice Get(int ordinal)
    {
        lock (Gate)
        {
            if (Instances.TryGetValue(ordinal, out CudaDevice? device)) return device;
            device = new CudaDevice(ordinal);
            Instances.Add(ordinal, device);
            return device;
        }
    }

    public int Ordinal => KernelDevice.Ordinal;

    /// <summary>The GPU's architecture as NVRTC names it, e.g. "sm_90".</summary>
    public string Architecture => KernelDevice.Architecture;

    public (int Major, int Minor) ComputeCapability => KernelDevice.ComputeCapability;

    public int MultiprocessorCount => KernelDevice.MultiprocessorCount;

    public long TotalMemoryBytes => KernelDevice.TotalMemoryBytes;

    /// <summary>The CUDA version the driver supports (cuDriverGetVersion: 12040 is 12.4).</summary>
    public static int DriverVersion => CudaDriverState.DriverVersion;

    /// <summary>Free and total device memory in bytes now (cuMemGetInfo).</summary>
    public (long Free, long Total) MemoryInfo() => KernelDevice.MemoryInfo();

    /// <summary>Where each kernel family loaded so far came from: "fatbin PATH", "disk cache PATH" or "nvrtc".</summary>
    public IReadOnlyDictionary<string, string> KernelModuleOrigins => KernelDevice.ModuleOrigins;

    public override string Name => $"cuda:{Ordinal} {KernelDevice.DeviceName} ({Architecture})";

    public override string ToString() => $"cuda:{Ordinal}";

    public override void Synchronize() => KernelDevice.Synchronize();

    internal CudaKernelDevice KernelDevice { get; }

    internal override IBackend Backend { get; }

    internal override DeviceBuffer Allocate(long bytes) => KernelDevice.Allocate(bytes);

    internal override DeviceBuffer Allocate(long bytes, MemoryKind kind) => KernelDevice.Allocate(bytes, kind);

    internal override ITransferQueue CreateTransferQueue() => KernelDevice.CreateTransferQueue();

    internal override void Upload(DeviceBuffer destination, long destinationOffsetBytes, ReadOnlySpan<byte> source) =>
        KernelDevice.Upload(destination, destinationOffsetBytes, source);

    internal override void Download(DeviceBuffer source, long sourceOffsetBytes, Span<byte> destination) =>
        KernelDevice.Download(source, sourceOffsetBytes, destination);

    internal override void Copy(DeviceBuffer source, long sourceOffsetBytes, DeviceBuffer destination, long destinationOffsetBytes, long bytes) =>
        KernelDevice.CopyDeviceToDevice(source, sourceOffsetBytes, destination, destinationOffsetBytes, bytes);

    internal override void Memset(DeviceBuffer destination, long offsetBytes, long bytes, byte value) =>
        KernelDevice.Memset(destination, offsetBytes, bytes, value);

    protected override void Dispose(bool disposing)
    {
        if (!disposing || _disposed) return;
        _disposed = true;
        lock (Gate)
        {
            if (Instances.TryGetValue(Ordinal, out CudaDevice? current) && ReferenceEquals(current, this)) Instances.Remove(Ordinal);
        }
        KernelDevice.Dispose();
    }
}
