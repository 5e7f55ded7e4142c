// libloraknl_cpu: the DoRA exports (native/include/lora_kernels_dora.h).
using System.Runtime.InteropServices;

namespace LoraKernels.Interop;

/// <summary>lk_dora_norm_report: what a weight-norm call did.</summary>
internal struct LkDoraNormReport
{
    public long RecomputedRows;
    public long ZeroRows;
}

internal static unsafe partial class NativeCpu
{
    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_dora_row_sqnorm(long outFeatures, long inFeatures, float* w0, float* sqnorm);

    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_dora_weight_norm(long outFeatures, long inFeatures, long r, float* w0, float* w0Sqnorm,
                                                      float* a, float* b, float scale, float* norm, LkDoraNormReport* report);

    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_dora_weight_norm_4bit(long outFeatures, long inFeatures, long r, byte* codes,
                                                           LkQuantStats* stats, float* w0Sqnorm, float* a, float* b, float scale,
                                                           float* norm, LkDoraNormReport* report);

    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_dora_forward(long m, long inFeatures, long outFeatures, long r, float* x, float* w0,
                                                  float* bias, float* a, float* b, float scale, float* magnitude,
                                                  float* norm, float* y, float* u, float* z);

    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_dora_backward(long m, long inFeatures, long outFeatures, long r, float* x, float* w0,
                                                   float* a, float* b, float* u, float* z, float* dy, float scale,
                                                   float* magnitude, float* norm, float* dx, float* dA, float* dB,
                                                   float* dMagnitude);

    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_dora_merge(long outFeatures, long inFeatures, long r, float* w, float* a, float* b,
                                                float* magnitude, float* norm, float scale, int invert);

    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_dora_scale_columns(long m, long outFeatures, float* z, float* magnitude, float* norm,
                                                        float* bias, float* y);

    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_dora_scale_grad(long m, long outFeatures, float* dy, float* z, float* magnitude,
                                                     float* norm, float* dMagnitude, float* dz);

    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_dora_dropout(long n, float* x, float p, ulong seed, float* y);
}
