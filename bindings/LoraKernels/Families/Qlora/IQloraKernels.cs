using LoraKernels.Backends.Gpu;

namespace LoraKernels.Families.Qlora;

/// <summary>
/// 4-bit (NF4/FP4) quantization and QLoRA ops (kernels/nf4.cu, native/cpu/nf4*.cpp), checked by
/// <see cref="Ops.Nf4"/> before the call. A quantized weight is a <see cref="QuantizedWeight"/>:
/// packed codes (U8 bytes in a tensor of dtype U8... stored as raw bytes), statistics plain or
/// nested, exactly bitsandbytes' layout (REFERENCE.md §8).
/// </summary>
internal interface IQloraKernels
{
    /// <summary>codes/absmax of <paramref name="weight"/> (F32 or BF16, any shape, flattened row-major).</summary>
    void Quantize(Tensor weight, QuantizedWeight destination);

    /// <summary>destination (F32 or BF16, the weight's element count) = deq(weight).</summary>
    void Dequantize(QuantizedWeight weight, Tensor destination);

    /// <summary>Fills the nested statistics (qabsmax, absmax2, offset) of <paramref name="weight"/> from its plain absmax.</summary>
    void DoubleQuantize(QuantizedWeight weight);

    /// <summary>y = x deq(W)ᵀ + bias; W is [out, in].</summary>
    void Matmul(Tensor x, QuantizedWeight w, Tensor? bias, Tensor y);

    /// <summary>QLoRA forward: u = dropout(x) Aᵀ (F32), y = x deq(W)ᵀ + bias + scale·u Bᵀ.</summary>
    void Forward(Tensor x, QuantizedWeight w, Tensor? bias, Tensor a, Tensor b, float scale,
                      float dropoutP, ulong seed, Tensor y, Tensor u);

    /// <summary>dx = dy deq(W) + dropout'(du A); dA, dB as LoRA; null outputs skipped.</summary>
    void Backward(Tensor x, QuantizedWeight w, Tensor a, Tensor b, Tensor u, Tensor dy, float scale,
                       float dropoutP, ulong seed, Tensor? dx, Tensor? dA, Tensor? dB);

    /// <summary>The implementation for <paramref name="device"/> (created once per device).</summary>
    static IQloraKernels On(Device device) =>
        device.Kernels<IQloraKernels>(static () => new CpuQloraKernels(), static gpu => new GpuQloraKernels(gpu));
}
