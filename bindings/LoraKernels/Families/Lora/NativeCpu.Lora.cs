// libloraknl_cpu's LoRA exports (native/include/lora_kernels_lora.h): part of Interop.NativeCpu, whose
// static constructor registers the native library resolver, kept beside the family that calls them.
using System.Runtime.InteropServices;

namespace LoraKernels.Interop;

internal static unsafe partial class NativeCpu
{
    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_lora_forward(long m, long inFeatures, long outFeatures, long r,
                                                  float* x, float* w0, float* bias, float* a, float* b,
                                                  float scale, float dropoutP, ulong seed, float* y, float* u);

    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_lora_backward(long m, long inFeatures, long outFeatures, long r,
                                                   float* x, float* w0, float* a, float* b, float* u, float* dy,
                                                   float scale, float dropoutP, ulong seed,
                                                   float* dx, float* dA, float* dB);

    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_lora_merge(long outFeatures, long inFeatures, long r, float* w, float* a, float* b, float scale);
}
