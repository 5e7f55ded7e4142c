// The 4-bit format (REFERENCE.md §8.1-8.4): bitsandbytes-compatible blockwise NF4/FP4 quantization
// with optional double quantization, dequantization and the product that consumes a quantized
// weight without materialising it, y = x·deq(W)ᵀ + bias. (In this family "Nf4" names the format,
// NF4 or FP4, and "Qlora" the LoRA adapter over it: Ops.Qlora.) Every argument is checked before
// anything is allocated or launched.
using LoraKernels.Families.Qlora;
using LoraKernels.Runtime;

namespace LoraKernels.Ops;

public static partial class Nf4
{
    /// <summary>Smallest and largest block size bitsandbytes accepts (powers of two in between).</summary>
    public const int MinBlockSize = 32;
    public const int MaxBlockSize = 4096;

    /// <summary>
    /// Quantizes <paramref name="weight"/> (F32 or BF16, any shape, flattened row-major) blockwise
    /// as bitsandbytes' quantize_4bit. With <paramref name="doubleQuant"/> the block absmax values
    /// are double-quantized (compress_statistics) and only the nested form is kept.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">blockSize is not a power of two in [32, 4096], or type is unknown.</exception>
    /// <exception cref="ArgumentException">weight is empty, too large, or holds NaN or ±Inf (the message names the first bad index).</exception>
    public static QuantizedWeight Quantize(Tensor weight, QuantType type = QuantType.Nf4, int blockSize = 64, bool doubleQuant = false)
    {
        const string op = "Nf4.Quantize";
        Checks.Alive(weight, op, nameof(weight));
        Checks.NotEmpty(op, nameof(weight), weight);
        CheckQuantType(op, type);
        CheckBlockSize(op, blockSize);
        Checks.AllFinite(op, nameof(weight), weight, "4-bit blocks scale by their absmax, so one NaN or Inf poisons its block.");

        var quantized = new QuantizedWeight(weight.Device, type, blockSize, [.. weight.Shape], weight.DType);
        try
        {
            Device device = weight.Device;
            IQloraKernels.On(device).Quantize(weight, quantized);
            if (doubleQuant)
            {
                quantized.AllocateNested();
                IQloraKernels.On(device).DoubleQuantize(quantized);
                quantized.ReleasePlainAbsmax();
            }
            return quantized;
        }
        catch
        {
            quantized.Dispose();
            throw;
        }
    }

    /// <summary>deq(w): a tensor of w's shape and dtype (bnb's dequantize_4bit).</summary>
    public static Tensor Dequantize(QuantizedWeight w)
    {
        const string op = "Nf4.Dequantize";
        Alive(w, op, nameof(w));
        Tensor result = Tensor.Empty(w.Device, w.DType, [.. w.Shape]);
        try
        {
            IQloraKernels.On(w.Device).Dequantize(w, result);
            return result;
        }
        catch
        {
            result.Dispose();
            throw;
        }
    }

    /// <summary>
    /// y = x·deq(W)ᵀ + bias without forming deq(W). x [M, in] (F32 or BF16), W quantized [out, in],
    /// bias [out] or null in x's dtype; all on one device. Returns y [M, out] in x's dtype.
    /// </summary>
    public static Tensor Matmul(Tensor x, QuantizedWeight w, Tensor? bias)
    {
        const string op = "Nf4.Matmul";
        AdapterDims d = CheckBase(op, x, w);
        AdapterChecks.Bias(op, bias, d);
        AdapterChecks.OutputSize(op, "y", d.M, d.Out);
        Tensor y = Tensor.Empty(d.Device, d.DType, d.M, d.Out);
        try
        {
            IQloraKernels.On(d.Device).Matmul(x, w, bias, y);
            return y;
        }
        catch
        {
            y.Dispose();
            throw;
        }
    }

    /// <summary>Throws unless <paramref name="blockSize"/> is a power of two in [32, 4096].</summary>
    internal static void CheckBlockSize(string op, int blockSize)
    {
        if (blockSize < MinBlockSize || blockSize > MaxBlockSize || (blockSize & (blockSize - 1)) != 0)
            throw new ArgumentOutOfRangeException(nameof(blockSize), blockSize,
                $"{op}: blockSize must be a power of two in [{MinBlockSize}, {MaxBlockSize}] (bitsandbytes' 32, 64, ..., 4096).");
    }

    internal static void CheckQuantType(string op, QuantType type)
    {
        if (type != QuantType.Nf4 && type != QuantType.Fp4)
            throw new ArgumentOutOfRangeException(nameof(type), type, $"{op}: type must be QuantType.Nf4 or QuantType.Fp4.");
    }

    private static void Alive(QuantizedWeight? w, string op, string name)
    {
        if (w is null) throw new ArgumentNullException(name, $"{op}: {name} is null.");
        w.ThrowIfDisposed(name);
    }

    /// <summary>W a quantized [out, in] matrix, then x [M, in] (F32 or BF16) on W's device.</summary>
    internal static AdapterDims CheckBase(string op, Tensor x, QuantizedWeight w)
    {
        Alive(w, op, nameof(w));
        if (w.Shape.Count != 2 || w.Shape[0] < 1 || w.Shape[1] < 1)
            throw new ArgumentException($"{op}: w must be a quantized matrix [out, in] with out, in >= 1, got {w.Describe()}", nameof(w));
        if (w.ElementCount > Checks.MaxElements)
            throw new ArgumentException($"{op}: w has {w.ElementCount} elements; kernels index with 32-bit integers, got {w.Describe()}", nameof(w));
        long inFeatures = w.Shape[1];
        Checks.Alive(x, op, nameof(x));
        DType dtype = x.DType == DType.BF16 ? DType.BF16 : DType.F32;
        long m = AdapterChecks.Activations(op, x, inFeatures, dtype, w.Device, "w");
        return new AdapterDims(m, inFeatures, w.Shape[0], 0, x.DType, x.Device);
    }

}
