// CUDA driver API (libcuda.so.1): the subset the runtime uses. Blittable signatures only:
// CUresult is int, handles are IntPtr, CUdeviceptr is ulong, size_t is nuint, strings are byte*.
using System.Runtime.InteropServices;

namespace LoraKernels.Interop;

internal static unsafe partial class CudaDriver
{
    static CudaDriver() => NativeLibraryResolver.EnsureRegistered();

    public const int Success = 0;
    public const int ErrorNoDevice = 100;

    // CUdevice_attribute values (cuda.h).
    public const int AttributeMultiprocessorCount = 16;
    public const int AttributeComputeCapabilityMajor = 75;
    public const int AttributeComputeCapabilityMinor = 76;
    public const int AttributeMaxSharedMemoryPerBlockOptin = 97;
    public const int AttributeMemoryPoolsSupported = 115;
    public const int AttributeL2CacheSize = 38;

    public const int ErrorOutOfMemory = 2;

    // CUmemPool_attribute: bytes a pool keeps cached when released memory is not in use.
    public const int MemPoolAttributeReleaseThreshold = 4;

    // CUfunction_attribute.
    public const int FunctionAttributeMaxDynamicSharedSizeBytes = 8;

    [LibraryImport(LibraryNames.Cuda)] public static partial int cuInit(uint flags);
    [LibraryImport(LibraryNames.Cuda)] public static partial int cuDriverGetVersion(int* driverVersion);
    [LibraryImport(LibraryNames.Cuda)] public static partial int cuDeviceGetCount(int* count);
    [LibraryImport(LibraryNames.Cuda)] public static partial int cuDeviceGet(int* device, int ordinal);
    [LibraryImport(LibraryNames.Cuda)] public static partial int cuDeviceGetName(byte* name, int length, int device);
    [LibraryImport(LibraryNames.Cuda)] public static partial int cuDeviceGetAttribute(int* value, int attribute, int device);
    [LibraryImport(LibraryNames.Cuda, EntryPoint = "cuDeviceTotalMem_v2")] public static partial int cuDeviceTotalMem(nuint* bytes, int device);

    [LibraryImport(LibraryNames.Cuda)] public static partial int cuDevicePrimaryCtxRetain(IntPtr* context, int device);
    [LibraryImport(LibraryNames.Cuda, EntryPoint = "cuDevicePrimaryCtxRelease_v2")] public static partial int cuDevicePrimaryCtxRelease(int device);
    [LibraryImport(LibraryNames.Cuda)] public static partial int cuCtxSetCurrent(IntPtr context);

    [LibraryImport(LibraryNames.Cuda, EntryPoint = "cuMemAlloc_v2")] public static partial int cuMemAlloc(ulong* devicePointer, nuint bytes);
    [LibraryImport(LibraryNames.Cuda, EntryPoint = "cuMemFree_v2")] public static partial int cuMemFree(ulong devicePointer);
    [LibraryImport(LibraryNames.Cuda, EntryPoint = "cuMemcpyHtoD_v2")] public static partial int cuMemcpyHtoD(ulong destination, void* source, nuint bytes);
    [LibraryImport(LibraryNames.Cuda, EntryPoint = "cuMemcpyDtoH_v2")] public static partial int cuMemcpyDtoH(void* destination, ulong source, nuint bytes);
    [LibraryImport(LibraryNames.Cuda, EntryPoint = "cuMemcpyDtoD_v2")] public static partial int cuMemcpyDtoD(ulong destination, ulong source, nuint bytes);
    [LibraryImport(LibraryNames.Cuda, EntryPoint = "cuMemsetD8_v2")] public static partial int cuMemsetD8(ulong destination, byte value, nuint count);
    [LibraryImport(LibraryNames.Cuda, EntryPoint = "cuMemGetInfo_v2")] public static partial int cuMemGetInfo(nuint* free, nuint* total);
    // Stream-ordered allocation (driver API 11.2 and newer).
    [LibraryImport(LibraryNames.Cuda)] public static partial int cuMemAllocAsync(ulong* devicePointer, nuint bytes, IntPtr stream);
    [LibraryImport(LibraryNames.Cuda)] public static partial int cuMemFreeAsync(ulong devicePointer, IntPtr stream);
    [LibraryImport(LibraryNames.Cuda)] public static partial int cuDeviceGetDefaultMemPool(IntPtr* pool, int device);
    [LibraryImport(LibraryNames.Cuda)] public static partial int cuMemPoolSetAttribute(IntPtr pool, int attribute, void* value);
    [LibraryImport(LibraryNames.Cuda)] public static partial int cuMemPoolTrimTo(IntPtr pool, nuint minBytesToKeep);

    // Pinned host and managed memory, and copies that overlap kernels (paged optimizer state).
    public const uint MemHostAllocPortable = 0x01;   // CU_MEMHOSTALLOC_PORTABLE: pinned for every context
    public const uint MemHostAllocDeviceMap = 0x02;  // CU_MEMHOSTALLOC_DEVICEMAP: addressable by kernels (UVA)
    public const uint MemAttachGlobal = 0x01;        // CU_MEM_ATTACH_GLOBAL
    public const uint StreamNonBlocking = 0x01;      // CU_STREAM_NON_BLOCKING: no implicit sync with the legacy stream
    public const uint EventDisableTiming = 0x02;     // CU_EVENT_DISABLE_TIMING
    [LibraryImport(LibraryNames.Cuda, EntryPoint = "cuMemHostAlloc")] public static partial int cuMemHostAlloc(void** pointer, nuint bytes, uint flags);
    [LibraryImport(LibraryNames.Cuda)] public static partial int cuMemFreeHost(void* pointer);
    [LibraryImport(LibraryNames.Cuda)] public static partial int cuMemAllocManaged(ulong* devicePointer, nuint bytes, uint flags);
    [LibraryImport(LibraryNames.Cuda)] public static partial int cuMemcpy(ulong destination, ulong source, nuint bytes);
    [LibraryImport(LibraryNames.Cuda)] public static partial int cuMemcpyAsync(ulong destination, ulong source, nuint bytes, IntPtr stream);
    [LibraryImport(LibraryNames.Cuda)] public static partial int cuCtxSynchronize();
    [LibraryImport(LibraryNames.Cuda)] public static partial int cuEventCreate(IntPtr* evt, uint flags);
    [LibraryImport(LibraryNames.Cuda, EntryPoint = "cuEventDestroy_v2")] public static partial int cuEventDestroy(IntPtr evt);
    [LibraryImport(LibraryNames.Cuda)] public static partial int cuEventRecord(IntPtr evt, IntPtr stream);
    [LibraryImport(LibraryNames.Cuda)] public static partial int cuStreamWaitEvent(IntPtr stream, IntPtr evt, uint flags);

    [LibraryImport(LibraryNames.Cuda)] public static partial int cuStreamCreate(IntPtr* stream, uint flags);
    [LibraryImport(LibraryNames.Cuda, EntryPoint = "cuStreamDestroy_v2")] public static partial int cuStreamDestroy(IntPtr stream);
    [LibraryImport(LibraryNames.Cuda)] public static partial int cuStreamSynchronize(IntPtr stream);

    [LibraryImport(LibraryNames.Cuda)] public static partial int cuModuleLoadData(IntPtr* module, void* image);
    [LibraryImport(LibraryNames.Cuda)] public static partial int cuModuleUnload(IntPtr module);
    [LibraryImport(LibraryNames.Cuda)] public static partial int cuModuleGetFunction(IntPtr* function, IntPtr module, byte* name);
    [LibraryImport(LibraryNames.Cuda)] public static partial int cuFuncSetAttribute(IntPtr function, int attribute, int value);
    [LibraryImport(LibraryNames.Cuda)]
    public static partial int cuLaunchKernel(IntPtr function, uint gridX, uint gridY, uint gridZ,
                                             uint blockX, uint blockY, uint blockZ, uint sharedMemBytes,
                                             IntPtr stream, void** kernelParams, void** extra);

    [LibraryImport(LibraryNames.Cuda)] public static partial int cuEventSynchronize(IntPtr e);
    [LibraryImport(LibraryNames.Cuda)] public static partial int cuEventElapsedTime(float* milliseconds, IntPtr start, IntPtr end);

    [LibraryImport(LibraryNames.Cuda)] public static partial int cuGetErrorName(int error, byte** name);
    [LibraryImport(LibraryNames.Cuda)] public static partial int cuGetErrorString(int error, byte** description);
}
