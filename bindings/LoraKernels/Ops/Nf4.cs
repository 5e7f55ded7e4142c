// The 4-bit family (REFERENCE.md §8.1-8.4): bitsandbytes-compatible blockwise NF4/FP4 quantization
// with optional double quantization, and the ops that consume a quantized weight without
// materialising it: y = x·deq(W)ᵀ + bias, and the QLoRA forward/backward
//   y = x·deq(W)ᵀ + bias + scale·(dropout(x)·Aᵀ)·Bᵀ
// mirroring Ops.Lora. Every argument is checked before anything is allocated or launched.
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
            device.Backend.Quantize4Bit(weight, quantized);
            if (doubleQuant)
            {
                quantized.AllocateNested();
                device.Backend.DoubleQuantize(quantized);
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
            w.Device.Backend.Dequantize4Bit(w, result);
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
            d.Device.Backend.Nf4Matmul(x, w, bias, y);
            return y;
        }
        catch
        {
            y.Dispose();
            throw;
        }
    }

    /// <summary>
    /// QLoRA forward: y = x·deq(W)ᵀ + bias + scale·(dropout(x)·Aᵀ)·Bᵀ, as <see cref="Lora.Forward"/> with
    /// the base weight quantized. A [r, in] and B [out, r] in x's dtype. Returns Y [M, out] (x's
    /// dtype) and U = dropout(x)·Aᵀ [M, r] (F32) for <see cref="QloraBackward"/>.
    /// </summary>
    public static (Tensor Y, Tensor U) QloraForward(Tensor x, QuantizedWeight w, Tensor? bias, Tensor a, Tensor b,
                                                    float scale, float dropoutP = 0f, ulong seed = 0)
    {
        const string op = "Nf4.QloraForward";
        AdapterDims d = CheckAdapter(op, x, w, a, b);
        AdapterChecks.Bias(op, bias, d);
        Checks.Finite(op, nameof(scale), scale);
        Checks.DropoutProbability(op, nameof(dropoutP), dropoutP);
        AdapterChecks.OutputSize(op, "y", d.M, d.Out);
        AdapterChecks.OutputSize(op, "u", d.M, d.R);

        Tensor y = Tensor.Empty(d.Device, d.DType, d.M, d.Out);
        Tensor? u = null;
        try
        {
            u = Tensor.Empty(d.Device, DType.F32, d.M, d.R);
            d.Device.Backend.QloraForward(x, w, bias, a, b, scale, dropoutP, seed, y, u);
            return (y, u);
        }
        catch
        {
            Checks.DisposeAll(y, u);
            throw;
        }
    }

    /// <summary>
    /// Gradients of <see cref="QloraForward"/> given dy [M, out] (x's dtype) and the forward's u [M, r]
    /// (F32): dx [M, in] = dy·deq(W) + dropout'(du·A), dA [r, in], dB [out, r], each only when requested.
    /// The base weight is frozen, so it has no gradient. Pass the forward's scale, dropout and seed.
    /// </summary>
    public static (Tensor? Dx, Tensor? DA, Tensor? DB) QloraBackward(Tensor x, QuantizedWeight w, Tensor a, Tensor b, Tensor u,
                                                                     Tensor dy, float scale, float dropoutP = 0f, ulong seed = 0,
                                                                     bool needDx = true, bool needDA = true, bool needDB = true)
    {
        const string op = "Nf4.QloraBackward";
        AdapterDims d = CheckAdapter(op, x, w, a, b);
        Checks.Alive(u, op, nameof(u));
        Checks.Shape(op, nameof(u), u, "M, r", [d.M, d.R], DType.F32, d.Device);
        Checks.Alive(dy, op, nameof(dy));
        Checks.Shape(op, nameof(dy), dy, "M, out", [d.M, d.Out], d.DType, d.Device);
        Checks.Finite(op, nameof(scale), scale);
        Checks.DropoutProbability(op, nameof(dropoutP), dropoutP);
        if (!needDx && !needDA && !needDB) return (null, null, null);

        Tensor? dx = null, dA = null, dB = null;
        try
        {
            if (needDx) dx = Tensor.Empty(d.Device, d.DType, d.M, d.In);
            if (needDA) dA = Tensor.Empty(d.Device, d.DType, d.R, d.In);
            if (needDB) dB = Tensor.Empty(d.Device, d.DType, d.Out, d.R);
            d.Device.Backend.QloraBackward(x, w, a, b, u, dy, scale, dropoutP, seed, dx, dA, dB);
            return (dx, dA, dB);
        }
        catch
        {
            Checks.DisposeAll(dx, dA, dB);
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
    private static AdapterDims CheckBase(string op, Tensor x, QuantizedWeight w)
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

    /// <summary>W and x as <see cref="CheckBase"/>, then A [r, in] and B [out, r] in x's dtype; when A and B agree on a dtype that x lacks, x is blamed.</summary>
    private static AdapterDims CheckAdapter(string op, Tensor x, QuantizedWeight w, Tensor a, Tensor b)
    {
        AdapterDims d = CheckBase(op, x, w);
        Checks.Alive(a, op, nameof(a));
        Checks.Alive(b, op, nameof(b));
        if (a.DType == b.DType && a.DType != x.DType)
            throw new ArgumentException($"{op}: x must have the adapter's dtype {a.DType} (a and b have it), got {x.Describe()}", nameof(x));
        long r = AdapterChecks.Rank(op, "LoRA", a, d.In, d.DType, d.Device);
        Checks.Alive(b, op, nameof(b));
        Checks.Shape(op, nameof(b), b, "out, r", [d.Out, r], d.DType, d.Device);
        return d with { R = r };
    }
}
