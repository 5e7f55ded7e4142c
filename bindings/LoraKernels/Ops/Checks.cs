// Argument checks shared by the ops: every tensor is validated before anything is allocated or
// launched, and a failure names the argument, what was expected and what it got, e.g.
//   Lora.Forward: a must be [r, in] = [8, 33] with dtype F32 on simt, got F32[8, 32] on simt (Parameter 'a')
namespace LoraKernels.Ops;

internal static class Checks
{
    /// <summary>The largest element count an op accepts: the GPU kernels index with 32-bit integers.</summary>
    public const long MaxElements = int.MaxValue;

    /// <summary>Throws ArgumentNullException / ObjectDisposedException naming <paramref name="name"/>.</summary>
    public static Tensor Alive(Tensor? tensor, string op, string name)
    {
        if (tensor is null) throw new ArgumentNullException(name, $"{op}: {name} is null.");
        tensor.ThrowIfDisposed(name);
        return tensor;
    }

    /// <summary>Checks rank, every dimension, dtype and device; <paramref name="symbols"/> names the dimensions ("r", "in").</summary>
    public static void Shape(string op, string name, Tensor tensor, string symbols, long[] dims, DType dtype, Device device)
    {
        bool matches = tensor.Rank == dims.Length && tensor.DType == dtype && ReferenceEquals(tensor.Device, device);
        for (int i = 0; matches && i < dims.Length; i++) matches = tensor.Shape[i] == dims[i];
        if (!matches)
        {
            string expected = symbols.Length > 0 ? $"[{symbols}] = [{string.Join(", ", dims)}]" : $"[{string.Join(", ", dims)}]";
            throw new ArgumentException($"{op}: {name} must be {expected} with dtype {dtype} on {device}, got {tensor.Describe()}", name);
        }
        Size(op, name, tensor);
    }

    /// <summary>Same shape, dtype and device as <paramref name="like"/> (named <paramref name="likeName"/>).</summary>
    public static void SameAs(string op, string name, Tensor tensor, string likeName, Tensor like)
    {
        bool matches = tensor.DType == like.DType && ReferenceEquals(tensor.Device, like.Device) && tensor.Shape.SequenceEqual(like.Shape);
        if (!matches)
            throw new ArgumentException(
                $"{op}: {name} must be {like.DType}[{string.Join(", ", like.Shape)}] on {like.Device} (like {likeName}), got {tensor.Describe()}", name);
    }

    /// <summary>A rank-2 tensor with both dimensions ≥ 1, in F32 or BF16; returns its dimensions.</summary>
    public static (long Rows, long Columns) Matrix(string op, string name, Tensor tensor, string symbols)
    {
        if (tensor.Rank != 2 || tensor.Shape[0] < 1 || tensor.Shape[1] < 1)
            throw new ArgumentException($"{op}: {name} must be a matrix [{symbols}] with both dimensions >= 1, got {tensor.Describe()}", name);
        Size(op, name, tensor);
        return (tensor.Shape[0], tensor.Shape[1]);
    }

    public static void Fp32(string op, string name, Tensor tensor)
    {
        if (tensor.DType != DType.F32)
            throw new ArgumentException($"{op}: {name} must have dtype F32 (cast it first), got {tensor.Describe()}", name);
    }

    public static void NotEmpty(string op, string name, Tensor tensor)
    {
        if (tensor.ElementCount < 1) throw new ArgumentException($"{op}: {name} must have at least one element, got {tensor.Describe()}", name);
        Size(op, name, tensor);
    }

    public static void Size(string op, string name, Tensor tensor)
    {
        if (tensor.ElementCount > MaxElements)
            throw new ArgumentException(
                $"{op}: {name} has {tensor.ElementCount} elements; kernels index with 32-bit integers, so at most 2^31 - 1 are supported, got {tensor.Describe()}", name);
    }

    public static void Finite(string op, string name, float value)
    {
        if (!float.IsFinite(value)) throw new ArgumentOutOfRangeException(name, value, $"{op}: {name} must be finite.");
    }

    /// <summary>
    /// Throws ArgumentException naming <paramref name="name"/>, the first NaN or ±Inf (flat index and,
    /// for a matrix, row and column) and its value, when the tensor holds one; <paramref name="why"/>
    /// says why the op needs finite values. Scans on the tensor's device (one pass, then one element read).
    /// </summary>
    public static void AllFinite(string op, string name, Tensor tensor, string why)
    {
        long index = tensor.Device.Backend.FirstNonFinite(tensor);
        if (index < 0) return;
        string where = tensor.Rank == 2 ? $"element {index} (row {index / tensor.Shape[1]}, column {index % tensor.Shape[1]})" : $"element {index}";
        throw new ArgumentException(
            $"{op}: {name} must be finite, but {where} of {tensor.Describe()} is {tensor.ElementAt(index)}; {why}", name);
    }

    /// <summary>
    /// The library's policy for frozen weights (docs/API.md, "Non-finite values"): a layer refuses a base
    /// weight or bias holding NaN or ±Inf when it is built, since every output would be non-finite.
    /// </summary>
    public static void FiniteBase(string op, string weightName, Tensor weight, Tensor? bias)
    {
        AllFinite(op, weightName, weight, "a frozen base weight holding NaN or Inf makes every output of the layer non-finite.");
        FiniteBias(op, bias);
    }

    /// <summary>The frozen-bias half of <see cref="FiniteBase"/>, for layers whose weight is checked elsewhere (quantized bases).</summary>
    public static void FiniteBias(string op, Tensor? bias)
    {
        if (bias is not null) AllFinite(op, "bias", bias, "a frozen bias holding NaN or Inf makes that output non-finite.");
    }

    public static void DropoutProbability(string op, string name, float p)
    {
        if (!(p >= 0f && p < 1f)) throw new ArgumentOutOfRangeException(name, p, $"{op}: {name} must be in [0, 1).");
    }

    /// <summary>Disposes freshly allocated outputs when the backend call threw.</summary>
    public static void DisposeAll(params Tensor?[] tensors)
    {
        foreach (Tensor? tensor in tensors) tensor?.Dispose();
    }
}
