namespace LoraKernels.Ops;

/// <summary>The dimensions every adapter op validates once and then works with.</summary>
internal readonly record struct AdapterDims(long M, long In, long Out, long R, DType DType, Device Device);

/// <summary>
/// Argument checks that the adapter ops (Lora, Nf4, Dora, Vera) share: the dense base and its
/// rank-r pair, the optional bias, and the 32-bit size of outputs. Messages name the op, the
/// argument, its dtype, shape and device, and what was expected (docs/API.md).
/// </summary>
internal static class AdapterChecks
{
    /// <summary>x [M, in], W0 [out, in], A [r, in] with r ≥ 1, B [out, r]; one dtype and device.</summary>
    public static AdapterDims DenseAdapter(string op, string variant, Tensor x, Tensor w0, Tensor a, Tensor b)
    {
        Checks.Alive(x, op, nameof(x));
        (long m, long inFeatures) = Checks.Matrix(op, nameof(x), x, "M, in");
        DType dtype = x.DType;
        Device device = x.Device;

        Checks.Alive(w0, op, nameof(w0));
        if (w0.Rank != 2 || w0.Shape[0] < 1 || w0.Shape[1] != inFeatures || w0.DType != dtype || !ReferenceEquals(w0.Device, device))
            throw new ArgumentException(
                $"{op}: w0 must be [out, in] = [{LeadingDimension(w0, "out")}, {inFeatures}] with dtype {dtype} on {device} and out >= 1, got {w0.Describe()}", nameof(w0));
        Checks.Size(op, nameof(w0), w0);
        long outFeatures = w0.Shape[0];

        long r = Rank(op, variant, a, inFeatures, dtype, device);
        Checks.Alive(b, op, nameof(b));
        Checks.Shape(op, nameof(b), b, "out, r", [outFeatures, r], dtype, device);
        return new AdapterDims(m, inFeatures, outFeatures, r, dtype, device);
    }

    /// <summary>A must be [r, in] with r ≥ 1; r = 0 is an ArgumentOutOfRangeException naming a.</summary>
    public static long Rank(string op, string variant, Tensor a, long inFeatures, DType dtype, Device device)
    {
        Checks.Alive(a, op, nameof(a));
        if (a.Rank != 2 || a.Shape[1] != inFeatures || a.DType != dtype || !ReferenceEquals(a.Device, device))
            throw new ArgumentException(
                $"{op}: a must be [r, in] = [{LeadingDimension(a, "r")}, {inFeatures}] with dtype {dtype} on {device}, got {a.Describe()}", nameof(a));
        if (a.Shape[0] == 0)
            throw new ArgumentOutOfRangeException(nameof(a), $"{op}: a is {a.Describe()}, so r = 0; {variant} needs rank r >= 1.");
        Checks.Size(op, nameof(a), a);
        return a.Shape[0];
    }

    /// <summary>bias, when given, is [out] with the activations' dtype and device.</summary>
    public static void Bias(string op, Tensor? bias, AdapterDims d)
    {
        if (bias is null) return;
        Checks.Alive(bias, op, nameof(bias));
        Checks.Shape(op, nameof(bias), bias, "out", [d.Out], d.DType, d.Device);
    }

    /// <summary>An output of [rows, columns] must stay within the kernels' 32-bit indexing.</summary>
    public static void OutputSize(string op, string name, long rows, long columns)
    {
        if (rows * columns > Checks.MaxElements)
            throw new ArgumentException($"{op}: the output {name} would be [{rows}, {columns}], over 2^31 - 1 elements.", name);
    }

    /// <summary>The tensor's first dimension when it is a matrix, else the dimension's symbol (for messages).</summary>
    public static string LeadingDimension(Tensor tensor, string symbol) =>
        tensor.Rank == 2 ? tensor.Shape[0].ToString(System.Globalization.CultureInfo.InvariantCulture) : symbol;
}
