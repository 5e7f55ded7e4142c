// The 4-bit family on the native CPU kernels (native/cpu/nf4*.cpp): a QuantizedWeight's buffers
// are host memory here, so the codes and statistics are passed in place (lk_quant_stats); BF16
// activations go through the same fp32 staging as the LoRA ops.
using LoraKernels.Interop;

namespace LoraKernels.Backends.Cpu;

internal sealed unsafe partial class CpuBackend
{
    public void Quantize4Bit(Tensor weight, QuantizedWeight destination)
    {
        using var f32 = new Fp32Staging();
        Check.Cpu(NativeCpu.lk_cpu_quantize_4bit((int)destination.QuantType, weight.ElementCount, destination.BlockSize,
                                                 f32.Input(weight), (byte*)destination.CodesAddress, (float*)destination.AbsmaxAddress));
    }

    public void Dequantize4Bit(QuantizedWeight weight, Tensor destination)
    {
        using var f32 = new Fp32Staging();
        LkQuantStats stats = LkQuantStats.Of(weight);
        Check.Cpu(NativeCpu.lk_cpu_dequantize_4bit(weight.ElementCount, (byte*)weight.CodesAddress, &stats, f32.Output(destination)));
        f32.WriteBack();
    }

    public void DoubleQuantize(QuantizedWeight weight)
    {
        float offset;
        Check.Cpu(NativeCpu.lk_cpu_double_quantize(weight.BlockCount, (float*)weight.AbsmaxAddress, (byte*)weight.QAbsmaxAddress,
                                                   (float*)weight.Absmax2Address, &offset));
        weight.Offset = offset;
    }

    public void Nf4Matmul(Tensor x, QuantizedWeight w, Tensor? bias, Tensor y)
    {
        using var f32 = new Fp32Staging();
        LkQuantStats stats = LkQuantStats.Of(w);
        float* yPointer = f32.Output(y);
        Check.Cpu(NativeCpu.lk_cpu_nf4_matmul(x.Shape[0], x.Shape[1], w.Shape[0], f32.Input(x), (byte*)w.CodesAddress, &stats,
                                              f32.Input(bias), yPointer));
        f32.WriteBack();
    }

    public void QloraForward(Tensor x, QuantizedWeight w, Tensor? bias, Tensor a, Tensor b, float scale,
                             float dropoutP, ulong seed, Tensor y, Tensor u)
    {
        using var f32 = new Fp32Staging();
        LkQuantStats stats = LkQuantStats.Of(w);
        float* yPointer = f32.Output(y);
        Check.Cpu(NativeCpu.lk_cpu_qlora_forward(x.Shape[0], x.Shape[1], w.Shape[0], a.Shape[0], f32.Input(x), (byte*)w.CodesAddress,
                                                 &stats, f32.Input(bias), f32.Input(a), f32.Input(b), scale, dropoutP, seed,
                                                 yPointer, f32.Output(u)));
        f32.WriteBack();
    }

    public void QloraBackward(Tensor x, QuantizedWeight w, Tensor a, Tensor b, Tensor u, Tensor dy, float scale,
                              float dropoutP, ulong seed, Tensor? dx, Tensor? dA, Tensor? dB)
    {
        using var f32 = new Fp32Staging();
        LkQuantStats stats = LkQuantStats.Of(w);
        Check.Cpu(NativeCpu.lk_cpu_qlora_backward(x.Shape[0], x.Shape[1], w.Shape[0], a.Shape[0], f32.Input(x), (byte*)w.CodesAddress,
                                                  &stats, f32.Input(a), f32.Input(b), f32.Input(u), f32.Input(dy), scale,
                                                  dropoutP, seed, f32.Output(dx), f32.Output(dA), f32.Output(dB)));
        f32.WriteBack();
    }
}
