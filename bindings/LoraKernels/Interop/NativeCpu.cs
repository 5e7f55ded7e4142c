// libloraknl_cpu: every lk_* export of the CPU kernels (native/include/lora_kernels.h), with the
// header's types: int64_t -> long, int32_t -> int, uint64_t -> ulong, uint16_t -> ushort.
using System.Runtime.InteropServices;

namespace LoraKernels.Interop;

internal static unsafe partial class NativeCpu
{
    static NativeCpu() => NativeLibraryResolver.EnsureRegistered();

    [LibraryImport(LibraryNames.Cpu)] public static partial byte* lk_status_name(int status);
    [LibraryImport(LibraryNames.Cpu)] public static partial long lk_cpu_last_error(byte* buffer, long capacity);
    [LibraryImport(LibraryNames.Cpu)] public static partial int lk_cpu_isa();
    [LibraryImport(LibraryNames.Cpu)] public static partial int lk_cpu_set_num_threads(int n);
    [LibraryImport(LibraryNames.Cpu)] public static partial int lk_cpu_get_num_threads();

    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_sgemm(int transA, int transB, long m, long n, long k, float alpha,
                                           float* a, long lda, float* b, long ldb, float beta, float* c, long ldc);

    [LibraryImport(LibraryNames.Cpu)] public static partial int lk_cpu_relu_forward(long n, float* x, float* y);
    [LibraryImport(LibraryNames.Cpu)] public static partial int lk_cpu_relu_backward(long n, float* x, float* dy, float* dx);
    [LibraryImport(LibraryNames.Cpu)] public static partial int lk_cpu_axpy(long n, float alpha, float* x, float* y);
    [LibraryImport(LibraryNames.Cpu)] public static partial int lk_cpu_mse_loss(long n, float* pred, float* target, float* loss, float* dpred);
    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_cross_entropy(long m, long c, float* logits, int* targets, int ignoreIndex, float labelSmoothing,
                                                   float* loss, float* dlogits);
    [LibraryImport(LibraryNames.Cpu)] public static partial int lk_cpu_first_nonfinite(long n, float* x, long* index);

    [LibraryImport(LibraryNames.Cpu)] public static partial int lk_cpu_bf16_to_f32(long n, ushort* source, float* destination);
    [LibraryImport(LibraryNames.Cpu)] public static partial int lk_cpu_f32_to_bf16(long n, float* source, ushort* destination);
}
