namespace LoraKernels.Runtime;

/// <summary>Grid or block dimensions of a kernel launch, as CUDA's <c>dim3</c>.</summary>
public readonly record struct Dim3(uint X, uint Y = 1, uint Z = 1)
{
    public ulong Count => (ulong)X * Y * Z;
    public override string ToString() => $"({X}, {Y}, {Z})";
}

/// <summary>
/// What the GPU backend needs from a device that runs <c>kernels/*.cu</c>: memory, copies and
/// launches by kernel name. <see cref="CudaKernelDevice"/> serves it with the CUDA driver API
/// (kernels from NVRTC or the AOT fatbin); <see cref="SimtKernelDevice"/> with host memory and
/// the SIMT emulator. One GPU backend drives both, so launch geometry and argument packing
/// are exercised on every CI machine exactly as they run on a GPU.
/// </summary>
public interface IKernelDevice : IDisposable
{
    /// <summary>Allocates <paramref name="bytes"/> of device memory (contents undefined).</summary>
    DeviceBuffer Allocate(long bytes);

    void Upload(DeviceBuffer destination, long destinationOffsetBytes, ReadOnlySpan<byte> source);
    void Download(DeviceBuffer source, long sourceOffsetBytes, Span<byte> destination);
    void CopyDeviceToDevice(DeviceBuffer source, long sourceOffsetBytes, DeviceBuffer destination, long destinationOffsetBytes, long bytes);
    void Memset(DeviceBuffer destination, long offsetBytes, long bytes, byte value);

    /// <summary>
    /// Launches the kernel named <paramref name="kernel"/> (an <c>lk_*</c> entry point) on the
    /// device's stream. The argument list mirrors the kernel's parameters in order.
    /// </summary>
    void Launch(string kernel, Dim3 grid, Dim3 block, uint dynamicSharedBytes, KernelArguments arguments);

    /// <summary>Waits for all work queued on the device's stream.</summary>
    void Synchronize();

    /// <summary>Multiprocessors, used to size grids of persistent or decode kernels.</summary>
    int MultiprocessorCount { get; }

    /// <summary>Largest dynamic shared memory one block may request (opt-in limit).</summary>
    int MaxDynamicSharedBytesPerBlock { get; }

    /// <summary>
    /// True when bf16 products run on the tensor-core engine (kernels/tile_mma.cuh: mma.sync, ldmatrix,
    /// cp.async, sm_80 and newer); false selects the CUDA-core tile engine for them.
    /// </summary>
    bool TensorCores { get; }

    /// <summary>Dense GEMM and SVD from a vendor library (cuBLAS/cuSOLVER on CUDA, the CPU kernels under the emulator).</summary>
    IVendorMath VendorMath { get; }
}
