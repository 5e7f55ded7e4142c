// IQloraKernels on a GPU device (kernels/nf4.cu): which kernel, grid, block, dynamic shared memory
// and argument order for 4-bit quantization, dequantization, double quantization, the 4-bit matmul
// and the QLoRA forward and backward. The QLoRA backward is the low-rank delta's own launches
// (LowRankLaunches, shared with LoRA) plus the fused dx over the 4-bit base. docs/KERNELS.md documents
// each geometry, and tests/native/parity/nf4_parity_test.cpp launches the kernels with the same
// formulas. Finiteness of a weight to quantize is checked by Ops.Nf4 before the launch.
using LoraKernels.Backends.Gpu;
using LoraKernels.Families.Lora;
using LoraKernels.Runtime;

namespace LoraKernels.Families.Qlora;

internal sealed class GpuQloraKernels(GpuLaunch gpu) : IQloraKernels
{
    // lk_nf4_quantize: kQuantizeThreads, one warp per quantization block (kQuantizeWarps).
    internal const uint QuantizeThreads = 256;
    internal const int QuantizeBlocksPerLaunchBlock = 8;

    // lk_nf4_absmax_mean (one block of kMeanThreads) and lk_nf4_double_quantize (one block of
    // kDoubleQuantThreads per nested block).
    internal const uint NestedThreads = 256;

    // The decode kernels' table prefix (kLkQuantTableWords: 16 code values + 256 dynamic-map values)
    // in front of the decode engine's shared memory.
    internal const int DecodeTableWords = 16 + 256;

    public void Quantize(Tensor weight, QuantizedWeight destination)
    {
        using var args = new KernelArguments()
            .Pointer(weight).Pointer(destination.Codes).Pointer(destination.Absmax)
            .Long(weight.ElementCount).Int(destination.BlockSize).Int((int)destination.QuantType);
        gpu.Launch(GpuLaunch.KernelFor(weight.DType, "lk_nf4_quantize_f32", "lk_nf4_quantize_bf16"),
                   new Dim3(checked((uint)GpuLaunch.CeilDiv(destination.BlockCount, QuantizeBlocksPerLaunchBlock))),
                   new Dim3(QuantizeThreads), 0, args);
    }

    /// <summary>One thread per code byte, in the element-wise geometry.</summary>
    public void Dequantize(QuantizedWeight weight, Tensor destination)
    {
        using var args = StatsArguments(new KernelArguments().Pointer(weight.Codes), weight)
            .Pointer(destination).Long(weight.ElementCount).Int(weight.BlockSize).Int((int)weight.QuantType);
        gpu.LaunchElementwise(GpuLaunch.KernelFor(destination.DType, "lk_nf4_dequantize_f32", "lk_nf4_dequantize_bf16"),
                              weight.CodeBytes, args);
    }

    /// <summary>
    /// offset = mean(absmax) into a one-element device temporary (a single-block reduction, so the
    /// order is fixed), then the nested codes from it; the offset is read back because every
    /// consumer takes it by value, as lk_quant_stats does.
    /// </summary>
    public void DoubleQuantize(QuantizedWeight weight)
    {
        using Tensor offset = Tensor.Empty(weight.Device, DType.F32, 1);
        using (var args = new KernelArguments().Pointer(weight.Absmax).Pointer(offset).Long(weight.BlockCount))
            gpu.Launch("lk_nf4_absmax_mean_f32", new Dim3(1), new Dim3(NestedThreads), 0, args);
        using (var args = new KernelArguments()
                   .Pointer(weight.Absmax).Pointer(weight.QAbsmax).Pointer(weight.Absmax2)
                   .Pointer(offset).Long(weight.BlockCount))
            gpu.Launch("lk_nf4_double_quantize_f32", new Dim3(checked((uint)weight.NestedBlockCount)), new Dim3(NestedThreads), 0, args);
        weight.Offset = offset.ToArray()[0];
    }

    public void Matmul(Tensor x, QuantizedWeight w, Tensor? bias, Tensor y)
    {
        var (tokens, inFeatures, outFeatures) = Dims(x, w);
        using var args = StatsArguments(new KernelArguments().Pointer(x).Pointer(w.Codes), w)
            .Pointer(bias).Pointer(y)
            .Int(tokens).Int(inFeatures).Int(outFeatures).Int(w.BlockSize).Int((int)w.QuantType);
        if (gpu.DecodeGeometry(tokens, inFeatures, outFeatures, 0, DecodeTableWords) is { } geometry)
            gpu.Launch(GpuLaunch.KernelFor(x.DType, "lk_nf4_matmul_decode_f32", "lk_nf4_matmul_decode_bf16"), new Dim3(geometry.Blocks),
                       new Dim3(GpuLaunch.DecodeThreads), geometry.SharedBytes, args);
        else
            gpu.LaunchProduct(x.DType, "lk_nf4_matmul_tiled_f32", "lk_nf4_matmul_tiled_bf16", "lk_nf4_matmul_mma_bf16", tokens, outFeatures,
                              args);
    }

    /// <summary>M ≤ 16 with room in shared memory: one decode launch; else project u, then the tiled forward.</summary>
    public void Forward(Tensor x, QuantizedWeight w, Tensor? bias, Tensor a, Tensor b, float scale, float dropoutP, ulong seed,
                        Tensor y, Tensor u)
    {
        var (tokens, inFeatures, outFeatures) = Dims(x, w);
        int rank = checked((int)a.Shape[0]);
        if (gpu.DecodeGeometry(tokens, inFeatures, outFeatures, rank, DecodeTableWords) is { } geometry)
        {
            using var args = StatsArguments(new KernelArguments().Pointer(x).Pointer(w.Codes), w)
                .Pointer(bias).Pointer(a).Pointer(b).Pointer(y).Pointer(u)
                .Int(tokens).Int(inFeatures).Int(outFeatures).Int(rank).Int(w.BlockSize).Int((int)w.QuantType)
                .Float(scale).Float(dropoutP).ULong(seed);
            gpu.Launch(GpuLaunch.KernelFor(x.DType, "lk_nf4_qlora_forward_decode_f32", "lk_nf4_qlora_forward_decode_bf16"),
                       new Dim3(geometry.Blocks), new Dim3(GpuLaunch.DecodeThreads), geometry.SharedBytes, args);
            return;
        }

        if (rank > 0) LowRankLaunches.Project(gpu, x, a, u, tokens, inFeatures, rank, dropoutP, seed);
        using var tiledArgs = StatsArguments(new KernelArguments().Pointer(x).Pointer(w.Codes), w)
            .Pointer(bias).Pointer(u).Pointer(b).Pointer(y)
            .Int(tokens).Int(inFeatures).Int(outFeatures).Int(rank).Int(w.BlockSize).Int((int)w.QuantType)
            .Float(scale);
        gpu.LaunchProduct(x.DType, "lk_nf4_qlora_forward_tiled_f32", "lk_nf4_qlora_forward_tiled_bf16", "lk_nf4_qlora_forward_mma_bf16",
                          tokens, outFeatures, tiledArgs);
    }

    /// <summary>The low-rank delta's gradients (LowRankLaunches: du, dB, dA never read W), then dx by
    /// lk_nf4_grad_x, which reduces du A and dy deq(W) in one pass.</summary>
    public void Backward(Tensor x, QuantizedWeight w, Tensor a, Tensor b, Tensor u, Tensor dy, float scale, float dropoutP,
                         ulong seed, Tensor? dx, Tensor? dA, Tensor? dB)
    {
        var (tokens, inFeatures, outFeatures) = Dims(x, w);
        int rank = checked((int)a.Shape[0]);
        using Tensor? du = LowRankLaunches.ParameterGradients(gpu, x, b, u, dy, scale, dropoutP, seed, tokens, inFeatures,
                                                              outFeatures, rank, dA, dB, needDu: dx is not null);
        if (dx is null) return;
        using var args = StatsArguments(new KernelArguments().Pointer(dy).Pointer(w.Codes), w)
            .Pointer(du).Pointer(a).Pointer(dx)
            .Int(tokens).Int(inFeatures).Int(outFeatures).Int(rank).Int(w.BlockSize).Int((int)w.QuantType)
            .Float(dropoutP).ULong(seed);
        gpu.LaunchProduct(x.DType, "lk_nf4_grad_x_f32", "lk_nf4_grad_x_bf16", "lk_nf4_grad_x_mma_bf16", tokens, inFeatures, args);
    }

    /// <summary>Appends the statistics arguments (absmax, qabsmax, absmax2, offset) of a plain or nested weight.</summary>
    internal static KernelArguments StatsArguments(KernelArguments args, QuantizedWeight w) =>
        w.IsNested
            ? args.NullPointer().Pointer(w.QAbsmax).Pointer(w.Absmax2).Float(w.Offset)
            : args.Pointer(w.Absmax).NullPointer().NullPointer().Float(0.0f);

    /// <summary>(M, in, out) of a matmul with the [out, in] quantized weight: tokens are x's elements over in.</summary>
    private static (int Tokens, int In, int Out) Dims(Tensor x, QuantizedWeight w)
    {
        int inFeatures = checked((int)w.Shape[1]);
        return (checked((int)(x.ElementCount / inFeatures)), inFeatures, checked((int)w.Shape[0]));
    }
}
