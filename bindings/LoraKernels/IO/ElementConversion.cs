// Conversions between a safetensors tensor's little-endian bytes and float values: every dtype
// that has a float meaning reads as float (F16 through System.Half, BF16 with the kernels' bit
// rules, integers and BOOL exactly where float holds them), and F32, F16 and BF16 can be written
// from floats (F16 and BF16 round to nearest even, as torch's .to() does).
using System.Buffers.Binary;
using System.Runtime.InteropServices;

namespace LoraKernels.IO;

internal static class ElementConversion
{
    /// <summary>Converts <paramref name="source"/> (whole elements of <paramref name="dtype"/>) into <paramref name="destination"/>.</summary>
    public static void ToSingle(SafeTensorDType dtype, ReadOnlySpan<byte> source, Span<float> destination)
    {
        int count = (int)(source.Length / (dtype.BitSize() / 8));
        if (destination.Length < count) throw new ArgumentException("Destination is too short.", nameof(destination));
        switch (dtype)
        {
            case SafeTensorDType.F32:
                MemoryMarshal.Cast<byte, float>(source).CopyTo(destination);
                break;
            case SafeTensorDType.BF16:
                BFloat16.ToSingle(MemoryMarshal.Cast<byte, ushort>(source), destination);
                break;
            case SafeTensorDType.F16:
                ReadOnlySpan<Half> halves = MemoryMarshal.Cast<byte, Half>(source);
                for (int i = 0; i < count; i++) destination[i] = (float)halves[i];
                break;
            case SafeTensorDType.F64:
                ReadOnlySpan<double> doubles = MemoryMarshal.Cast<byte, double>(source);
                for (int i = 0; i < count; i++) destination[i] = (float)doubles[i];
                break;
            case SafeTensorDType.BOOL:
            case SafeTensorDType.U8:
                for (int i = 0; i < count; i++) destination[i] = source[i];
                break;
            case SafeTensorDType.I8:
                for (int i = 0; i < count; i++) destination[i] = (sbyte)source[i];
                break;
            case SafeTensorDType.I16:
                for (int i = 0; i < count; i++) destination[i] = BinaryPrimitives.ReadInt16LittleEndian(source[(2 * i)..]);
                break;
            case SafeTensorDType.U16:
                for (int i = 0; i < count; i++) destination[i] = BinaryPrimitives.ReadUInt16LittleEndian(source[(2 * i)..]);
                break;
            case SafeTensorDType.I32:
                for (int i = 0; i < count; i++) destination[i] = BinaryPrimitives.ReadInt32LittleEndian(source[(4 * i)..]);
                break;
            case SafeTensorDType.U32:
                for (int i = 0; i < count; i++) destination[i] = BinaryPrimitives.ReadUInt32LittleEndian(source[(4 * i)..]);
                break;
            case SafeTensorDType.I64:
                for (int i = 0; i < count; i++) destination[i] = BinaryPrimitives.ReadInt64LittleEndian(source[(8 * i)..]);
                break;
            case SafeTensorDType.U64:
                for (int i = 0; i < count; i++) destination[i] = BinaryPrimitives.ReadUInt64LittleEndian(source[(8 * i)..]);
                break;
            default:
                throw new NotSupportedException($"{dtype} values have no float conversion in this library.");
        }
    }

    /// <summary>Writes <paramref name="source"/> as <paramref name="dtype"/> (F32, F16 or BF16) into <paramref name="destination"/>.</summary>
    public static void FromSingle(SafeTensorDType dtype, ReadOnlySpan<float> source, Span<byte> destination)
    {
        switch (dtype)
        {
            case SafeTensorDType.F32:
                MemoryMarshal.AsBytes(source).CopyTo(destination);
                break;
            case SafeTensorDType.BF16:
                BFloat16.FromSingle(source, MemoryMarshal.Cast<byte, ushort>(destination));
                break;
            case SafeTensorDType.F16:
                Span<Half> halves = MemoryMarshal.Cast<byte, Half>(destination);
                for (int i = 0; i < source.Length; i++) halves[i] = (Half)source[i];
                break;
            default:
                throw new NotSupportedException($"Writing floats as {dtype} is not supported (F32, F16 or BF16).");
        }
    }
}
