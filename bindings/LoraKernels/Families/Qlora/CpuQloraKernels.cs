// The 4-bit family on the native CPU kernels (native/cpu/nf4*.cpp): a QuantizedWeight's buffers
// are host memory here, so the codes and statistics are passed in place (lk_quant_stats); BF16
// activations go through the same fp32 staging as the LoRA ops.
using LoraKernels.Backends.Cpu;
using LoraKernels.Interop;

namespace LoraKernels.Families.Qlora;

internal sealed unsafe class CpuQloraKernels : IQloraKernels
{
    public void Quantize(Tensor weight, QuantizedWeight destination)
    {
        using var call = new CpuCall();
        Check.Cpu(NativeCpu.lk_cpu_quantize_4bit((int)destination.QuantType, weight.ElementCount, destination.BlockSize,
                                                 call.Input(weight), call.Bytes(destination.Codes), call.Floats(destination.Absmax)));
    }

    public void Dequantize(QuantizedWeight weight, Tensor destination)
    {
        using var call = new CpuCall();
        LkQuantStats stats = call.Stats(weight);
        Check.Cpu(NativeCpu.lk_cpu_dequantize_4bit(weight.ElementCount, call.Bytes(weight.Codes), &stats, call.Output(destination)));
        call.WriteBack();
    }

    public void DoubleQuantize(QuantizedWeight weight)
    {
        using var call = new CpuCall();
        float offset;
        Check.Cpu(NativeCpu.lk_cpu_double_quantize(weight.BlockCount, call.Floats(weight.Absmax), call.Bytes(weight.QAbsmax),
                                                   call.Floats(weight.Absmax2), &offset));
        weight.Offset = offset;
    }

    public void Matmul(Tensor x, QuantizedWeight w, Tensor? bias, Tensor y)
    {
        using var call = new CpuCall();
        LkQuantStats stats = call.Stats(w);
        float* yPointer = call.Output(y);
        Check.Cpu(NativeCpu.lk_cpu_nf4_matmul(x.Shape[0], x.Shape[1], w.Shape[0], call.Input(x), call.Bytes(w.Codes), &stats,
                                              call.Input(bias), yPointer));
        call.WriteBack();
    }

    public void Forward(Tensor x, QuantizedWeight w, Tensor? bias, Tensor a, Tensor b, float scale,
                             float dropoutP, ulong seed, Tensor y, Tensor u)
    {
        using var call = new CpuCall();
        LkQuantStats stats = call.Stats(w);
        float* yPointer = call.Output(y);
        Check.Cpu(NativeCpu.lk_cpu_qlora_forward(x.Shape[0], x.Shape[1], w.Shape[0], a.Shape[0], call.Input(x), call.Bytes(w.Codes),
                                                 &stats, call.Input(bias), call.Input(a), call.Input(b), scale, dropoutP, seed,
                                                 yPointer, call.Output(u)));
        call.WriteBack();
    }

    public void Backward(Tensor x, QuantizedWeight w, Tensor a, Tensor b, Tensor u, Tensor dy, float scale,
                              float dropoutP, ulong seed, Tensor? dx, Tensor? dA, Tensor? dB)
    {
        using var call = new CpuCall();
        LkQuantStats stats = call.Stats(w);
        Check.Cpu(NativeCpu.lk_cpu_qlora_backward(x.Shape[0], x.Shape[1], w.Shape[0], a.Shape[0], call.Input(x), call.Bytes(w.Codes),
                                                  &stats, call.Input(a), call.Input(b), call.Input(u), call.Input(dy), scale,
                                                  dropoutP, seed, call.Output(dx), call.Output(dA), call.Output(dB)));
        call.WriteBack();
    }
}
