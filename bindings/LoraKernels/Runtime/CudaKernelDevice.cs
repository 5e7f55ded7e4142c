// One NVIDIA GPU as an IKernelDevice through the CUDA driver API: its primary context, one
// blocking stream for every launch, buffers from CudaAllocator (the stream-ordered pool), kernel modules from the AOT fatbin or
// NVRTC (ModuleCache), and cuBLAS / cuSOLVER for the vendor math. The driver API keeps the
// current context per thread, so every entry point makes it current first (callers may use
// the device from any thread, one at a time). Every driver status passes through CudaHealth: a
// sticky error marks the device lost, and from then on every entry point says so (naming the
// first failure) instead of failing obscurely. With SynchronizeEveryLaunch (LORAKERNELS_SYNC_LAUNCHES=1)
// each launch is followed by a stream synchronisation, so a kernel's fault is reported by its name
// rather than by whichever later call notices it.
using LoraKernels.Interop;

namespace LoraKernels.Runtime;

internal sealed unsafe class CudaKernelDevice : IKernelDevice
{
    private readonly CudaContextHandle _context;
    private readonly CudaStream _stream;
    private readonly ModuleCache _modules;
    private readonly Lazy<CublasVendorMath> _cublas;
    private readonly Lazy<CudaSolver> _solver;
    private readonly CudaHealth _health;
    private readonly CudaAllocator _allocator;
    private bool _disposed;

    public CudaKernelDevice(int ordinal, AllocationCounter counter)
    {
        CudaDriverState.EnsureAvailable();
        int count = CudaDriverState.DeviceCount;
        if (ordinal < 0 || ordinal >= count)
            throw new ArgumentOutOfRangeException(nameof(ordinal), ordinal, $"There are {count} CUDA device(s).");
        Counter = counter;
        Ordinal = ordinal;
        _health = new CudaHealth($"cuda:{ordinal}");
        SynchronizeEveryLaunch = Environment.GetEnvironmentVariable("LORAKERNELS_SYNC_LAUNCHES") == "1";
        UseTensorCores = Environment.GetEnvironmentVariable("LORAKERNELS_TENSOR_CORES") != "0";

        int device;
        Check.Cuda(CudaDriver.cuDeviceGet(&device, ordinal));
        const int nameCapacity = 256;
        byte* name = stackalloc byte[nameCapacity];
        Check.Cuda(CudaDriver.cuDeviceGetName(name, nameCapacity, device));
        DeviceName = Utf8.Read(name) ?? $"CUDA device {ordinal}";
        MultiprocessorCount = Attribute(CudaDriver.AttributeMultiprocessorCount, device);
        ComputeCapability = (Attribute(CudaDriver.AttributeComputeCapabilityMajor, device), Attribute(CudaDriver.AttributeComputeCapabilityMinor, device));
        MaxDynamicSharedBytesPerBlock = Attribute(CudaDriver.AttributeMaxSharedMemoryPerBlockOptin, device);
        L2CacheBytes = Attribute(CudaDriver.AttributeL2CacheSize, device);
        nuint totalMemory;
        Check.Cuda(CudaDriver.cuDeviceTotalMem(&totalMemory, device));
        TotalMemoryBytes = (long)totalMemory;

        _context = CudaContextHandle.RetainPrimary(device);
        try
        {
            _context.MakeCurrent();
            _stream = CudaStream.Create(_context);
            _allocator = CudaAllocator.Create(device, _stream, CudaDriverState.DriverVersion);
        }
        catch
        {
            _stream?.Dispose();
            _context.Dispose();
            throw;
        }
        _modules = new ModuleCache(_context, ComputeCapability);
        _cublas = new Lazy<CublasVendorMath>(() => new CublasVendorMath(this));
        _solver = new Lazy<CudaSolver>(() => new CudaSolver(this));
    }

    public AllocationCounter Counter { get; }
    public int Ordinal { get; }
    public string DeviceName { get; }
    public (int Major, int Minor) ComputeCapability { get; }
    public long TotalMemoryBytes { get; }

    /// <summary>The NVRTC target for this GPU, e.g. "sm_90".</summary>
    public string Architecture => $"sm_{ComputeCapability.Major}{ComputeCapability.Minor}";

    public int MultiprocessorCount { get; }
    public int MaxDynamicSharedBytesPerBlock { get; }

    /// <summary>The L2 cache's bytes (benchmarks flush it between timed calls).</summary>
    public int L2CacheBytes { get; }

    /// <summary>Whether bf16 products may use tensor cores (LORAKERNELS_TENSOR_CORES=0 starts it false); they do on sm_80+.</summary>
    public bool UseTensorCores { get; set; }

    public bool TensorCores => UseTensorCores && ComputeCapability.Major >= 8;

    public IVendorMath VendorMath => _cublas.Value;

    /// <summary>
    /// Debug switch: synchronise the stream after every launch and report a failure as that kernel's,
    /// at the cost of the overlap between host and device. Starts as LORAKERNELS_SYNC_LAUNCHES == "1".
    /// </summary>
    public bool SynchronizeEveryLaunch { get; set; }

    /// <summary>True when buffers come from the driver's stream-ordered pool (no device-wide synchronisation per free).</summary>
    public bool StreamOrderedAllocation => _allocator.StreamOrdered;

    /// <summary>Null while the device is usable; after a sticky error, the exception every call now throws.</summary>
    public CudaDeviceLostException? Lost => _health.Lost;

    /// <summary>cuSOLVER on this device's stream (created on first use).</summary>
    public CudaSolver Solver => _solver.Value;

    /// <summary>What NVRTC builds for this GPU: its sm_XY, or a fallback when NVRTC is older than the GPU.</summary>
    public NvrtcTarget NvrtcTarget => _modules.Target;

    /// <summary>Where each loaded kernel family came from (fatbin, disk cache, nvrtc).</summary>
    public IReadOnlyDictionary<string, string> ModuleOrigins => _modules.Origins;

    internal CudaContextHandle Context => _context;
    internal CudaStream Stream => _stream;

    /// <summary>Makes the context current on this thread; every driver call below goes through it.</summary>
    internal void Enter()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        _health.ThrowIfLost();
        _context.MakeCurrent();
    }

    /// <summary>Throws for a failed driver call, marking the device lost when the status is sticky.</summary>
    internal void Cuda(int result, [System.Runtime.CompilerServices.CallerArgumentExpression(nameof(result))] string call = "")
    {
        if (result == CudaDriver.Success) return;
        throw _health.Failed(Check.CudaError(Check.FunctionName(call), result));
    }

    public DeviceBuffer Allocate(long bytes)
    {
        Enter();
        return new CudaBuffer(_context, Counter, _allocator, bytes);
    }

    /// <summary>Device (the allocator's pool), pinned host (cuMemHostAlloc, portable and mapped) or managed (cuMemAllocManaged) memory.</summary>
    public DeviceBuffer Allocate(long bytes, MemoryKind kind)
    {
        Enter();
        if (kind is not (MemoryKind.Device or MemoryKind.Managed or MemoryKind.PinnedHost))
            throw new NotSupportedException($"A CUDA device has no {kind} memory (use PinnedHost for state kept off the GPU).");
        return new CudaBuffer(_context, Counter, _allocator, bytes, kind);
    }

    /// <summary>A second, non-blocking stream for copies that overlap this device's kernels.</summary>
    public ITransferQueue CreateTransferQueue()
    {
        Enter();
        return new CudaTransferQueue(this);
    }

    // Pinned host and managed memory are host memory too: after the device's work is done, the host
    // reads and writes them directly.
    public void Upload(DeviceBuffer destination, long destinationOffsetBytes, ReadOnlySpan<byte> source)
    {
        using var leases = new BufferLeases();
        ulong target = Address(leases, destination, destinationOffsetBytes, source.Length, nameof(destination));
        if (source.IsEmpty) return;
        Enter();
        if (destination.Kind != MemoryKind.Device)
        {
            Cuda(CudaDriver.cuCtxSynchronize());
            source.CopyTo(new Span<byte>((void*)target, source.Length));
            return;
        }
        fixed (byte* from = source) Cuda(CudaDriver.cuMemcpyHtoD(target, from, (nuint)source.Length));
    }

    public void Download(DeviceBuffer source, long sourceOffsetBytes, Span<byte> destination)
    {
        using var leases = new BufferLeases();
        ulong from = Address(leases, source, sourceOffsetBytes, destination.Length, nameof(source));
        if (destination.IsEmpty) return;
        Enter();
        if (source.Kind != MemoryKind.Device)
        {
            Cuda(CudaDriver.cuCtxSynchronize());
            new ReadOnlySpan<byte>((void*)from, destination.Length).CopyTo(destination);
            return;
        }
        fixed (byte* target = destination) Cuda(CudaDriver.cuMemcpyDtoH(target, from, (nuint)destination.Length));
    }

    public void CopyDeviceToDevice(DeviceBuffer source, long sourceOffsetBytes, DeviceBuffer destination, long destinationOffsetBytes, long bytes)
    {
        using var leases = new BufferLeases();
        ulong from = Address(leases, source, sourceOffsetBytes, bytes, nameof(source));
        ulong target = Address(leases, destination, destinationOffsetBytes, bytes, nameof(destination));
        if (bytes == 0) return;
        Enter();
        // cuMemcpy infers the direction from unified addresses, so any pair of kinds copies.
        Cuda(source.Kind == MemoryKind.Device && destination.Kind == MemoryKind.Device
                       ? CudaDriver.cuMemcpyDtoD(target, from, (nuint)bytes)
                       : CudaDriver.cuMemcpy(target, from, (nuint)bytes));
    }

    public void Memset(DeviceBuffer destination, long offsetBytes, long bytes, byte value)
    {
        using var leases = new BufferLeases();
        ulong target = Address(leases, destination, offsetBytes, bytes, nameof(destination));
        if (bytes == 0) return;
        Enter();
        if (destination.Kind != MemoryKind.Device)
        {
            Cuda(CudaDriver.cuCtxSynchronize());
            for (long done = 0; done < bytes; done += int.MaxValue)
                new Span<byte>((byte*)target + done, (int)Math.Min(int.MaxValue, bytes - done)).Fill(value);
            return;
        }
        Cuda(CudaDriver.cuMemsetD8(target, value, (nuint)bytes));
    }

    public void Launch(string kernel, Dim3 grid, Dim3 block, uint dynamicSharedBytes, KernelArguments arguments)
    {
        ArgumentNullException.ThrowIfNull(kernel);
        ArgumentNullException.ThrowIfNull(arguments);
        Enter();
        IntPtr function = _modules.GetFunction(kernel, dynamicSharedBytes);
        string launch = $"{kernel} with grid {grid.X}x{grid.Y}x{grid.Z}, block {block.X}x{block.Y}x{block.Z}, {dynamicSharedBytes} B dynamic shared";
        _health.Launched(launch);
        int result = CudaDriver.cuLaunchKernel(function, grid.X, grid.Y, grid.Z, block.X, block.Y, block.Z, dynamicSharedBytes,
                                               _stream.DangerousGetHandle(), (void**)arguments.ArgumentArray, null);
        if (result != CudaDriver.Success) throw _health.Failed(Check.CudaError($"cuLaunchKernel of {launch}", result));
        if (!SynchronizeEveryLaunch) return;
        result = CudaDriver.cuStreamSynchronize(_stream.DangerousGetHandle());
        if (result != CudaDriver.Success) throw _health.Failed(Check.CudaError($"kernel {launch} (synchronised after its launch)", result));
    }

    public void Synchronize()
    {
        Enter();
        Cuda(CudaDriver.cuStreamSynchronize(_stream.DangerousGetHandle()));
    }

    /// <summary>Free and total device memory in bytes (cuMemGetInfo).</summary>
    public (long Free, long Total) MemoryInfo()
    {
        Enter();
        nuint free, total;
        Cuda(CudaDriver.cuMemGetInfo(&free, &total));
        return ((long)free, (long)total);
    }

    /// <summary>The device address of byte <paramref name="offset"/>, the buffer leased by <paramref name="leases"/>.</summary>
    private static ulong Address(BufferLeases leases, DeviceBuffer buffer, long offset, long bytes, string paramName)
    {
        ArgumentNullException.ThrowIfNull(buffer, paramName);
        if (buffer is not CudaBuffer) throw new ArgumentException($"{paramName} is not CUDA device memory ({buffer.GetType().Name}).", paramName);
        BufferRange.Check(buffer, offset, bytes, paramName);
        return leases.Address(buffer) + (ulong)offset;
    }

    private static int Attribute(int attribute, int device)
    {
        int value;
        Check.Cuda(CudaDriver.cuDeviceGetAttribute(&value, attribute, device));
        return value;
    }

    /// <summary>
    /// Releases modules, library handles and the stream; the context itself is released when the
    /// last buffer allocated in it is freed (each holds a reference).
    /// </summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _modules.Dispose();
        if (_solver.IsValueCreated) _solver.Value.Dispose();
        if (_cublas.IsValueCreated) _cublas.Value.Dispose();
        _stream.Dispose();
        _context.Dispose();
    }
}
