// ISegmentedKernels on a GPU device (kernels/segmented.cu, with kernels/lora.cu's kernels at r = 0 for a
// dense base): which kernel, grid and argument order. The segment table is uploaded once per call (3 ints
// per segment). docs/KERNELS.md documents each geometry; tests/native/parity/segmented_parity_test.cpp
// launches the same sequence.
using LoraKernels.Backends.Gpu;
using LoraKernels.Families.Lora;
using LoraKernels.Ops;
using LoraKernels.Runtime;

namespace LoraKernels.Families.Segmented;

internal sealed class GpuSegmentedKernels(GpuLaunch gpu) : ISegmentedKernels
{
    private const int MaxGridYz = 65535;
    private readonly GpuLoraKernels _lora = new(gpu);

    /// <summary>
    /// Dense base: one base product for the batch (lora.cu's decode or tiled kernel at r = 0), then u zeroed,
    /// shrink and expand (y += s_a u Bᵀ_a). Table base: u zeroed, shrink, expand with the base fused in.
    /// </summary>
    public void Forward(Tensor x, Tensor? w0, Tensor? w0Table, Tensor? bias, Tensor? aTable, Tensor? bTable, Tensor? scales,
                        SegmentTable segments, Tensor y, Tensor? u)
    {
        var (_, inFeatures, outFeatures, rank) = Dims(x, w0 ?? w0Table!, aTable);
        if (w0 is not null) _lora.BaseForward(x, w0, bias, y);
        if (u is not null) Zero(u);
        if (segments.Segments.Count == 0) return;
        using DeviceBuffer table = gpu.Upload(segments.Triples);
        if (rank > 0)
        {
            using var args = new KernelArguments()
                .Pointer(x).Pointer(aTable).Pointer(table).Pointer(u)
                .Int(inFeatures).Int(rank);
            gpu.Launch(GpuLaunch.KernelFor(x.DType, "lk_segmented_shrink_f32", "lk_segmented_shrink_bf16"), PerSegment(segments, rank),
                       new Dim3(GpuLaunch.TileThreads), 0, args);
        }
        if (rank == 0 && w0Table is null) return;
        using (var args = new KernelArguments()
                   .Pointer(x).Pointer(w0Table).Pointer(w0Table is null ? null : bias).Pointer(u)
                   .Pointer(bTable).Pointer(scales).Pointer(table).Pointer(y)
                   .Int(inFeatures).Int(outFeatures).Int(rank))
            gpu.Launch(GpuLaunch.KernelFor(x.DType, "lk_segmented_expand_f32", "lk_segmented_expand_bf16"), PerSegment(segments, outFeatures),
                       new Dim3(GpuLaunch.TileThreads), 0, args);
    }

    /// <summary>du zeroed and grad_u; grad_b and grad_a (one block per adapter tile, walking the table); dx = dy W0 (lora.cu at r = 0) then grad_x adds du A_a, or grad_x alone with a base table.</summary>
    public void Backward(Tensor x, Tensor? w0, Tensor? w0Table, Tensor? aTable, Tensor? bTable, Tensor? scales, Tensor? u, Tensor dy,
                         SegmentTable segments, Tensor? dx, Tensor? dATable, Tensor? dBTable)
    {
        var (tokens, inFeatures, outFeatures, rank) = Dims(x, w0 ?? w0Table!, aTable);
        int adapters = segments.Adapters, count = segments.Segments.Count;
        DType dtype = dy.DType;
        using DeviceBuffer? table = count > 0 ? gpu.Upload(segments.Triples) : null;
        using Tensor? du = rank > 0 && (dx is not null || dATable is not null) ? Tensor.Empty(dy.Device, DType.F32, tokens, rank) : null;
        if (du is not null)
        {
            Zero(du);
            if (count > 0)
            {
                using var args = new KernelArguments()
                    .Pointer(dy).Pointer(bTable).Pointer(scales).Pointer(table).Pointer(du)
                    .Int(outFeatures).Int(rank);
                gpu.Launch(GpuLaunch.KernelFor(dtype, "lk_segmented_grad_u_f32", "lk_segmented_grad_u_bf16"), PerSegment(segments, rank),
                           new Dim3(GpuLaunch.TileThreads), 0, args);
            }
        }
        if (dBTable is not null && rank > 0 && adapters > 0)
        {
            using var args = new KernelArguments()
                .Pointer(dy).Pointer(u).Pointer(scales).Pointer(table).Int(count).Pointer(dBTable)
                .Int(outFeatures).Int(rank);
            gpu.Launch(GpuLaunch.KernelFor(dtype, "lk_segmented_grad_b_f32", "lk_segmented_grad_b_bf16"), PerAdapter(adapters, outFeatures, rank),
                       new Dim3(GpuLaunch.TileThreads), 0, args);
        }
        if (dATable is not null && rank > 0 && adapters > 0)
        {
            using var args = new KernelArguments()
                .Pointer(du).Pointer(x).Pointer(table).Int(count).Pointer(dATable)
                .Int(inFeatures).Int(rank);
            gpu.Launch(GpuLaunch.KernelFor(dtype, "lk_segmented_grad_a_f32", "lk_segmented_grad_a_bf16"), PerAdapter(adapters, rank, inFeatures),
                       new Dim3(GpuLaunch.TileThreads), 0, args);
        }
        if (dx is null) return;
        if (w0 is not null) _lora.BaseGradX(dy, w0, dx);
        if (count == 0 || (rank == 0 && w0Table is null)) return;
        using (var args = new KernelArguments()
                   .Pointer(dy).Pointer(w0Table).Pointer(du).Pointer(aTable).Pointer(table).Pointer(dx)
                   .Int(inFeatures).Int(outFeatures).Int(rank))
            gpu.Launch(GpuLaunch.KernelFor(dtype, "lk_segmented_grad_x_f32", "lk_segmented_grad_x_bf16"), PerSegment(segments, inFeatures),
                       new Dim3(GpuLaunch.TileThreads), 0, args);
    }

    private static (int Tokens, int In, int Out, int Rank) Dims(Tensor x, Tensor baseWeight, Tensor? aTable)
    {
        var (m, inFeatures, outFeatures, r) = CpuSegmentedKernels.Dims(x, baseWeight, aTable);
        return (checked((int)m), checked((int)inFeatures), checked((int)outFeatures), checked((int)r));
    }

    /// <summary>The per-segment grid: x = segment, y = 64-column tile, z = 64-row tile of the longest segment (blocks past a shorter segment's end leave at once).</summary>
    private static Dim3 PerSegment(SegmentTable segments, int columns) =>
        new((uint)segments.Segments.Count, Tiles(columns), Math.Max(Tiles(segments.LongestSegment), 1));

    /// <summary>The per-adapter grid of the weight gradients: x = adapter, y = 64-row tile, z = 64-column tile.</summary>
    private static Dim3 PerAdapter(int adapters, int rows, int columns) => new((uint)adapters, Tiles(rows), Tiles(columns));

    private static uint Tiles(int extent)
    {
        long tiles = GpuLaunch.CeilDiv(extent, GpuLaunch.Tile);
        if (tiles > MaxGridYz)
            throw new NotSupportedException($"A segmented kernel extent of {extent} rows or columns needs {tiles} tiles; a CUDA grid allows {MaxGridYz}.");
        return (uint)tiles;
    }

    private void Zero(Tensor tensor) => gpu.Device.Memset(tensor.Buffer, 0, tensor.SizeInBytes, 0);
}
