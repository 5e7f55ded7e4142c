// libloraknl_cpu's VeRA exports (native/include/lora_kernels_vera.h).
using System.Runtime.InteropServices;

namespace LoraKernels.Interop;

internal static unsafe partial class NativeCpu
{
    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_vera_forward(long m, long inFeatures, long outFeatures, long r, float* x, float* w0,
                                                  float* bias, float* a, long lda, float* b, float* lambdaD,
                                                  float* lambdaB, float dropoutP, ulong seed, float* y, float* u);

    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_vera_backward(long m, long inFeatures, long outFeatures, long r, float* w0, float* a,
                                                   long lda, float* b, float* lambdaD, float* lambdaB, float* u,
                                                   float* dy, float dropoutP, ulong seed, float* dx, float* dLambdaD,
                                                   float* dLambdaB);

    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_vera_merge(long outFeatures, long inFeatures, long r, float* w, float* a, long lda,
                                                float* b, float* lambdaD, float* lambdaB, float scale);
}
