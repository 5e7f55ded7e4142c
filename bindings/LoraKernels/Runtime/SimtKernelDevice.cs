// The SIMT emulator as an IKernelDevice: "device memory" is 64-byte-aligned host memory, copies
// are memcpy, and a launch runs the named kernel from kernels/*.cu to completion on the CPU
// (lk_simt_launch takes cuLaunchKernel's void** unchanged). Dense GEMMs that a GPU op takes from
// cuBLAS on CUDA are served here by the CPU kernels (lk_cpu_sgemm), which need the CPU library too.
using System.Collections.Concurrent;
using LoraKernels.Interop;

namespace LoraKernels.Runtime;

internal sealed unsafe class SimtKernelDevice : IKernelDevice
{
    // Few "multiprocessors" keep grids that scale with the SM count (decode, persistent kernels)
    // small, so the emulator stays fast while those kernels still run several blocks.
    private const int EmulatedMultiprocessors = 4;

    private readonly ConcurrentDictionary<string, byte[]> _kernelNames = new();

    public SimtKernelDevice(AllocationCounter counter)
    {
        Counter = counter;
        // Loads the library now, so a missing emulator fails when the device is created, not at the first launch.
        NativeLibraryResolver.Load(LibraryNames.Simt);
        VendorMath = new HostVendorMath();
    }

    public AllocationCounter Counter { get; }

    public DeviceBuffer Allocate(long bytes) => HostMemory.Allocate(bytes, Counter);

    /// <summary>Host memory marked with <paramref name="kind"/> (pinned host and managed memory are what a GPU's would be); no mapped files.</summary>
    public DeviceBuffer Allocate(long bytes, MemoryKind kind) => HostMemory.Allocate(bytes, kind, Counter, "simt", mappedFiles: false);

    public void Upload(DeviceBuffer destination, long destinationOffsetBytes, ReadOnlySpan<byte> source) =>
        HostMemory.Upload(destination, destinationOffsetBytes, source);

    public void Download(DeviceBuffer source, long sourceOffsetBytes, Span<byte> destination) =>
        HostMemory.Download(source, sourceOffsetBytes, destination);

    public void CopyDeviceToDevice(DeviceBuffer source, long sourceOffsetBytes, DeviceBuffer destination, long destinationOffsetBytes, long bytes) =>
        HostMemory.Copy(source, sourceOffsetBytes, destination, destinationOffsetBytes, bytes);

    public void Memset(DeviceBuffer destination, long offsetBytes, long bytes, byte value) =>
        HostMemory.Memset(destination, offsetBytes, bytes, value);

    public void Launch(string kernel, Dim3 grid, Dim3 block, uint dynamicSharedBytes, KernelArguments arguments)
    {
        ArgumentNullException.ThrowIfNull(kernel);
        ArgumentNullException.ThrowIfNull(arguments);
        byte[] name = _kernelNames.GetOrAdd(kernel, Utf8.NullTerminated);
        fixed (byte* namePointer = name)
        {
            int status = NativeSimt.lk_simt_launch(namePointer, grid.X, grid.Y, grid.Z, block.X, block.Y, block.Z,
                                                   dynamicSharedBytes, (void**)arguments.ArgumentArray);
            // The name carries the launch, so a kernel fault says which launch (no '(' or '.', which Check would trim).
            if (status != 0)
                Check.Simt(status, $"lk_simt_launch of {kernel} with grid {grid.X}x{grid.Y}x{grid.Z}, block {block.X}x{block.Y}x{block.Z}, {dynamicSharedBytes} B dynamic shared");
        }
    }

    /// <summary>The emulator's stream is synchronous: every launch has finished when it returns.</summary>
    public void Synchronize() { }

    public int MultiprocessorCount => EmulatedMultiprocessors;

    public int MaxDynamicSharedBytesPerBlock => NativeSimt.MaxDynamicSharedBytes;

    /// <summary>The emulator runs mma.sync, ldmatrix and cp.async from the PTX ISA's layouts, as an sm_80 does.</summary>
    public bool TensorCores => true;

    public IVendorMath VendorMath { get; }

    /// <summary>Names of every kernel compiled into the emulator.</summary>
    public static IReadOnlyList<string> KernelNames()
    {
        int count = NativeSimt.lk_simt_kernel_count();
        var names = new List<string>(count);
        for (int i = 0; i < count; i++) names.Add(Utf8.Read(NativeSimt.lk_simt_kernel_name(i)) ?? "");
        return names;
    }

    /// <summary>Nothing to release: buffers free themselves and the library stays loaded for the process.</summary>
    public void Dispose() { }
}
