// Launch code for kernels/kron.cu: the base product by kernels/lora.cu's kernels with r = 0 (decode or tiled, as
// the LoRA forward chooses), then the fused Kronecker term added in place, one block per 64 x 64 tile of a token's
// [out_l, out_k] output (grid x = tokens × column tiles); the factor gradients as fp32 partials over chunks of
// TokensPerChunk tokens (grid z), summed in chunk order by lk_kron_sum_chunks. tests/native/parity/
// kron_parity_test.cpp launches the same sequence.
using LoraKernels.Backends.Gpu;
using LoraKernels.Families.Lora;
using LoraKernels.Runtime;

namespace LoraKernels.Families.Kron;

internal sealed class GpuKronKernels(GpuLaunch gpu) : IKronKernels
{
    // Tokens one factor-gradient block sums before writing its partial: small enough that a few hundred tokens fill
    // a GPU's blocks, large enough that the partials stay a few copies of the factor. Raised when the chunk count
    // would pass the grid's z limit.
    internal const int TokensPerChunk = 8;
    private const int MaxGridYz = 65535;

    private readonly GpuLoraKernels _lora = new(gpu);

    public void Forward(Tensor x, Tensor w0, Tensor? bias, Tensor w1, Tensor w2, in KronShape s, float scale, Tensor y)
    {
        long tokens = x.ElementCount / s.In;
        _lora.BaseForward(x, w0, bias, y);
        if (scale == 0f) return;  // the base alone (a merged layer's forward), as the CPU kernel
        using var args = new KernelArguments().Pointer(x).Pointer(w1).Pointer(w2).Pointer(y);
        gpu.Launch(GpuLaunch.KernelFor(y.DType, "lk_kron_forward_f32", "lk_kron_forward_bf16"), TokenGrid(tokens, s.OutK, s.OutL),
                   new Dim3(GpuLaunch.TileThreads), 0, Factors(args, s).Float(scale));
    }

    public void Backward(Tensor x, Tensor w0, Tensor w1, Tensor w2, Tensor dy, in KronShape s, float scale, Tensor? dx, Tensor? dw1,
                         Tensor? dw2)
    {
        long tokens = dy.ElementCount / s.Out;
        if (dx is not null)
        {
            _lora.BaseGradX(dy, w0, dx);
            using var args = new KernelArguments().Pointer(dy).Pointer(w1).Pointer(w2).Pointer(dx);
            gpu.Launch(GpuLaunch.KernelFor(dx.DType, "lk_kron_grad_x_f32", "lk_kron_grad_x_bf16"), TokenGrid(tokens, s.InN, s.InM),
                       new Dim3(GpuLaunch.TileThreads), 0, Factors(args, s).Float(scale));
        }
        if (dw1 is not null)
            FactorGradient(GpuLaunch.KernelFor(dw1.DType, "lk_kron_grad_w1_f32", "lk_kron_grad_w1_bf16"), x, dy, w2, dw1, tokens, s,
                           rows: s.OutL, columns: s.InM, scale);
        if (dw2 is not null)
            FactorGradient(GpuLaunch.KernelFor(dw2.DType, "lk_kron_grad_w2_f32", "lk_kron_grad_w2_bf16"), x, dy, w1, dw2, tokens, s,
                           rows: s.InN, columns: s.OutK, scale);
    }

    public void Merge(Tensor w, Tensor w1, Tensor w2, in KronShape s, long spatial, float scale)
    {
        using var args = new KernelArguments().Pointer(w).Pointer(w1).Pointer(w2);
        gpu.LaunchElementwise(GpuLaunch.KernelFor(w.DType, "lk_kron_merge_f32", "lk_kron_merge_bf16"), w.ElementCount,
                              Factors(args, s).Int(checked((int)spatial)).Float(scale));
    }

    /// <summary>
    /// One factor's gradient: the chunk kernel's partials (grid x over <paramref name="columns"/>, y over
    /// <paramref name="rows"/> of its chain output, z over token chunks), then their ordered sum times scale.
    /// </summary>
    private void FactorGradient(string kernel, Tensor x, Tensor dy, Tensor otherFactor, Tensor gradient, long tokens, in KronShape s,
                                long rows, long columns, float scale)
    {
        long perChunk = Math.Max(TokensPerChunk, GpuLaunch.CeilDiv(tokens, MaxGridYz));
        long chunks = GpuLaunch.CeilDiv(tokens, perChunk);
        using Tensor partial = Tensor.Empty(gradient.Device, DType.F32, chunks, gradient.ElementCount);
        using (var args = new KernelArguments().Pointer(x).Pointer(dy).Pointer(otherFactor).Pointer(partial).Int(checked((int)tokens)))
            gpu.Launch(kernel, new Dim3(checked((uint)GpuLaunch.CeilDiv(columns, GpuLaunch.Tile)), RowTiles(rows), (uint)chunks),
                       new Dim3(GpuLaunch.TileThreads), 0, Factors(args, s).Int(checked((int)perChunk)));
        using var sum = new KernelArguments().Pointer(partial).Pointer(gradient).Int((int)chunks).Long(gradient.ElementCount).Float(scale);
        gpu.LaunchElementwise(GpuLaunch.KernelFor(gradient.DType, "lk_kron_sum_chunks_f32", "lk_kron_sum_chunks_bf16"),
                              gradient.ElementCount, sum);
    }

    /// <summary>Per-token tiles: x = tokens × the column tiles of a token's output, y = its row tiles.</summary>
    private static Dim3 TokenGrid(long tokens, long columns, long rows) =>
        new(checked((uint)(tokens * GpuLaunch.CeilDiv(columns, GpuLaunch.Tile))), RowTiles(rows));

    private static uint RowTiles(long rows)
    {
        long tiles = GpuLaunch.CeilDiv(rows, GpuLaunch.Tile);
        if (tiles > MaxGridYz)
            throw new NotSupportedException($"A Kronecker factor with {rows} rows needs {tiles} row tiles; a CUDA grid allows {MaxGridYz}.");
        return (uint)tiles;
    }

    /// <summary>The four factor dimensions every kron.cu entry point takes (out_l, out_k, in_m, in_n).</summary>
    private static KernelArguments Factors(KernelArguments args, in KronShape s) =>
        args.Int(checked((int)s.OutL)).Int(checked((int)s.OutK)).Int(checked((int)s.InM)).Int(checked((int)s.InN));
}
