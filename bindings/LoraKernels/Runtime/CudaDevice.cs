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

    /// <summary>
    /// What NVRTC builds for this GPU: its own sm_XY cubin, or, when the GPU is newer than the loaded NVRTC,
    /// an older cubin it runs or compute_XY PTX the driver JIT-compiles (<see cref="Runtime.NvrtcTarget.For"/>).
    /// </summary>
    public NvrtcTarget NvrtcTarget => KernelDevice.NvrtcTarget;

    /// <summary>Where each kernel family loaded so far came from: "fatbin PATH", "disk cache PATH" or "nvrtc TARGET".</summary>
    public IReadOnlyDictionary<string, string> KernelModuleOrigins => KernelDevice.ModuleOrigins;

    public override string Name => $"cuda:{Ordinal} {KernelDevice.DeviceName} ({Architecture})";

    public override string ToString() => $"cuda:{Ordinal}";

    public override void Synchronize() => KernelDevice.Synchronize();

    /// <summary>
    /// Debug switch: synchronise after every kernel launch, so a kernel that faults is reported by name
    /// (at the cost of overlap). Starts as the environment variable LORAKERNELS_SYNC_LAUNCHES == "1".
    /// </summary>
    public bool SynchronizeEveryLaunch
    {
        get => KernelDevice.SynchronizeEveryLaunch;
        set => KernelDevice.SynchronizeEveryLaunch = value;
    }

    /// <summary>
    /// Whether bf16 products (the LoRA and QLoRA forward and input gradient with more than a decode's
    /// tokens) run on the tensor-core engine; they do on sm_80 and newer unless this is set false (or
    /// LORAKERNELS_TENSOR_CORES=0), which selects the CUDA-core tile engine, e.g. to compare the two.
    /// </summary>
    public bool UseTensorCores
    {
        get => KernelDevice.UseTensorCores;
        set => KernelDevice.UseTensorCores = value;
    }

    /// <summary>True when bf16 products run on tensor cores now (sm_80+ and <see cref="UseTensorCores"/>).</summary>
    public bool TensorCores => KernelDevice.TensorCores;

    /// <summary>
    /// True when buffers come from the driver's stream-ordered memory pool (CUDA 11.2+): a free is queued on the
    /// device's stream instead of synchronising the device, and freed memory stays cached in the pool for reuse.
    /// </summary>
    public bool StreamOrderedAllocation => KernelDevice.StreamOrderedAllocation;

    /// <summary>False once a sticky error (an illegal address, a trap, a failed launch) has made the GPU's context unusable.</summary>
    public bool IsUsable => KernelDevice.Lost is null;

    /// <summary>Why the device is unusable (what every call now throws), or null while it is usable.</summary>
    public CudaDeviceLostException? LostReason => KernelDevice.Lost;

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
