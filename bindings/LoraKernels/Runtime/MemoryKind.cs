// Where a buffer's memory lives. Most tensors live in the device's own memory; an optimizer whose
// state does not fit there keeps it in pinned host memory (CUDA, moved through the GPU in chunks)
// or in a memory-mapped file (CPU, paged to and from disk by the OS). Devices serve the kinds they
// can and refuse the others with NotSupportedException before allocating anything.
namespace LoraKernels;

public enum MemoryKind
{
    /// <summary>The device's own memory: GPU memory on CUDA, host memory on the CPU and the emulator.</summary>
    Device,

    /// <summary>Page-locked host memory that a GPU copies to and from asynchronously (cuMemHostAlloc); plain host memory on the CPU and the emulator.</summary>
    PinnedHost,

    /// <summary>Memory that migrates between host and GPU on demand (cuMemAllocManaged); plain host memory on the CPU and the emulator.</summary>
    Managed,

    /// <summary>
    /// A file mapped into memory (CPU only): the OS pages it to and from disk, so it may exceed the RAM.
    /// The file is created in LORAKERNELS_PAGING_DIR (default: the temporary folder) and deleted at once; it
    /// lives as long as the buffer.
    /// </summary>
    MappedFile,
}
