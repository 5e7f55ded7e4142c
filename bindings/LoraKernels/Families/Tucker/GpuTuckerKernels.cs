// Launch code for kernels/tucker.cu's batched product: grid x over 64-column tiles of C, y over 64-row tiles,
// z over the batch (capped at the grid's 65535; the kernel strides over the rest), one z-slice when the batch is
// reduced (its blocks sum every b in order). tests/native/parity/tucker_parity_test.cpp launches it the same way.
using LoraKernels.Backends.Gpu;
using LoraKernels.Runtime;

namespace LoraKernels.Families.Tucker;

internal sealed class GpuTuckerKernels(GpuLaunch gpu) : ITuckerKernels
{
    private const int MaxGridYz = 65535;

    public void BatchedMatmul(in BatchedProduct p, Tensor a, Tensor b, float alpha, float beta, Tensor c)
    {
        long rowTiles = GpuLaunch.CeilDiv(p.M, GpuLaunch.Tile), columnTiles = GpuLaunch.CeilDiv(p.N, GpuLaunch.Tile);
        if (rowTiles > MaxGridYz)
            throw new NotSupportedException($"A batched product with {p.M} rows needs {rowTiles} row tiles; a CUDA grid allows {MaxGridYz}.");
        uint slices = p.Reduce ? 1u : (uint)Math.Min(p.Batch, MaxGridYz);
        using var args = new KernelArguments()
            .Int(checked((int)p.Batch)).Int(checked((int)p.M)).Int(checked((int)p.N)).Int(checked((int)p.K))
            .Int(p.TransA ? 1 : 0).Pointer(a).Long(p.StrideA)
            .Int(p.TransB ? 1 : 0).Pointer(b).Long(p.StrideB)
            .Float(alpha).Float(beta).Pointer(c).Long(p.StrideC).Int(p.Reduce ? 1 : 0);
        gpu.Launch(GpuLaunch.KernelFor(c.DType, "lk_tucker_batched_matmul_f32", "lk_tucker_batched_matmul_bf16"),
                   new Dim3(checked((uint)columnTiles), (uint)rowTiles, slices), new Dim3(GpuLaunch.TileThreads), 0, args);
    }
}
