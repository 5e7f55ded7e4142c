// The CPU device: tensors in 64-byte-aligned host memory, ops through the native CPU kernels
// (libloraknl_cpu, OpenMP, AVX-512 or AVX2+FMA picked at load time).
using LoraKernels.Backends;
using LoraKernels.Backends.Cpu;
using LoraKernels.Interop;
using LoraKernels.Runtime;

namespace LoraKernels;

public sealed class CpuDevice : Device
{
    private readonly Lazy<string> _name;

    internal CpuDevice() : base(DeviceKind.Cpu)
    {
        Backend = new CpuBackend();
        _name = new Lazy<string>(Describe);
    }

    public override string Name => _name.Value;

    public override string ToString() => "cpu";

    /// <summary>
    /// How the kernels' idle OpenMP workers wait, as the OpenMP runtime was told when it loaded: by default
    /// "PASSIVE (LoraKernels' default)", they sleep between calls instead of spinning on cores a host's other
    /// thread pools need; a host that sets OMP_WAIT_POLICY or GOMP_SPINCOUNT before the first CPU call keeps
    /// its choice. docs/API.md ("Threads") has the measured trade-off.
    /// </summary>
    public static string OpenMpWaitPolicy
    {
        get
        {
            Interop.NativeLibraryResolver.Load(Interop.LibraryNames.Cpu);
            return Interop.OpenMpWaitPolicy.Current;
        }
    }

    /// <summary>The largest thread count <see cref="Threads"/> accepts (LK_CPU_MAX_THREADS).</summary>
    public const int MaxThreads = 1024;

    /// <summary>
    /// OpenMP threads the CPU kernels use (default: one per core). Process-wide: it applies to every
    /// later call from any thread. Set it between calls, not while another thread runs a CPU op.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">The value is below 1 or above <see cref="MaxThreads"/> (use <see cref="ResetThreads"/> for the default).</exception>
    public int Threads
    {
        get => NativeCpu.lk_cpu_get_num_threads();
        set
        {
            if (value < 1 || value > MaxThreads)
                throw new ArgumentOutOfRangeException(nameof(value), value,
                    $"CpuDevice.Threads must be in [1, {MaxThreads}]; call ResetThreads() to return to the default (one per core).");
            Check.Cpu(NativeCpu.lk_cpu_set_num_threads(value));
        }
    }

    /// <summary>Returns <see cref="Threads"/> to its default, one per core.</summary>
    public void ResetThreads() => Check.Cpu(NativeCpu.lk_cpu_set_num_threads(0));

    public override void Synchronize() { }

    internal override IBackend Backend { get; }

    internal override DeviceBuffer Allocate(long bytes) => HostMemory.Allocate(bytes, Counter);

    internal override DeviceBuffer Allocate(long bytes, MemoryKind kind) => HostMemory.Allocate(bytes, kind, Counter, "cpu", mappedFiles: true);

    internal override void Upload(DeviceBuffer destination, long destinationOffsetBytes, ReadOnlySpan<byte> source) =>
        HostMemory.Upload(destination, destinationOffsetBytes, source);

    internal override void Download(DeviceBuffer source, long sourceOffsetBytes, Span<byte> destination) =>
        HostMemory.Download(source, sourceOffsetBytes, destination);

    internal override void Copy(DeviceBuffer source, long sourceOffsetBytes, DeviceBuffer destination, long destinationOffsetBytes, long bytes) =>
        HostMemory.Copy(source, sourceOffsetBytes, destination, destinationOffsetBytes, bytes);

    internal override void Memset(DeviceBuffer destination, long offsetBytes, long bytes, byte value) =>
        HostMemory.Memset(destination, offsetBytes, bytes, value);

    private static string Describe()
    {
        int isa = NativeCpu.lk_cpu_isa();
        string instructions = (isa & 2) != 0 ? "AVX-512" : (isa & 1) != 0 ? "AVX2" : "portable";
        return $"cpu ({instructions}, {NativeCpu.lk_cpu_get_num_threads()} threads)";
    }
}
