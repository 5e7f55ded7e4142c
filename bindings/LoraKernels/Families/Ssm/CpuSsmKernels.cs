// The SSM family on the native CPU kernels (native/cpu/ssm.cpp; the frozen projections through
// lk_cpu_lora_forward/_backward at r = 0). Column slices are passed as pointers into their rows with the
// rows' stride.
using LoraKernels.Backends.Cpu;
using LoraKernels.Interop;

namespace LoraKernels.Families.Ssm;

internal sealed unsafe class CpuSsmKernels : ISsmKernels
{
    public void ScanForward(ScanProblem p, Tensor y, Tensor? lastState)
    {
        using var call = new CpuCall();
        Check.Cpu(NativeCpu.lk_cpu_ssm_scan_forward(p.Batch, p.Length, p.Channels, p.States, call.Input(p.U), p.Channels,
                                                    call.Input(p.Delta), p.Channels, call.Input(p.DeltaBias), call.Input(p.A), At(call, p.B),
                                                    At(call, p.C), p.B.Stride, call.Input(p.DSkip), At(call, p.Z), p.Z?.Stride ?? 0,
                                                    call.Input(p.H0), call.Output(y), p.Channels, call.Output(lastState)));
    }

    public void ScanBackward(ScanProblem p, Tensor dy, Tensor? du, Tensor? dDelta, Columns? dB, Columns? dC, Columns? dz)
    {
        using var call = new CpuCall();
        Check.Cpu(NativeCpu.lk_cpu_ssm_scan_backward(p.Batch, p.Length, p.Channels, p.States, call.Input(p.U), p.Channels,
                                                     call.Input(p.Delta), p.Channels, call.Input(p.DeltaBias), call.Input(p.A),
                                                     At(call, p.B), At(call, p.C), p.B.Stride, call.Input(p.DSkip), At(call, p.Z),
                                                     p.Z?.Stride ?? 0, call.Input(p.H0), call.Input(dy), p.Channels, call.Output(du),
                                                     p.Channels, call.Output(dDelta), p.Channels, At(call, dB), At(call, dC),
                                                     (dB ?? dC)?.Stride ?? 0, At(call, dz), dz?.Stride ?? 0));
    }

    public void Step(ScanProblem p, Tensor state, Tensor y)
    {
        using var call = new CpuCall();
        Check.Cpu(NativeCpu.lk_cpu_ssm_step(p.Batch, p.Channels, p.States, call.Input(p.U), p.Channels, call.Input(p.Delta), p.Channels,
                                            call.Input(p.DeltaBias), call.Input(p.A), At(call, p.B), At(call, p.C), p.B.Stride,
                                            call.Input(p.DSkip), At(call, p.Z), p.Z?.Stride ?? 0, call.InputOutput(state), call.Output(y),
                                            p.Channels));
    }

    public void ConvForward(int batch, Columns x, Tensor weight, Tensor? bias, Tensor y)
    {
        using var call = new CpuCall();
        Check.Cpu(NativeCpu.lk_cpu_ssm_conv_forward(batch, x.Rows / batch, x.Width, weight.Shape[1], At(call, x), x.Stride, call.Input(weight),
                                                    call.Input(bias), call.Output(y), y.Shape[1]));
    }

    public void ConvBackward(int batch, Columns x, Tensor weight, Tensor? bias, Tensor dy, Columns dx)
    {
        using var call = new CpuCall();
        Check.Cpu(NativeCpu.lk_cpu_ssm_conv_backward(batch, x.Rows / batch, x.Width, weight.Shape[1], At(call, x), x.Stride,
                                                     call.Input(weight), call.Input(bias), call.Input(dy), dy.Shape[1], At(call, dx), dx.Stride));
    }

    public void ConvStep(Columns x, Tensor weight, Tensor? bias, Tensor state, Tensor y)
    {
        using var call = new CpuCall();
        Check.Cpu(NativeCpu.lk_cpu_ssm_conv_step(x.Rows, x.Width, weight.Shape[1], At(call, x), x.Stride, call.Input(weight), call.Input(bias),
                                                 call.InputOutput(state), call.Output(y), y.Shape[1]));
    }

    public void CopyColumns(Columns source, Columns destination)
    {
        using var call = new CpuCall();
        Check.Cpu(NativeCpu.lk_cpu_ssm_copy_columns(source.Rows, source.Width, At(call, source), source.Stride, At(call, destination),
                                                    destination.Stride));
    }

    public void DenseForward(Tensor x, Tensor w, Tensor? bias, Tensor y)
    {
        using var call = new CpuCall();
        Check.Cpu(NativeCpu.lk_cpu_lora_forward(x.Shape[0], w.Shape[1], w.Shape[0], 0, call.Input(x), call.Input(w), call.Input(bias), null,
                                                null, 0f, 0f, 0, call.Output(y), null));
    }

    public void DenseGradX(Tensor dy, Tensor w, Tensor dx)
    {
        using var call = new CpuCall();
        Check.Cpu(NativeCpu.lk_cpu_lora_backward(dy.Shape[0], w.Shape[1], w.Shape[0], 0, null, call.Input(w), null, null, null,
                                                 call.Input(dy), 0f, 0f, 0, call.Output(dx), null, null));
    }

    /// <summary>The first element of a column slice (its rows follow at its stride); null for none.</summary>
    private static float* At(CpuCall call, Columns? columns) => columns is { } c ? call.Input(c.Tensor) + c.Offset : null;
}
