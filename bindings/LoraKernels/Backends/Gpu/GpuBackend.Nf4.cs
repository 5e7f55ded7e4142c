// Launch code for kernels/nf4.cu: which kernel, grid, block, dynamic shared memory and argument
// order for 4-bit quantization, dequantization, double quantization, the 4-bit matmul and the
// QLoRA forward and backward. The constants mirror the kernel file's constexprs; docs/KERNELS.md
// documents each geometry, and tests/native/parity/nf4_parity_test.cpp launches the kernels with
// the same formulas. Finiteness of a weight to quantize is checked by Ops.Nf4 before the launch.
using LoraKernels.Runtime;

namespace LoraKernels.Backends.Gpu;

internal sealed partial class GpuBackend
{
    // lk_nf4_quantize: 256 threads, one warp per quantization block (kQuantizeWarps = 8).
    internal const uint Nf4QuantizeThreads = 256;
    internal const int Nf4QuantizeBlocksPerLaunchBlock = 8;

    // lk_nf4_absmax_mean (one block of kMeanThreads) and lk_nf4_double_quantize (one block of
    // 256 threads per nested block).
    internal const uint Nf4NestedThreads = 256;

    // Decode kernels: lora's decode geometry plus kDecodeTableWords (16 code values + 256
    // dynamic-map values) in front of the x staging area.
    internal const int Nf4DecodeTableWords = 16 + 256;

    public void Quantize4Bit(Tensor weight, QuantizedWeight destination)
    {
        long n = weight.ElementCount;
        using var args = new KernelArguments()
            .Pointer(weight).Pointer(destination.Codes).Pointer(destination.Absmax)
            .Long(n).Int(destination.BlockSize).Int((int)destination.QuantType);
        _device.Launch(KernelFor(weight.DType, "lk_nf4_quantize_f32", "lk_nf4_quantize_bf16"),
                       new Dim3(checked((uint)CeilDiv(destination.BlockCount, Nf4QuantizeBlocksPerLaunchBlock))),
                       new Dim3(Nf4QuantizeThreads), 0, args);
    }

    public void Dequantize4Bit(QuantizedWeight weight, Tensor destination)
    {
        long n = weight.ElementCount;
        using var args = StatsArguments(new KernelArguments().Pointer(weight.Codes), weight)
            .Pointer(destination).Long(n).Int(weight.BlockSize).Int((int)weight.QuantType);
        _device.Launch(KernelFor(destination.DType, "lk_nf4_dequantize_f32", "lk_nf4_dequantize_bf16"),
                       new Dim3(ElementwiseGrid(weight.CodeBytes, _device.MultiprocessorCount)),
                       new Dim3(ElementwiseThreads), 0, args);
    }

    /// <summary>
    /// offset = mean(absmax) into a one-element device temporary (a single-block reduction, so the
    /// order is fixed), then the nested codes from it; the offset is read back because every
    /// consumer takes it by value, as lk_quant_stats does.
    /// </summary>
    public void DoubleQuantize(QuantizedWeight weight)
    {
        using Tensor offset = Tensor.Empty(weight.Device, DType.F32, 1);
        using (var args = new KernelArguments()
                   .Pointer(weight.Absmax).Pointer(offset).Long(weight.BlockCount))
        {
            _device.Launch("lk_nf4_absmax_mean_f32", new Dim3(1), new Dim3(Nf4NestedThreads), 0, args);
        }
        using (var args = new KernelArguments()
                   .Pointer(weight.Absmax).Pointer(weight.QAbsmax).Pointer(weight.Absmax2)
                   .Pointer(offset).Long(weight.BlockCount))
        {
            _device.Launch("lk_nf4_double_quantize_f32", new Dim3(checked((uint)weight.NestedBlockCount)),
                           new Dim3(Nf4NestedThreads), 0, args);
        }
        weight.Offset = offset.ToArray()[0];
    }

    public void Nf4Matmul(Tensor x, QuantizedWeight w, Tensor? bias, Tensor y)
    {
        var (tokens, inFeatures, outFeatures) = Nf4Dims(x, w);
        DType kernelDType = x.DType;
        var decode = Nf4DecodeGeometry(tokens, inFeatures, outFeatures, 0, _device.MultiprocessorCount,
                                       _device.MaxDynamicSharedBytesPerBlock);
        using var args = StatsArguments(new KernelArguments().Pointer(x).Pointer(w.Codes), w)
            .Pointer(bias).Pointer(y)
            .Int(tokens).Int(inFeatures).Int(outFeatures).Int(w.BlockSize).Int((int)w.QuantType);
        if (decode is { } geometry)
            _device.Launch(KernelFor(kernelDType, "lk_nf4_matmul_decode_f32", "lk_nf4_matmul_decode_bf16"), new Dim3(geometry.Blocks), new Dim3(LoraDecodeThreads),
                           geometry.SharedBytes, args);
        else
            _device.Launch(KernelFor(kernelDType, "lk_nf4_matmul_tiled_f32", "lk_nf4_matmul_tiled_bf16"), LoraTileGrid(tokens, outFeatures), new Dim3(LoraTileThreads),
                           0, args);
    }

    public void QloraForward(Tensor x, QuantizedWeight w, Tensor? bias, Tensor a, Tensor b, float scale,
                             float dropoutP, ulong seed, Tensor y, Tensor u)
    {
        var (tokens, inFeatures, outFeatures) = Nf4Dims(x, w);
        int rank = checked((int)a.Shape[0]);
        DType kernelDType = x.DType;
        var decode = Nf4DecodeGeometry(tokens, inFeatures, outFeatures, rank, _device.MultiprocessorCount,
                                       _device.MaxDynamicSharedBytesPerBlock);
        if (decode is { } geometry)
        {
            using var args = StatsArguments(new KernelArguments().Pointer(x).Pointer(w.Codes), w)
                .Pointer(bias).Pointer(a).Pointer(b).Pointer(y)
                .Pointer(u)
                .Int(tokens).Int(inFeatures).Int(outFeatures).Int(rank).Int(w.BlockSize).Int((int)w.QuantType)
                .Float(scale).Float(dropoutP).ULong(seed);
            _device.Launch(KernelFor(kernelDType, "lk_nf4_qlora_forward_decode_f32", "lk_nf4_qlora_forward_decode_bf16"), new Dim3(geometry.Blocks),
                           new Dim3(LoraDecodeThreads), geometry.SharedBytes, args);
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
        using var tiledArgs = StatsArguments(new KernelArguments().Pointer(x).Pointer(w.Codes), w)
            .Pointer(bias).Pointer(u).Pointer(b).Pointer(y)
            .Int(tokens).Int(inFeatures).Int(outFeatures).Int(rank).Int(w.BlockSize).Int((int)w.QuantType)
            .Float(scale);
        _device.Launch(KernelFor(kernelDType, "lk_nf4_qlora_forward_tiled_f32", "lk_nf4_qlora_forward_tiled_bf16"), LoraTileGrid(tokens, outFeatures),
                       new Dim3(LoraTileThreads), 0, tiledArgs);
    }

    /// <summary>du = scale·dy B (lk_lora_grad_u), then dB and dA by the LoRA kernels (they never read W), and dx
    /// by lk_nf4_grad_x, which reduces du A and dy deq(W) in one pass.</summary>
    public void QloraBackward(Tensor x, QuantizedWeight w, Tensor a, Tensor b, Tensor u, Tensor dy, float scale,
                              float dropoutP, ulong seed, Tensor? dx, Tensor? dA, Tensor? dB)
    {
        var (tokens, inFeatures, outFeatures) = Nf4Dims(x, w);
        int rank = checked((int)a.Shape[0]);
        DType kernelDType = x.DType;

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
            using var args = StatsArguments(new KernelArguments().Pointer(dy).Pointer(w.Codes), w)
                .Pointer(du).Pointer(a).Pointer(dx)
                .Int(tokens).Int(inFeatures).Int(outFeatures).Int(rank).Int(w.BlockSize).Int((int)w.QuantType)
                .Float(dropoutP).ULong(seed);
            _device.Launch(KernelFor(kernelDType, "lk_nf4_grad_x_f32", "lk_nf4_grad_x_bf16"), LoraTileGrid(tokens, inFeatures), new Dim3(LoraTileThreads), 0,
                           args);
        }
    }

    /// <summary>
    /// The nf4 decode kernels' grid and dynamic shared bytes, or null when the tiled path must
    /// run: <see cref="LoraDecodeGeometry"/> for the shared words it carves after the
    /// <see cref="Nf4DecodeTableWords"/> table words (lk_decode_layout in kernels/nf4.cu).
    /// </summary>
    internal static (uint Blocks, uint SharedBytes)? Nf4DecodeGeometry(int tokens, int inFeatures, int outFeatures,
                                                                      int rank, int multiprocessors,
                                                                      int maxDynamicSharedBytes)
    {
        const int tableBytes = 4 * Nf4DecodeTableWords;
        var geometry = LoraDecodeGeometry(tokens, inFeatures, outFeatures, rank, multiprocessors,
                                          maxDynamicSharedBytes - tableBytes);
        return geometry is { } g ? (g.Blocks, g.SharedBytes + tableBytes) : null;
    }

    /// <summary>Appends the statistics arguments (absmax, qabsmax, absmax2, offset) of a plain or nested weight.</summary>
    private static KernelArguments StatsArguments(KernelArguments args, QuantizedWeight w) =>
        w.IsNested
            ? args.NullPointer().Pointer(w.QAbsmax).Pointer(w.Absmax2).Float(w.Offset)
            : args.Pointer(w.Absmax).NullPointer().NullPointer().Float(0.0f);

    /// <summary>(M, in, out) of a matmul with the [out, in] quantized weight: tokens are x's elements over in.</summary>
    private static (int Tokens, int In, int Out) Nf4Dims(Tensor x, QuantizedWeight w)
    {
        int inFeatures = checked((int)w.Shape[1]);
        return (checked((int)(x.ElementCount / inFeatures)), inFeatures, checked((int)w.Shape[0]));
    }
}
