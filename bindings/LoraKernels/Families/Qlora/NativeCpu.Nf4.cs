// libloraknl_cpu's 4-bit quantization and QLoRA exports (native/include/lora_kernels_nf4.h).
using System.Runtime.InteropServices;

namespace LoraKernels.Interop;

/// <summary>lk_quant_stats: one quantized tensor's statistics, plain (Absmax) or nested (QAbsmax, Absmax2, Offset).</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct LkQuantStats
{
    public int QuantType;
    public int Reserved;
    public long BlockSize;
    public float* Absmax;
    public byte* QAbsmax;
    public float* Absmax2;
    public float Offset;
    public int Reserved2;
}

internal static unsafe partial class NativeCpu
{
    [LibraryImport(LibraryNames.Cpu)] public static partial int lk_cpu_quant_table(int quantType, float* table16);
    [LibraryImport(LibraryNames.Cpu)] public static partial int lk_cpu_dynamic_map_signed(float* table256);

    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_quantize_4bit(int quantType, long n, long blockSize, float* w, byte* codes, float* absmax);

    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_dequantize_4bit(long n, byte* codes, LkQuantStats* stats, float* w);

    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_double_quantize(long nblocks, float* absmax, byte* qabsmax, float* absmax2, float* offset);

    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_double_dequantize(long nblocks, byte* qabsmax, float* absmax2, float offset, float* absmax);

    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_nf4_matmul(long m, long inFeatures, long outFeatures, float* x, byte* codes,
                                                LkQuantStats* stats, float* bias, float* y);

    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_qlora_forward(long m, long inFeatures, long outFeatures, long r, float* x, byte* codes,
                                                   LkQuantStats* stats, float* bias, float* a, float* b, float scale,
                                                   float dropoutP, ulong seed, float* y, float* u);

    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_qlora_backward(long m, long inFeatures, long outFeatures, long r, float* x, byte* codes,
                                                    LkQuantStats* stats, float* a, float* b, float* u, float* dy, float scale,
                                                    float dropoutP, ulong seed, float* dx, float* dA, float* dB);
}
