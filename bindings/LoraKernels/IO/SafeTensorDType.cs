// The element types of the safetensors format (REFERENCE.md §9.3; safetensors' tensor.rs), with
// their sizes in bits. Sub-byte types (F4, F6_*) are legal when a tensor's total bit count is a
// whole number of bytes. Names are the format's strings, so ToString() is what a header holds.
namespace LoraKernels.IO;

#pragma warning disable CA1707 // the format's own names (F8_E4M3, ...) are kept verbatim
public enum SafeTensorDType
{
    BOOL, F4, F6_E2M3, F6_E3M2, U8, I8, F8_E5M2, F8_E4M3, F8_E8M0, F8_E4M3FNUZ, F8_E5M2FNUZ,
    I16, U16, F16, BF16, I32, U32, F32, C64, F64, I64, U64,
}
#pragma warning restore CA1707

public static class SafeTensorDTypes
{
    /// <summary>Bits per element.</summary>
    public static int BitSize(this SafeTensorDType dtype) => dtype switch
    {
        SafeTensorDType.F4 => 4,
        SafeTensorDType.F6_E2M3 or SafeTensorDType.F6_E3M2 => 6,
        SafeTensorDType.BOOL or SafeTensorDType.U8 or SafeTensorDType.I8 or SafeTensorDType.F8_E5M2 or SafeTensorDType.F8_E4M3
            or SafeTensorDType.F8_E8M0 or SafeTensorDType.F8_E4M3FNUZ or SafeTensorDType.F8_E5M2FNUZ => 8,
        SafeTensorDType.I16 or SafeTensorDType.U16 or SafeTensorDType.F16 or SafeTensorDType.BF16 => 16,
        SafeTensorDType.I32 or SafeTensorDType.U32 or SafeTensorDType.F32 => 32,
        SafeTensorDType.C64 or SafeTensorDType.F64 or SafeTensorDType.I64 or SafeTensorDType.U64 => 64,
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "Unknown safetensors dtype."),
    };

    /// <summary>The alignment the canonical writer sorts by (bytes per element, at least 1).</summary>
    public static int Alignment(this SafeTensorDType dtype) => Math.Max(1, dtype.BitSize() / 8);

    /// <summary>The dtype called <paramref name="name"/> in a header ("F32", "BF16", ...; exact case), or null.</summary>
    public static SafeTensorDType? Parse(string name) =>
        Enum.TryParse(name, ignoreCase: false, out SafeTensorDType dtype) && Enum.IsDefined(dtype) && !char.IsDigit(name[0]) ? dtype : null;

    /// <summary>Bytes of a tensor of <paramref name="elementCount"/> elements, or null when the bits are not a whole number of bytes or overflow.</summary>
    public static long? ByteLength(this SafeTensorDType dtype, long elementCount)
    {
        if (elementCount < 0) return null;
        long bits;
        try
        {
            bits = checked(elementCount * dtype.BitSize());
        }
        catch (OverflowException)
        {
            return null;
        }
        return bits % 8 == 0 ? bits / 8 : null;
    }

    /// <summary>Whether values of this dtype convert to float (the F*, BF16, integer and BOOL types; not F4/F6/F8/C64).</summary>
    public static bool ConvertsToFloat(this SafeTensorDType dtype) => dtype switch
    {
        SafeTensorDType.F32 or SafeTensorDType.F16 or SafeTensorDType.BF16 or SafeTensorDType.F64 or SafeTensorDType.BOOL
            or SafeTensorDType.U8 or SafeTensorDType.I8 or SafeTensorDType.I16 or SafeTensorDType.U16 or SafeTensorDType.I32
            or SafeTensorDType.U32 or SafeTensorDType.I64 or SafeTensorDType.U64 => true,
        _ => false,
    };
}
