// How a 2-D convolution's window moves over its input: stride, zero padding and dilation per axis, as
// PyTorch's Conv2d (groups = 1). The output extent of an input extent H under a kernel extent KH is
// (H + 2·padding − dilation·(KH − 1) − 1) / stride + 1, which must be at least 1.
namespace LoraKernels.Ops;

public sealed record Conv2dGeometry(int StrideH = 1, int StrideW = 1, int PaddingH = 0, int PaddingW = 0, int DilationH = 1,
                                    int DilationW = 1)
{
    /// <summary>The same stride, padding and dilation on both axes.</summary>
    public static Conv2dGeometry Square(int stride = 1, int padding = 0, int dilation = 1) =>
        new(stride, stride, padding, padding, dilation, dilation);

    /// <summary>Stride 1, no padding, no dilation: a 1×1 kernel under it is a pointwise (per-pixel) product.</summary>
    public static Conv2dGeometry Pointwise { get; } = new();

    /// <summary>The output height and width for an input of <paramref name="height"/> × <paramref name="width"/> and a kernel of kh × kw (0 where the window does not fit).</summary>
    public (long Height, long Width) OutputSize(long height, long width, long kernelH, long kernelW) =>
        (Extent(height, kernelH, StrideH, PaddingH, DilationH), Extent(width, kernelW, StrideW, PaddingW, DilationW));

    /// <summary>Throws ArgumentOutOfRangeException naming the first field out of range (stride, dilation ≥ 1; padding ≥ 0).</summary>
    internal void Validate(string op, string name)
    {
        if (StrideH < 1 || StrideW < 1) throw new ArgumentOutOfRangeException(name, this, $"{op}: {name} has stride ({StrideH}, {StrideW}); strides must be >= 1.");
        if (PaddingH < 0 || PaddingW < 0) throw new ArgumentOutOfRangeException(name, this, $"{op}: {name} has padding ({PaddingH}, {PaddingW}); padding must be >= 0.");
        if (DilationH < 1 || DilationW < 1) throw new ArgumentOutOfRangeException(name, this, $"{op}: {name} has dilation ({DilationH}, {DilationW}); dilations must be >= 1.");
    }

    private static long Extent(long input, long kernel, int stride, int padding, int dilation)
    {
        long span = (long)dilation * (kernel - 1) + 1, padded = input + 2L * padding;
        return padded < span ? 0 : (padded - span) / stride + 1;
    }
}
