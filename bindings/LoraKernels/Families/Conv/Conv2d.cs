// The 2-D convolution op family (NCHW, PyTorch's Conv2d with groups = 1): the forward and both gradients of
// y = conv(x, w) + bias, F32, on every device (kernels/conv.cu as implicit GEMMs, native/cpu/conv.cpp as im2col
// and the packed GEMM). The frozen base of a convolution layer and the kh×kw products of its adapters run here.
// The public ops check every argument and allocate their outputs; the internal ones take a checked ConvShape and
// accumulate (alpha, beta), for the layers that compose them (LoRA's A and B, LoKr's w2 over a regrouped batch,
// the Tucker core between two 1×1 products).
using LoraKernels.Families.Conv;

namespace LoraKernels.Ops;

public static class Conv2d
{
    /// <summary>
    /// y [N, O, HO, WO] = conv(x, w) + bias for x [N, C, H, W], w [O, C, KH, KW], bias [O] or null (all F32, one
    /// device), with <paramref name="geometry"/>'s stride, zero padding and dilation (default: 1, 0, 1).
    /// </summary>
    public static Tensor Forward(Tensor x, Tensor weight, Tensor? bias = null, Conv2dGeometry? geometry = null)
    {
        const string op = "Conv2d.Forward";
        ConvShape s = ShapeOf(op, x, weight, geometry ?? Conv2dGeometry.Pointwise);
        if (bias is not null)
        {
            Checks.Alive(bias, op, nameof(bias));
            Checks.Shape(op, nameof(bias), bias, "O", [s.O], DType.F32, x.Device);
        }
        return Filled(NewTensor(op, "y", x.Device, s.N, s.O, s.HO, s.WO), y => IConvKernels.On(x.Device).Forward(s, x, weight, bias, 1f, 0f, y));
    }

    /// <summary>
    /// The input gradient dx [N, C, <paramref name="height"/>, <paramref name="width"/>] of <see cref="Forward"/> given
    /// dy [N, O, HO, WO] and w [O, C, KH, KW]; HO and WO must be what the geometry gives for that input size.
    /// </summary>
    public static Tensor BackwardData(Tensor dy, Tensor weight, long height, long width, Conv2dGeometry? geometry = null)
    {
        const string op = "Conv2d.BackwardData";
        Checks.Alive(dy, op, nameof(dy));
        Checks.Alive(weight, op, nameof(weight));
        CheckWeight(op, weight, dy.Device);
        if (dy.Rank != 4 || dy.Shape[1] != weight.Shape[0])
            throw new ArgumentException($"{op}: dy must be [N, O, HO, WO] with O = {weight.Shape[0]} (weight's first dimension), got {dy.Describe()}", nameof(dy));
        ConvShape s = ShapeFor(op, dy.Shape[0], weight.Shape[1], height, width, weight, geometry ?? Conv2dGeometry.Pointwise, nameof(height));
        Checks.Shape(op, nameof(dy), dy, "N, O, HO, WO", [s.N, s.O, s.HO, s.WO], DType.F32, weight.Device);
        return Filled(NewTensor(op, "dx", dy.Device, s.N, s.C, s.H, s.W), dx => IConvKernels.On(dy.Device).BackwardData(s, dy, weight, 1f, 0f, dx));
    }

    /// <summary>
    /// The weight gradient dw [O, C, <paramref name="kernelH"/>, <paramref name="kernelW"/>] of <see cref="Forward"/>
    /// given x [N, C, H, W] and dy [N, O, HO, WO], summed over the batch in a fixed order.
    /// </summary>
    public static Tensor BackwardWeight(Tensor x, Tensor dy, long kernelH, long kernelW, Conv2dGeometry? geometry = null)
    {
        const string op = "Conv2d.BackwardWeight";
        Checks.Alive(x, op, nameof(x));
        Checks.Alive(dy, op, nameof(dy));
        CheckImage(op, x);
        if (dy.Rank != 4 || dy.Shape[0] != x.Shape[0] || dy.Shape[1] < 1)
            throw new ArgumentException($"{op}: dy must be [N, O, HO, WO] with N = {x.Shape[0]} (as x) and O >= 1, got {dy.Describe()}", nameof(dy));
        if (kernelH < 1 || kernelW < 1)
            throw new ArgumentOutOfRangeException(nameof(kernelH), $"{op}: the kernel must be at least 1 x 1, got {kernelH} x {kernelW}.");
        Conv2dGeometry g = geometry ?? Conv2dGeometry.Pointwise;
        g.Validate(op, nameof(geometry));
        var (ho, wo) = g.OutputSize(x.Shape[2], x.Shape[3], kernelH, kernelW);
        var s = new ConvShape(x.Shape[0], x.Shape[1], x.Shape[2], x.Shape[3], dy.Shape[1], kernelH, kernelW, ho, wo, g);
        CheckOutputExtent(op, s, nameof(kernelH));
        Checks.Shape(op, nameof(dy), dy, "N, O, HO, WO", [s.N, s.O, s.HO, s.WO], DType.F32, x.Device);
        return Filled(NewTensor(op, "dw", x.Device, s.O, s.C, s.KH, s.KW), dw => IConvKernels.On(x.Device).BackwardWeight(s, x, dy, 1f, 0f, dw));
    }

    /// <summary>The checked shape of conv(x, w) under <paramref name="geometry"/> (x [N, C, H, W], w [O, C, KH, KW], F32, one device).</summary>
    internal static ConvShape ShapeOf(string op, Tensor x, Tensor weight, Conv2dGeometry geometry)
    {
        Checks.Alive(x, op, nameof(x));
        Checks.Alive(weight, op, nameof(weight));
        CheckImage(op, x);
        CheckWeight(op, weight, x.Device);
        if (weight.Shape[1] != x.Shape[1])
            throw new ArgumentException($"{op}: x has C = {x.Shape[1]} channels but the weight is {weight.Describe()} ([O, C, KH, KW] needs C = {x.Shape[1]})", nameof(x));
        return ShapeFor(op, x.Shape[0], x.Shape[1], x.Shape[2], x.Shape[3], weight, geometry, nameof(x));
    }

    /// <summary>y (=)+= alpha·conv(x, w) + bias, for a shape already checked; the tensors need only hold its element counts.</summary>
    internal static void ForwardInto(in ConvShape s, Tensor x, Tensor weight, Tensor? bias, float alpha, float beta, Tensor y)
    {
        Holds(x, s.N * s.C * s.H * s.W);
        Holds(weight, s.O * s.C * s.KH * s.KW);
        Holds(y, s.N * s.O * s.HO * s.WO);
        if (bias is not null) Holds(bias, s.O);
        IConvKernels.On(y.Device).Forward(s, x, weight, bias, alpha, beta, y);
    }

    /// <summary>dx (=)+= alpha·convᵀ(dy, w), for a shape already checked.</summary>
    internal static void BackwardDataInto(in ConvShape s, Tensor dy, Tensor weight, float alpha, float beta, Tensor dx)
    {
        Holds(dy, s.N * s.O * s.HO * s.WO);
        Holds(weight, s.O * s.C * s.KH * s.KW);
        Holds(dx, s.N * s.C * s.H * s.W);
        IConvKernels.On(dx.Device).BackwardData(s, dy, weight, alpha, beta, dx);
    }

    /// <summary>dw (=)+= alpha·Σ dy ⊗ patches(x), for a shape already checked.</summary>
    internal static void BackwardWeightInto(in ConvShape s, Tensor x, Tensor dy, float alpha, float beta, Tensor dw)
    {
        Holds(x, s.N * s.C * s.H * s.W);
        Holds(dy, s.N * s.O * s.HO * s.WO);
        Holds(dw, s.O * s.C * s.KH * s.KW);
        IConvKernels.On(dw.Device).BackwardWeight(s, x, dy, alpha, beta, dw);
    }

    private static ConvShape ShapeFor(string op, long n, long c, long h, long w, Tensor weight, Conv2dGeometry geometry, string inputName)
    {
        ArgumentNullException.ThrowIfNull(geometry);
        geometry.Validate(op, nameof(geometry));
        if (n < 1 || h < 1 || w < 1)
            throw new ArgumentOutOfRangeException(inputName, $"{op}: the input must have N, H, W >= 1, got N = {n}, H = {h}, W = {w}.");
        var (ho, wo) = geometry.OutputSize(h, w, weight.Shape[2], weight.Shape[3]);
        var s = new ConvShape(n, c, h, w, weight.Shape[0], weight.Shape[2], weight.Shape[3], ho, wo, geometry);
        CheckOutputExtent(op, s, inputName);
        return s;
    }

    private static void CheckOutputExtent(string op, in ConvShape s, string name)
    {
        if (s.HO < 1 || s.WO < 1)
            throw new ArgumentException(
                $"{op}: a {s.KH} x {s.KW} window with {s.Geometry} does not fit the {s.H} x {s.W} input (output {s.HO} x {s.WO}); pad the input or shrink the kernel.", name);
        AdapterChecks.OutputSize(op, "y", s.N * s.O, s.HO * s.WO);
        AdapterChecks.OutputSize(op, "the input", s.N * s.C, s.H * s.W);
    }

    private static void CheckImage(string op, Tensor x)
    {
        if (x.Rank != 4 || x.ElementCount < 1 || x.DType != DType.F32)
            throw new ArgumentException($"{op}: x must be an F32 image batch [N, C, H, W] with every dimension >= 1, got {x.Describe()}", nameof(x));
        Checks.Size(op, nameof(x), x);
    }

    private static void CheckWeight(string op, Tensor weight, Device device)
    {
        if (weight.Rank != 4 || weight.ElementCount < 1 || weight.DType != DType.F32 || !ReferenceEquals(weight.Device, device))
            throw new ArgumentException($"{op}: weight must be F32 [O, C, KH, KW] with every dimension >= 1 on {device}, got {weight.Describe()}", nameof(weight));
        Checks.Size(op, nameof(weight), weight);
    }

    private static Tensor NewTensor(string op, string name, Device device, params long[] shape)
    {
        long count = shape.Aggregate(1L, (a, b) => a * b);
        if (count > Checks.MaxElements)
            throw new ArgumentException($"{op}: the output {name} would be [{string.Join(", ", shape)}], over 2^31 - 1 elements.", name);
        return Tensor.Empty(device, DType.F32, shape);
    }

    /// <summary>Runs <paramref name="fill"/> on a fresh output and returns it, freeing it when the call throws.</summary>
    private static Tensor Filled(Tensor output, Action<Tensor> fill)
    {
        try
        {
            fill(output);
            return output;
        }
        catch
        {
            output.Dispose();
            throw;
        }
    }

    private static void Holds(Tensor t, long elements)
    {
        if (t.ElementCount != elements || t.DType != DType.F32)
            throw new InvalidOperationException($"Conv2d: {t.Describe()} does not hold the {elements} F32 elements its convolution shape needs.");
    }
}
