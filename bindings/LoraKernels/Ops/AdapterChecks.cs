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
    /// <summary>
    /// W0 [out, in], then x [M, in], A [r, in] with r ≥ 1, B [out, r]; one dtype and device. The frozen
    /// base defines the layer (in, out, dtype, device), so a mismatched activation is blamed on x,
    /// unless x and A agree with each other against W0, which makes W0 the odd one out.
    /// </summary>
    public static AdapterDims DenseAdapter(string op, string variant, Tensor x, Tensor w0, Tensor a, Tensor b)
    {
        Checks.Alive(w0, op, nameof(w0));
        Checks.Alive(x, op, nameof(x));
        Checks.Alive(a, op, nameof(a));
        if (x.Rank == 2 && !FitsBase(x, w0) && a.Rank == 2 && a.Shape[1] == x.Shape[1] && a.DType == x.DType && ReferenceEquals(a.Device, x.Device))
            throw new ArgumentException(
                $"{op}: w0 must be [out, in] = [out, {x.Shape[1]}] with dtype {x.DType} on {x.Device} (as x and a have them), got {w0.Describe()}", nameof(w0));
        (long outFeatures, long inFeatures) = Checks.Matrix(op, nameof(w0), w0, "out, in");
        DType dtype = w0.DType;
        Device device = w0.Device;
        long m = Activations(op, x, inFeatures, dtype, device, "w0");

        long r = Rank(op, variant, a, inFeatures, dtype, device);
        Checks.Alive(b, op, nameof(b));
        Checks.Shape(op, nameof(b), b, "out, r", [outFeatures, r], dtype, device);
        return new AdapterDims(m, inFeatures, outFeatures, r, dtype, device);
    }

    /// <summary>
    /// x must be [M, in] with M ≥ 1 and the dtype and device of the base (named <paramref name="baseName"/>
    /// in the message, as what fixed them); returns M.
    /// </summary>
    public static long Activations(string op, Tensor x, long inFeatures, DType dtype, Device device, string baseName)
    {
        Checks.Alive(x, op, nameof(x));
        if (x.Rank != 2 || x.Shape[0] < 1 || x.Shape[1] != inFeatures || x.DType != dtype || !ReferenceEquals(x.Device, device))
            throw new ArgumentException(
                $"{op}: x must be [M, in] = [M, {inFeatures}] with M >= 1, dtype {dtype} on {device} (as {baseName} sets them), got {x.Describe()}", nameof(x));
        Checks.Size(op, nameof(x), x);
        return x.Shape[0];
    }

    private static bool FitsBase(Tensor x, Tensor w0) =>
        w0.Rank == 2 && x.Shape[1] == w0.Shape[1] && x.DType == w0.DType && ReferenceEquals(x.Device, w0.Device);

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
