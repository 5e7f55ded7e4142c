// libloraknl_cpu's optimizer kernels, page hints and file transfers (native/include/lora_kernels_optim.h).
using System.Runtime.InteropServices;
using LoraKernels.Optim;

namespace LoraKernels.Interop;

internal static unsafe partial class NativeCpu
{
    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_adamw(AdamWSegment* segments, long count, float beta1, float beta2, float gradScale, int bnbForm);

    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_adamw8bit(AdamW8bitSegment* segments, long count, float beta1, float beta2, float gradScale);

    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_grad_sumsq(GradSpan* spans, long count, double* sum);

    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_pages_readahead(void* address, long bytes);

    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_pages_release(void* address, long bytes);

    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_file_read(FileRun* runs, long count);

    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_file_write(FileRun* runs, long count);
}
