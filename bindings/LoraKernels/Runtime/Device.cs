// Where tensors live and ops run: the CPU kernels, the SIMT emulator, or a CUDA GPU. Each device
// owns its backend (how ops run there) and its memory, and counts live allocations so tests can
// prove nothing leaks. Devices are process-wide: Device.Cpu, Device.Simt and Device.Cuda(n)
// return one instance each, so "same device" is reference equality.
using System.Collections.Concurrent;
using LoraKernels.Backends;
using LoraKernels.Backends.Gpu;
using LoraKernels.Runtime;

namespace LoraKernels;

public enum DeviceKind { Cpu, Simt, Cuda }

public abstract class Device : IDisposable
{
    private static readonly Lazy<CpuDevice> CpuInstance = new(() => new CpuDevice());
    private static readonly Lazy<SimtDevice> SimtInstance = new(() => new SimtDevice());
    private readonly ConcurrentDictionary<Type, object> _familyKernels = new();

    private protected Device(DeviceKind kind)
    {
        Kind = kind;
        Counter = new AllocationCounter();
    }

    public DeviceKind Kind { get; }

    /// <summary>A human-readable description: "cpu (AVX-512, 2 threads)", "simt (emulator)", "cuda:0 NVIDIA H200 (sm_90)".</summary>
    public abstract string Name { get; }

    /// <summary>The short name <see cref="FromName"/> accepts: "cpu", "simt", "cuda:0". Used in error messages.</summary>
    public abstract override string ToString();

    /// <summary>The CPU kernels (process-wide).</summary>
    public static Device Cpu => CpuInstance.Value;

    /// <summary>kernels/*.cu under the SIMT emulator (process-wide, created on first use).</summary>
    public static Device Simt => SimtInstance.Value;

    /// <summary>CUDA device <paramref name="ordinal"/> (one instance per ordinal until disposed).</summary>
    /// <exception cref="CudaUnavailableException">No usable driver or device; the message says what was tried.</exception>
    public static Device Cuda(int ordinal = 0) => CudaDevice.Get(ordinal);

    /// <summary>True when the CUDA driver loads, initialises and reports at least one device. Never throws.</summary>
    public static bool IsCudaAvailable => CudaDriverState.IsAvailable;

    /// <summary>"cpu" | "simt" | "cuda" | "cuda:N", case-insensitive.</summary>
    public static Device FromName(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        string key = name.Trim().ToLowerInvariant();
        if (key == "cpu") return Cpu;
        if (key == "simt") return Simt;
        if (key == "cuda") return Cuda(0);
        if (key.StartsWith("cuda:", StringComparison.Ordinal)
            && int.TryParse(key.AsSpan(5), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int ordinal))
            return Cuda(ordinal);
        throw new ArgumentException($"Unknown device \"{name}\": expected cpu, simt, cuda or cuda:N.", nameof(name));
    }

    /// <summary>
    /// The device called <paramref name="name"/> (see <see cref="FromName"/>) when one is given, else the one
    /// the LORAKERNELS_DEVICE environment variable names, else CUDA when available, else the CPU.
    /// Programs parse their own command lines and pass the value of their device option here.
    /// </summary>
    public static Device Select(string? name = null)
    {
        if (string.IsNullOrWhiteSpace(name)) name = Environment.GetEnvironmentVariable("LORAKERNELS_DEVICE");
        if (!string.IsNullOrWhiteSpace(name)) return FromName(name);
        return IsCudaAvailable ? Cuda(0) : Cpu;
    }

    /// <summary>Buffers allocated on this device and not yet freed.</summary>
    public long LiveAllocations => Counter.Allocations;

    /// <summary>Bytes of the buffers counted by <see cref="LiveAllocations"/>.</summary>
    public long LiveBytes => Counter.Bytes;

    /// <summary>Waits until all queued work on the device has finished.</summary>
    public abstract void Synchronize();

    /// <summary>
    /// The CPU and emulator devices are process-wide and own nothing beyond their tensors, so
    /// disposing them does nothing. Disposing a CUDA device releases its modules, stream and library
    /// handles; its remaining tensors may still be disposed, and Device.Cuda(n) then creates a new instance.
    /// </summary>
    public void Dispose()
    {
        Dispose(true);
        GC.SuppressFinalize(this);
    }

    protected virtual void Dispose(bool disposing) { }

    internal AllocationCounter Counter { get; }

    /// <summary>How the shared ops run on this device.</summary>
    internal abstract IBackend Backend { get; }

    /// <summary>
    /// A family's kernel interface on this device, created once: <paramref name="cpu"/> on the CPU device,
    /// <paramref name="gpu"/> (given the device's launcher) on CUDA and under the emulator. Each family's
    /// interface calls this from its own static On(device), so the shared backend knows no family.
    /// </summary>
    internal T Kernels<T>(Func<T> cpu, Func<GpuLaunch, T> gpu) where T : class =>
        (T)_familyKernels.GetOrAdd(typeof(T), static (_, arguments) =>
            arguments.Backend is GpuBackend backend ? arguments.Gpu(backend.Launcher) : arguments.Cpu(),
            (Backend, Cpu: (Func<object>)cpu, Gpu: (Func<GpuLaunch, object>)gpu));

    internal abstract DeviceBuffer Allocate(long bytes);

    /// <summary>Memory of <paramref name="kind"/>; a device without that kind throws <see cref="NotSupportedException"/>.</summary>
    internal abstract DeviceBuffer Allocate(long bytes, MemoryKind kind);

    /// <summary>A queue of copies that overlap this device's kernels (GPU devices); the CPU device has none.</summary>
    internal virtual ITransferQueue CreateTransferQueue() =>
        throw new NotSupportedException($"The {this} device runs no kernels beside copies; it has no transfer queue.");
    internal abstract void Upload(DeviceBuffer destination, long destinationOffsetBytes, ReadOnlySpan<byte> source);
    internal abstract void Download(DeviceBuffer source, long sourceOffsetBytes, Span<byte> destination);
    internal abstract void Copy(DeviceBuffer source, long sourceOffsetBytes, DeviceBuffer destination, long destinationOffsetBytes, long bytes);
    internal abstract void Memset(DeviceBuffer destination, long offsetBytes, long bytes, byte value);
}
