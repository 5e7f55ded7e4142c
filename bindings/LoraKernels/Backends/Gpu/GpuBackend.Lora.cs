// Launch code for kernels/lora.cu: which kernel, grid, block, dynamic shared memory and
// argument order for the LoRA forward, backward and merge. The constants mirror the kernel
// file's constexprs; docs/KERNELS.md documents each geometry, and tests/native/parity launches
// the kernels with the same formulas.
using LoraKernels.Runtime;

namespace LoraKernels.Backends.Gpu;

internal sealed partial class GpuBackend
{
    // Tile engine (kTileM = kTileN = 64, kTileThreads = 256): one block per 64 x 64 output tile,
    // grid.X over output rows, grid.Y over output columns, no dynamic shared memory.
    internal const int LoraTile = 64;
    internal const uint LoraTileThreads = 256;
    private const int MaxGridY = 65535;

    // Decode kernel (kDecodeThreads, kDecodeMaxM, kDecodeChunk, kDecodeXAlign and
    // kDecodeWarps * kDecodeRowsPerWarp W0 rows streamed per block pass).
    internal const uint LoraDecodeThreads = 256;
    internal const int LoraDecodeMaxTokens = 16;
    internal const int LoraDecodeChunk = 2048;
    internal const int LoraDecodeXAlign = 8;
    internal const int LoraDecodeRowsPerPass = 16;

    public void LoraForward(Tensor x, Tensor w0, Tensor? bias, Tensor a, Tensor b, float scale,
                            float dropoutP, ulong seed, Tensor y, Tensor u)
    {
        var (tokens, inFeatures, outFeatures, rank) = LoraDims(x, w0, a);
        DType kernelDType = x.DType;
        var decode = LoraDecodeGeometry(tokens, inFeatures, outFeatures, rank, _device.MultiprocessorCount,
                                        _device.MaxDynamicSharedBytesPerBlock);
        if (decode is { } geometry)
        {
            using var args = new KernelArguments()
                .Pointer(x).Pointer(w0).Pointer(bias).Pointer(a)
                .Pointer(b).Pointer(y).Pointer(u)
                .Int(tokens).Int(inFeatures).Int(outFeatures).Int(rank)
                .Float(scale).Float(dropoutP).ULong(seed);
            _device.Launch(KernelFor(kernelDType, "lk_lora_forward_decode_f32", "lk_lora_forward_decode_bf16"), new Dim3(geometry.Blocks), new Dim3(LoraDecodeThreads),
                           geometry.SharedBytes, args);
            return;
        }

        if (rank > 0)
        {
            using var projectArgs = new KernelArguments()
                .Pointer(x).Pointer(a).Pointer(u)
                .Int(tokens).Int(inFeatures).Int(rank).Float(dropoutP).ULong(seed);
            _device.Launch(KernelFor(kernelDType, "lk_lora_project_f32", "lk_lora_project_bf16"), LoraTileGrid(tokens, rank), new Dim3(LoraTileThreads), 0,
                           projectArgs);
        }
        using var tiledArgs = new KernelArguments()
            .Pointer(x).Pointer(w0).Pointer(bias).Pointer(u)
            .Pointer(b).Pointer(y)
            .Int(tokens).Int(inFeatures).Int(outFeatures).Int(rank).Float(scale);
        _device.Launch(KernelFor(kernelDType, "lk_lora_forward_tiled_f32", "lk_lora_forward_tiled_bf16"), LoraTileGrid(tokens, outFeatures),
                       new Dim3(LoraTileThreads), 0, tiledArgs);
    }

    public void LoraBackward(Tensor x, Tensor w0, Tensor a, Tensor b, Tensor u, Tensor dy, float scale,
                             float dropoutP, ulong seed, Tensor? dx, Tensor? dA, Tensor? dB)
    {
        var (tokens, inFeatures, outFeatures, rank) = LoraDims(x, w0, a);
        DType kernelDType = x.DType;

        // du = scale·dy·B feeds dA and dx; it lives only for this call.
        using Tensor? du = rank > 0 && (dA is not null || dx is not null)
            ? Tensor.Empty(x.Device, DType.F32, tokens, rank)
            : null;
        if (du is not null)
        {
            using var args = new KernelArguments()
                .Pointer(dy).Pointer(b).Pointer(du)
                .Int(tokens).Int(outFeatures).Int(rank).Float(scale);
            _device.Launch(KernelFor(kernelDType, "lk_lora_grad_u_f32", "lk_lora_grad_u_bf16"), LoraTileGrid(tokens, rank), new Dim3(LoraTileThreads), 0, args);
        }
        if (dB is not null && rank > 0)
        {
            using var args = new KernelArguments()
                .Pointer(dy).Pointer(u).Pointer(dB)
                .Int(tokens).Int(outFeatures).Int(rank).Float(scale);
            _device.Launch(KernelFor(kernelDType, "lk_lora_grad_b_f32", "lk_lora_grad_b_bf16"), LoraTileGrid(outFeatures, rank), new Dim3(LoraTileThreads), 0,
                           args);
        }
        if (dA is not null && du is not null)
        {
            using var args = new KernelArguments()
                .Pointer(du).Pointer(x).Pointer(dA)
                .Int(tokens).Int(inFeatures).Int(rank).Float(dropoutP).ULong(seed);
            _device.Launch(KernelFor(kernelDType, "lk_lora_grad_a_f32", "lk_lora_grad_a_bf16"), LoraTileGrid(rank, inFeatures), new Dim3(LoraTileThreads), 0,
                           args);
        }
        if (dx is not null)
        {
            using var args = new KernelArguments()
                .Pointer(dy).Pointer(w0).Pointer(du).Pointer(a)
                .Pointer(dx)
                .Int(tokens).Int(inFeatures).Int(outFeatures).Int(rank).Float(dropoutP).ULong(seed);
            _device.Launch(KernelFor(kernelDType, "lk_lora_grad_x_f32", "lk_lora_grad_x_bf16"), LoraTileGrid(tokens, inFeatures), new Dim3(LoraTileThreads), 0,
                           args);
        }
    }

    public void LoraMerge(Tensor w, Tensor a, Tensor b, float scale)
    {
        int outFeatures = checked((int)w.Shape[0]), inFeatures = checked((int)w.Shape[1]);
        int rank = checked((int)a.Shape[0]);
        if (rank == 0) return;
        using var args = new KernelArguments()
            .Pointer(w).Pointer(a).Pointer(b)
            .Int(outFeatures).Int(inFeatures).Int(rank).Float(scale);
        _device.Launch(KernelFor(w.DType, "lk_lora_merge_f32", "lk_lora_merge_bf16"), LoraTileGrid(outFeatures, inFeatures),
                       new Dim3(LoraTileThreads), 0, args);
    }

    /// <summary>
    /// The decode kernel's grid and dynamic shared bytes, or null when the tiled path must run
    /// (more than 16 tokens, or staging x does not fit the device's shared memory). Blocks:
    /// one per multiprocessor (u is recomputed per block, so fewer is cheaper), no more than
    /// one per 16 W0 rows, and more when the per-block output partial sums would not fit.
    /// Shared words (4 bytes each), as lk_decode_layout carves them:
    /// M·xStride (x) + M·⌈xStride/32⌉ (dropout bits) + M·r (u) + M·⌈out/blocks⌉ (partial y),
    /// with xStride = min(in, 2048) rounded up to a multiple of 8.
    /// </summary>
    internal static (uint Blocks, uint SharedBytes)? LoraDecodeGeometry(int tokens, int inFeatures, int outFeatures,
                                                                       int rank, int multiprocessors,
                                                                       int maxDynamicSharedBytes)
    {
        if (tokens < 1 || tokens > LoraDecodeMaxTokens || outFeatures < 1) return null;
        long xStride = CeilDiv(Math.Min(inFeatures, LoraDecodeChunk), LoraDecodeXAlign) * (long)LoraDecodeXAlign;
        long fixedWords = tokens * (xStride + CeilDiv(xStride, 32) + rank);
        long availableWords = maxDynamicSharedBytes / 4 - fixedWords;
        if (availableWords < tokens) return null;  // not even one output row's partial sums fit
        long maxRowsPerBlock = availableWords / tokens;
        long blocks = Math.Min(Math.Max(multiprocessors, 1), CeilDiv(outFeatures, LoraDecodeRowsPerPass));
        blocks = Math.Max(blocks, CeilDiv(outFeatures, maxRowsPerBlock));
        long rowsPerBlock = CeilDiv(outFeatures, blocks);
        return ((uint)blocks, (uint)(4 * (fixedWords + tokens * rowsPerBlock)));
    }

    /// <summary>Tile-engine grid for a [rows, columns] output: X over 64-row tiles, Y over 64-column tiles.</summary>
    internal static Dim3 LoraTileGrid(int rows, int columns)
    {
        long columnTiles = CeilDiv(columns, LoraTile);
        if (columnTiles > MaxGridY)
            throw new NotSupportedException(
                $"A LoRA kernel output with {columns} columns needs {columnTiles} column tiles; " +
                $"a CUDA grid allows {MaxGridY}.");
        return new Dim3((uint)CeilDiv(rows, LoraTile), (uint)columnTiles);
    }

    /// <summary>(M, in, out, r): tokens are x's elements over in, so x may have any leading shape.</summary>
    private static (int Tokens, int In, int Out, int Rank) LoraDims(Tensor x, Tensor w0, Tensor a)
    {
        int inFeatures = checked((int)w0.Shape[1]);
        return (checked((int)(x.ElementCount / inFeatures)), inFeatures, checked((int)w0.Shape[0]),
                checked((int)a.Shape[0]));
    }

    /// <summary>
    /// The entry point for the tensors' storage dtype. Both names are written out in full at each
    /// launch so every kernel a backend launches can be found by its name.
    /// </summary>
    private static string KernelFor(DType dtype, string f32Kernel, string bf16Kernel) => dtype switch
    {
        DType.F32 => f32Kernel,
        DType.BF16 => bf16Kernel,
        _ => throw new NotSupportedException($"The GPU kernels have no variant for dtype {dtype}."),
    };

    private static long CeilDiv(long a, long b) => (a + b - 1) / b;
}
