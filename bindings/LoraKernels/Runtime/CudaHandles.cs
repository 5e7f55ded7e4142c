// SafeHandles for every CUDA object the runtime creates (DESIGN.md: all native handles owned by
// a SafeHandle). The primary context is reference-counted: each stream, module, library handle
// and allocation holds a reference, so the context outlives everything made in it, whatever
// order the GC finalizes them in. Release paths make the context current first (finalizers run
// on their own thread) and never throw.
using System.Runtime.InteropServices;
using LoraKernels.Interop;

namespace LoraKernels.Runtime;

/// <summary>A retained primary context of one device; released when the last dependent handle is.</summary>
internal sealed class CudaContextHandle : SafeHandle
{
    private CudaContextHandle(int device) : base(IntPtr.Zero, ownsHandle: true) => Device = device;

    public int Device { get; }

    public override bool IsInvalid => handle == IntPtr.Zero;

    public static unsafe CudaContextHandle RetainPrimary(int device)
    {
        var context = new CudaContextHandle(device);
        IntPtr raw;
        Check.Cuda(CudaDriver.cuDevicePrimaryCtxRetain(&raw, device));
        context.SetHandle(raw);
        return context;
    }

    /// <summary>Makes this context current on the calling thread (contexts are per thread in the driver API).</summary>
    public void MakeCurrent()
    {
        ObjectDisposedException.ThrowIf(IsClosed, this);
        Check.Cuda(CudaDriver.cuCtxSetCurrent(handle));
    }

    protected override bool ReleaseHandle() => CudaDriver.cuDevicePrimaryCtxRelease(Device) == CudaDriver.Success;
}

/// <summary>A CUDA object created in a context; keeps the context alive until it is destroyed.</summary>
internal abstract class CudaContextBoundHandle : SafeHandle
{
    protected CudaContextBoundHandle(CudaContextHandle context) : base(IntPtr.Zero, ownsHandle: true) => Context = context;

    protected CudaContextHandle Context { get; }

    public override bool IsInvalid => handle == IntPtr.Zero;

    /// <summary>Takes ownership of a freshly created native object (destroying it if the context is already gone).</summary>
    protected void Adopt(IntPtr raw)
    {
        bool referenced = false;
        try
        {
            Context.DangerousAddRef(ref referenced);
        }
        finally
        {
            if (referenced) SetHandle(raw);
            else Destroy(raw);
        }
    }

    protected sealed override bool ReleaseHandle()
    {
        try
        {
            return CudaDriver.cuCtxSetCurrent(Context.DangerousGetHandle()) == CudaDriver.Success && Destroy(handle);
        }
        finally
        {
            Context.DangerousRelease();
        }
    }

    /// <summary>Destroys the native object; must not throw.</summary>
    protected abstract bool Destroy(IntPtr raw);
}

/// <summary>The device's one stream. Created blocking (flag 0) so that the synchronous copies,
/// which run on the legacy default stream, are ordered after the kernels queued here.</summary>
internal sealed class CudaStream : CudaContextBoundHandle
{
    private CudaStream(CudaContextHandle context) : base(context) { }

    /// <summary>A stream created with <paramref name="flags"/> (0: blocking; CudaDriver.StreamNonBlocking for a transfer queue).</summary>
    public static unsafe CudaStream Create(CudaContextHandle context, uint flags = 0)
    {
        var stream = new CudaStream(context);
        IntPtr raw;
        Check.Cuda(CudaDriver.cuStreamCreate(&raw, flags));
        stream.Adopt(raw);
        return stream;
    }

    protected override bool Destroy(IntPtr raw) => CudaDriver.cuStreamDestroy(raw) == CudaDriver.Success;
}

internal sealed class CudaModuleHandle : CudaContextBoundHandle
{
    private CudaModuleHandle(CudaContextHandle context) : base(context) { }

    /// <summary>Loads a cubin, fatbin or PTX image; returns the driver's status instead of throwing so callers can fall back.</summary>
    public static unsafe int TryLoad(CudaContextHandle context, ReadOnlySpan<byte> image, out CudaModuleHandle? module)
    {
        module = null;
        IntPtr raw;
        int result;
        fixed (byte* data = image) result = CudaDriver.cuModuleLoadData(&raw, data);
        if (result != CudaDriver.Success) return result;
        module = new CudaModuleHandle(context);
        module.Adopt(raw);
        return result;
    }

    protected override bool Destroy(IntPtr raw) => CudaDriver.cuModuleUnload(raw) == CudaDriver.Success;
}

/// <summary>
/// One allocation: device memory from a CudaAllocator (the stream-ordered pool, or cuMemAlloc), managed memory
/// (cuMemAllocManaged) or pinned host memory (cuMemHostAlloc, portable and mapped, so its host address is also the
/// device's); updates the device's live-allocation counter when freed, and keeps the allocator's stream alive until
/// then (its frees are queued on that stream).
/// </summary>
internal sealed class CudaMemoryHandle : CudaContextBoundHandle
{
    private readonly AllocationCounter _counter;
    private readonly CudaAllocator _allocator;
    private readonly long _bytes;
    private readonly MemoryKind _kind;
    private bool _streamReferenced;

    private CudaMemoryHandle(CudaContextHandle context, AllocationCounter counter, CudaAllocator allocator, long bytes, MemoryKind kind)
        : base(context)
    {
        _counter = counter;
        _allocator = allocator;
        _bytes = bytes;
        _kind = kind;
    }

    public static unsafe CudaMemoryHandle Allocate(CudaContextHandle context, AllocationCounter counter, CudaAllocator allocator, long bytes,
                                                   MemoryKind kind = MemoryKind.Device)
    {
        var memory = new CudaMemoryHandle(context, counter, allocator, bytes, kind);
        if (kind == MemoryKind.Device) allocator.AddStreamReference(ref memory._streamReferenced);
        // The driver rejects 0 bytes; an empty tensor still gets a distinct, valid address.
        nuint size = (nuint)Math.Max(bytes, 1);
        ulong pointer = 0;
        void* host = null;
        int result = kind switch
        {
            MemoryKind.Device => allocator.Allocate(&pointer, size),
            MemoryKind.Managed => CudaDriver.cuMemAllocManaged(&pointer, size, CudaDriver.MemAttachGlobal),
            MemoryKind.PinnedHost => CudaDriver.cuMemHostAlloc(&host, size, CudaDriver.MemHostAllocPortable | CudaDriver.MemHostAllocDeviceMap),
            _ => throw new NotSupportedException($"A CUDA device has no {kind} memory."),
        };
        if (kind == MemoryKind.PinnedHost) pointer = (ulong)host;
        if (result != CudaDriver.Success)
        {
            memory.ReleaseStream();
            throw Check.CudaError($"{AllocationCall(kind, allocator)} of {bytes} bytes ({bytes / (1024.0 * 1024.0):F1} MiB)", result);
        }
        // Counted before Adopt: if Adopt has to free the memory again, Destroy uncounts it.
        counter.Add(bytes);
        memory.Adopt((IntPtr)pointer);
        return memory;
    }

    public ulong Address => (ulong)handle;

    protected override unsafe bool Destroy(IntPtr raw)
    {
        bool freed = _kind switch
        {
            MemoryKind.PinnedHost => CudaDriver.cuMemFreeHost((void*)raw),
            MemoryKind.Managed => CudaDriver.cuMemFree((ulong)raw),
            _ => _allocator.Free((ulong)raw),
        } == CudaDriver.Success;
        if (freed) _counter.Remove(_bytes);
        ReleaseStream();
        return freed;
    }

    private static string AllocationCall(MemoryKind kind, CudaAllocator allocator) => kind switch
    {
        MemoryKind.Managed => "cuMemAllocManaged",
        MemoryKind.PinnedHost => "cuMemHostAlloc (pinned host memory)",
        _ => allocator.StreamOrdered ? "cuMemAllocAsync" : "cuMemAlloc",
    };

    private void ReleaseStream()
    {
        if (!_streamReferenced) return;
        _streamReferenced = false;
        _allocator.ReleaseStreamReference();
    }
}

/// <summary>
/// A CUDA event: without timing (the default), recorded on a stream so another stream can wait for it; with
/// timing, for measuring work on a stream (cuEventElapsedTime).
/// </summary>
internal sealed class CudaEvent : CudaContextBoundHandle
{
    private CudaEvent(CudaContextHandle context) : base(context) { }

    public static unsafe CudaEvent Create(CudaContextHandle context, bool timing = false)
    {
        var evt = new CudaEvent(context);
        IntPtr raw;
        Check.Cuda(CudaDriver.cuEventCreate(&raw, timing ? 0u : CudaDriver.EventDisableTiming));
        evt.Adopt(raw);
        return evt;
    }

    public IntPtr Raw => handle;

    protected override bool Destroy(IntPtr raw) => CudaDriver.cuEventDestroy(raw) == CudaDriver.Success;
}

internal sealed class CublasHandle : CudaContextBoundHandle
{
    private CublasHandle(CudaContextHandle context) : base(context) { }

    public static unsafe CublasHandle Create(CudaContextHandle context, CudaStream stream)
    {
        var cublas = new CublasHandle(context);
        IntPtr raw;
        Check.Cublas(Cublas.cublasCreate(&raw));
        cublas.Adopt(raw);
        Check.Cublas(Cublas.cublasSetStream(cublas.handle, stream.DangerousGetHandle()));
        return cublas;
    }

    public IntPtr Raw => handle;

    protected override bool Destroy(IntPtr raw) => Cublas.cublasDestroy(raw) == Cublas.Success;
}

internal sealed class CusolverHandle : CudaContextBoundHandle
{
    private CusolverHandle(CudaContextHandle context) : base(context) { }

    public static unsafe CusolverHandle Create(CudaContextHandle context, CudaStream stream)
    {
        var cusolver = new CusolverHandle(context);
        IntPtr raw;
        Check.Cusolver(Cusolver.cusolverDnCreate(&raw));
        cusolver.Adopt(raw);
        Check.Cusolver(Cusolver.cusolverDnSetStream(cusolver.handle, stream.DangerousGetHandle()));
        return cusolver;
    }

    public IntPtr Raw => handle;

    protected override bool Destroy(IntPtr raw) => Cusolver.cusolverDnDestroy(raw) == Cusolver.Success;
}
