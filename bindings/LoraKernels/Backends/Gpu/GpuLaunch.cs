// What every GPU launcher shares, for CUDA and the SIMT emulator alike: the kernel device, the
// shared engines' launch geometry (kernels/launch_geometry.cuh: tile grids, the decode kernels'
// grid and shared memory, element-wise grids), the dtype suffix of entry-point names, and the
// per-block reductions whose partials are summed on the host in block order. The shared backend
// (GpuBackend) and each family's GPU kernels (Families/*/Gpu*Kernels.cs) launch through one.
// KernelConstantsTests compares these constants with the kernel sources.
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using LoraKernels.Runtime;

namespace LoraKernels.Backends.Gpu;

internal sealed class GpuLaunch(IKernelDevice device)
{
    // Tile engine (kTileM = kTileN, kTileThreads): one block per 64 x 64 output tile, grid.X over
    // output rows, grid.Y over output columns, no dynamic shared memory.
    internal const int Tile = 64;
    internal const uint TileThreads = 256;
    private const int MaxGridY = 65535;

    // Tensor-core engine (kMmaTileM = kMmaTileN, kMmaThreads, kMmaSharedBytes): one block per 128 x 128
    // output tile, the cp.async ring as dynamic shared memory; bf16 on sm_80 and newer.
    internal const int MmaTile = 128;
    internal const uint MmaThreads = 256;
    internal const uint MmaSharedBytes = 3 * 2 * 128 * 32 * 2;

    // Decode engine (kDecodeThreads, kDecodeMaxM, kDecodeChunk, kDecodeXAlign, and
    // kDecodeWarps · kDecodeRowsPerWarp rows streamed per block pass).
    internal const uint DecodeThreads = 256;
    internal const int DecodeMaxTokens = 16;
    internal const int DecodeChunk = 2048;
    internal const int DecodeXAlign = 8;
    internal const int DecodeRowsPerPass = 16;

    // Element-wise geometry (kElementwiseThreads, kElementwiseBlocksPerSm).
    internal const uint ElementwiseThreads = 256;
    internal const int ElementwiseBlocksPerMultiprocessor = 8;

    public IKernelDevice Device { get; } = device;

    public void Launch(string kernel, Dim3 grid, Dim3 block, uint dynamicSharedBytes, KernelArguments arguments) =>
        Device.Launch(kernel, grid, block, dynamicSharedBytes, arguments);

    /// <summary>Launches a tile-engine kernel over a [rows, columns] output.</summary>
    public void LaunchTiled(string kernel, int rows, int columns, KernelArguments arguments) =>
        Device.Launch(kernel, TileGrid(rows, columns), new Dim3(TileThreads), 0, arguments);

    /// <summary>
    /// Launches a product over a [rows, columns] output on the engine that suits its dtype: for BF16 where
    /// the device runs tensor cores, <paramref name="bf16Mma"/> on the tensor-core engine; otherwise the
    /// tile engine's kernel for the dtype.
    /// </summary>
    public void LaunchProduct(DType dtype, string f32Tiled, string bf16Tiled, string bf16Mma, int rows, int columns,
                              KernelArguments arguments)
    {
        if (dtype == DType.BF16 && Device.TensorCores)
            Device.Launch(bf16Mma, MmaTileGrid(rows, columns), new Dim3(MmaThreads), MmaSharedBytes, arguments);
        else
            LaunchTiled(KernelFor(dtype, f32Tiled, bf16Tiled), rows, columns, arguments);
    }

    /// <summary>Launches a grid-stride kernel over <paramref name="n"/> elements.</summary>
    public void LaunchElementwise(string kernel, long n, KernelArguments arguments) =>
        Device.Launch(kernel, new Dim3(ElementwiseGrid(n, Device.MultiprocessorCount)), new Dim3(ElementwiseThreads), 0, arguments);

    /// <summary>
    /// Runs a grid-stride reduction over n elements whose blocks each write one partial of type
    /// <typeparamref name="T"/> into a temporary, and returns the partials in block order.
    /// <paramref name="arguments"/> packs the kernel's parameters around the partials buffer.
    /// </summary>
    public T[] BlockPartials<T>(string kernel, long n, Action<KernelArguments, DeviceBuffer> arguments) where T : unmanaged =>
        Partials<T>(kernel, ElementwiseGrid(n, Device.MultiprocessorCount), arguments);

    /// <summary>As <see cref="BlockPartials"/> for a kernel whose blocks take whole rows in turn (<see cref="RowGrid"/>).</summary>
    public T[] RowPartials<T>(string kernel, long rows, Action<KernelArguments, DeviceBuffer> arguments) where T : unmanaged =>
        Partials<T>(kernel, RowGrid(rows, Device.MultiprocessorCount), arguments);

    private T[] Partials<T>(string kernel, uint blocks, Action<KernelArguments, DeviceBuffer> arguments) where T : unmanaged
    {
        var partials = new T[blocks];
        using DeviceBuffer buffer = Device.Allocate((long)blocks * Unsafe.SizeOf<T>());
        using (var args = new KernelArguments())
        {
            arguments(args, buffer);
            Device.Launch(kernel, new Dim3(blocks), new Dim3(ElementwiseThreads), 0, args);
        }
        Device.Download(buffer, 0, MemoryMarshal.AsBytes(partials.AsSpan()));
        return partials;
    }

    /// <summary>A device copy of <paramref name="values"/> (index tables: segments, routing), owned by the caller.</summary>
    public DeviceBuffer Upload(ReadOnlySpan<int> values)
    {
        DeviceBuffer buffer = Device.Allocate(Math.Max(values.Length, 1) * sizeof(int));
        try
        {
            Device.Upload(buffer, 0, MemoryMarshal.AsBytes(values));
            return buffer;
        }
        catch
        {
            buffer.Dispose();
            throw;
        }
    }

    /// <summary>The decode kernel's grid and dynamic shared bytes on this device (see <see cref="DecodeGeometry(int, int, int, int, int, int)"/>).</summary>
    public (uint Blocks, uint SharedBytes)? DecodeGeometry(int tokens, int inFeatures, int outFeatures, int rank, int tableWords = 0)
    {
        int tableBytes = 4 * tableWords;
        var geometry = DecodeGeometry(tokens, inFeatures, outFeatures, rank, Device.MultiprocessorCount,
                                      Device.MaxDynamicSharedBytesPerBlock - tableBytes);
        return geometry is { } g ? (g.Blocks, g.SharedBytes + (uint)tableBytes) : null;
    }

    /// <summary>
    /// The decode kernel's grid and dynamic shared bytes, or null when the tiled path must run
    /// (more than 16 tokens, or staging x does not fit the device's shared memory). Blocks:
    /// one per multiprocessor (u is recomputed per block, so fewer is cheaper), no more than
    /// one per 16 weight rows, and more when the per-block output partial sums would not fit.
    /// Shared words (4 bytes each), as lk_decode_layout carves them after a family's table words:
    /// M·xStride (x) + M·⌈xStride/32⌉ (dropout bits) + M·r (u) + M·⌈out/blocks⌉ (partial y),
    /// with xStride = min(in, 2048) rounded up to a multiple of 8.
    /// </summary>
    internal static (uint Blocks, uint SharedBytes)? DecodeGeometry(int tokens, int inFeatures, int outFeatures, int rank,
                                                                   int multiprocessors, int maxDynamicSharedBytes)
    {
        if (tokens < 1 || tokens > DecodeMaxTokens || outFeatures < 1) return null;
        long xStride = CeilDiv(Math.Min(inFeatures, DecodeChunk), DecodeXAlign) * (long)DecodeXAlign;
        long fixedWords = tokens * (xStride + CeilDiv(xStride, 32) + rank);
        long availableWords = maxDynamicSharedBytes / 4 - fixedWords;
        if (availableWords < tokens) return null;  // not even one output row's partial sums fit
        long maxRowsPerBlock = availableWords / tokens;
        long blocks = Math.Min(Math.Max(multiprocessors, 1), CeilDiv(outFeatures, DecodeRowsPerPass));
        blocks = Math.Max(blocks, CeilDiv(outFeatures, maxRowsPerBlock));
        long rowsPerBlock = CeilDiv(outFeatures, blocks);
        return ((uint)blocks, (uint)(4 * (fixedWords + tokens * rowsPerBlock)));
    }

    /// <summary>Tile-engine grid for a [rows, columns] output: X over 64-row tiles, Y over 64-column tiles.</summary>
    internal static Dim3 TileGrid(int rows, int columns) => Grid(rows, columns, Tile, "A tiled kernel");

    /// <summary>Tensor-core engine grid for a [rows, columns] output: X over 128-row tiles, Y over 128-column tiles.</summary>
    internal static Dim3 MmaTileGrid(int rows, int columns) => Grid(rows, columns, MmaTile, "A tensor-core kernel");

    private static Dim3 Grid(int rows, int columns, int tile, string engine)
    {
        long columnTiles = CeilDiv(columns, tile);
        if (columnTiles > MaxGridY)
            throw new NotSupportedException($"{engine} output with {columns} columns needs {columnTiles} column tiles; a CUDA grid allows {MaxGridY}.");
        return new Dim3((uint)CeilDiv(rows, tile), (uint)columnTiles);
    }

    /// <summary>Grid for a grid-stride kernel over n elements: its blocks, capped at a few per multiprocessor.</summary>
    /// <summary>One block per row at a time, capped like the element-wise grid (the kernel loops over the rest).</summary>
    internal static uint RowGrid(long rows, int multiprocessors) =>
        (uint)Math.Max(1, Math.Min(rows, (long)Math.Max(multiprocessors, 1) * ElementwiseBlocksPerMultiprocessor));

    internal static uint ElementwiseGrid(long n, int multiprocessors)
    {
        long blocks = Math.Min((n + ElementwiseThreads - 1) / ElementwiseThreads,
                               (long)Math.Max(multiprocessors, 1) * ElementwiseBlocksPerMultiprocessor);
        return (uint)Math.Max(blocks, 1);
    }

    /// <summary>
    /// The entry point for the tensors' storage dtype. Both names are written out in full at each
    /// launch so every kernel a backend launches can be found by its name.
    /// </summary>
    internal static string KernelFor(DType dtype, string f32Kernel, string bf16Kernel) => dtype switch
    {
        DType.F32 => f32Kernel,
        DType.BF16 => bf16Kernel,
        _ => throw new NotSupportedException($"The GPU kernels have no variant for dtype {dtype}."),
    };

    internal static long CeilDiv(long a, long b) => (a + b - 1) / b;
}
