// Element types a tensor can store. Arithmetic is always fp32; bf16 is a storage format.
namespace LoraKernels;

public enum DType { F32, BF16 }

public static class DTypeInfo
{
    /// <summary>Bytes per element.</summary>
    public static int SizeOf(DType dtype) => dtype switch
    {
        DType.F32 => 4,
        DType.BF16 => 2,
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "Unknown dtype."),
    };
}
