// Launch code for kernels/conv.cu (implicit GEMMs on the tile engine): output pixels on grid x (64 per block),
// channels on grid y; the weight gradient's pixels cut into chunks of PixelsPerChunk on grid z, written as fp32
// partials that lk_conv2d_sum_chunks adds in order. tests/native/parity/conv_parity_test.cpp launches the same way.
using LoraKernels.Backends.Gpu;
using LoraKernels.Runtime;

namespace LoraKernels.Families.Conv;

internal sealed class GpuConvKernels(GpuLaunch gpu) : IConvKernels
{
    // kernels/conv.cu: kConvPixelsPerChunk, the reduction length of one weight-gradient block.
    internal const int PixelsPerChunk = 4096;
    private const int MaxGridYz = 65535;

    public void Forward(in ConvShape s, Tensor x, Tensor w, Tensor? bias, float alpha, float beta, Tensor y)
    {
        using var args = new KernelArguments().Pointer(x).Pointer(w).Pointer(bias).Pointer(y);
        gpu.Launch("lk_conv2d_forward_f32", Grid(s.N * s.HO * s.WO, s.O, 1), new Dim3(GpuLaunch.TileThreads), 0,
                   Shape(args, s).Float(alpha).Float(beta));
    }

    public void BackwardData(in ConvShape s, Tensor dy, Tensor w, float alpha, float beta, Tensor dx)
    {
        using var args = new KernelArguments().Pointer(dy).Pointer(w).Pointer(dx);
        gpu.Launch("lk_conv2d_grad_x_f32", Grid(s.N * s.H * s.W, s.C, 1), new Dim3(GpuLaunch.TileThreads), 0,
                   Shape(args, s).Float(alpha).Float(beta));
    }

    public void BackwardWeight(in ConvShape s, Tensor x, Tensor dy, float alpha, float beta, Tensor dw)
    {
        long pixels = s.N * s.HO * s.WO, taps = s.C * s.KH * s.KW;
        long chunks = GpuLaunch.CeilDiv(pixels, PixelsPerChunk);
        if (chunks > MaxGridYz)
            throw new NotSupportedException($"A weight gradient over {pixels} output pixels needs {chunks} chunks of {PixelsPerChunk}; a CUDA grid allows {MaxGridYz}.");
        using Tensor partial = Tensor.Empty(dw.Device, DType.F32, chunks, s.O * taps);
        using (var args = new KernelArguments().Pointer(x).Pointer(dy).Pointer(partial))
            gpu.Launch("lk_conv2d_grad_w_f32", Grid(taps, s.O, chunks), new Dim3(GpuLaunch.TileThreads), 0, Shape(args, s));
        using var sum = new KernelArguments().Pointer(partial).Pointer(dw).Int((int)chunks).Long(dw.ElementCount).Float(alpha).Float(beta);
        gpu.LaunchElementwise("lk_conv2d_sum_chunks_f32", dw.ElementCount, sum);
    }

    /// <summary>x over 64-column tiles (pixels or taps), y over 64-row tiles (channels), z as given.</summary>
    private static Dim3 Grid(long columns, long rows, long z)
    {
        long rowTiles = GpuLaunch.CeilDiv(rows, GpuLaunch.Tile);
        if (rowTiles > MaxGridYz)
            throw new NotSupportedException($"A convolution with {rows} channels needs {rowTiles} channel tiles; a CUDA grid allows {MaxGridYz}.");
        return new Dim3(checked((uint)GpuLaunch.CeilDiv(columns, GpuLaunch.Tile)), (uint)rowTiles, (uint)z);
    }

    /// <summary>The 15 shape ints every conv.cu entry point takes after its pointers.</summary>
    private static KernelArguments Shape(KernelArguments args, in ConvShape s) => args
        .Int((int)s.N).Int((int)s.C).Int((int)s.H).Int((int)s.W).Int((int)s.O).Int((int)s.KH).Int((int)s.KW)
        .Int(s.Geometry.StrideH).Int(s.Geometry.StrideW).Int(s.Geometry.PaddingH).Int(s.Geometry.PaddingW)
        .Int(s.Geometry.DilationH).Int(s.Geometry.DilationW).Int((int)s.HO).Int((int)s.WO);
}
