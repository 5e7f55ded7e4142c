// IDoraKernels over the native CPU kernels (native/cpu/dora.cpp), BF16 staged through fp32
// as every CPU op is.
using LoraKernels.Backends.Cpu;
using LoraKernels.Interop;

namespace LoraKernels.Families.Dora;

internal sealed unsafe class CpuDoraKernels : IDoraKernels
{
    public void RowSquaredNorm(Tensor w0, Tensor sqnorm)
    {
        using var call = new CpuCall();
        Check.Cpu(NativeCpu.lk_cpu_dora_row_sqnorm(w0.Shape[0], w0.Shape[1], call.Input(w0), call.Output(sqnorm)));
        call.WriteBack();
    }

    public DoraNormReport WeightNorm(Tensor w0, Tensor w0SquaredNorm, Tensor a, Tensor b, float scale, Tensor norm)
    {
        using var call = new CpuCall();
        LkDoraNormReport report;
        Check.Cpu(NativeCpu.lk_cpu_dora_weight_norm(w0.Shape[0], w0.Shape[1], a.Shape[0], call.Input(w0), call.Input(w0SquaredNorm),
                                                    call.Input(a), call.Input(b), scale, call.Output(norm), &report));
        call.WriteBack();
        return new DoraNormReport(report.RecomputedRows, report.ZeroRows);
    }

    public void Forward(Tensor x, Tensor w0, Tensor? bias, Tensor a, Tensor b, float scale, Tensor magnitude, Tensor norm,
                            Tensor y, Tensor u, Tensor? z)
    {
        using var call = new CpuCall();
        long m = x.Shape[0], inFeatures = x.Shape[1], outFeatures = w0.Shape[0], r = a.Shape[0];
        Check.Cpu(NativeCpu.lk_cpu_dora_forward(m, inFeatures, outFeatures, r, call.Input(x), call.Input(w0), call.Input(bias),
                                                call.Input(a), call.Input(b), scale, call.Input(magnitude), call.Input(norm),
                                                call.Output(y), call.Output(u), call.Output(z)));
        call.WriteBack();
    }

    public void Backward(Tensor x, Tensor w0, Tensor a, Tensor b, Tensor u, Tensor z, Tensor dy, float scale,
                             Tensor magnitude, Tensor norm, Tensor? dx, Tensor? dA, Tensor? dB, Tensor? dMagnitude)
    {
        using var call = new CpuCall();
        long m = x.Shape[0], inFeatures = x.Shape[1], outFeatures = w0.Shape[0], r = a.Shape[0];
        Check.Cpu(NativeCpu.lk_cpu_dora_backward(m, inFeatures, outFeatures, r, call.Input(x), call.Input(w0), call.Input(a),
                                                 call.Input(b), call.Input(u), call.Input(z), call.Input(dy), scale,
                                                 call.Input(magnitude), call.Input(norm), call.Output(dx), call.Output(dA),
                                                 call.Output(dB), call.Output(dMagnitude)));
        call.WriteBack();
    }

    public DoraNormReport WeightNormQuantized(QuantizedWeight w0, Tensor w0SquaredNorm, Tensor a, Tensor b, float scale, Tensor norm)
    {
        using var call = new CpuCall();
        LkQuantStats stats = call.Stats(w0);
        LkDoraNormReport report;
        Check.Cpu(NativeCpu.lk_cpu_dora_weight_norm_4bit(w0.Shape[0], w0.Shape[1], a.Shape[0], call.Bytes(w0.Codes), &stats,
                                                         call.Input(w0SquaredNorm), call.Input(a), call.Input(b), scale,
                                                         call.Output(norm), &report));
        call.WriteBack();
        return new DoraNormReport(report.RecomputedRows, report.ZeroRows);
    }

    public void ScaleColumns(Tensor z, Tensor magnitude, Tensor norm, Tensor? bias, Tensor y)
    {
        using var call = new CpuCall();
        Check.Cpu(NativeCpu.lk_cpu_dora_scale_columns(z.Shape[0], z.Shape[1], call.Input(z), call.Input(magnitude), call.Input(norm),
                                                      call.Input(bias), call.Output(y)));
        call.WriteBack();
    }

    public void ScaleGrad(Tensor dy, Tensor z, Tensor magnitude, Tensor norm, Tensor? dMagnitude, Tensor? dz)
    {
        using var call = new CpuCall();
        Check.Cpu(NativeCpu.lk_cpu_dora_scale_grad(dy.Shape[0], dy.Shape[1], call.Input(dy), call.Input(z), call.Input(magnitude),
                                                   call.Input(norm), call.Output(dMagnitude), call.Output(dz)));
        call.WriteBack();
    }

    public void Dropout(Tensor x, float p, ulong seed, Tensor y)
    {
        using var call = new CpuCall();
        Check.Cpu(NativeCpu.lk_cpu_dora_dropout(x.ElementCount, call.Input(x), p, seed, call.Output(y)));
        call.WriteBack();
    }

    public void Merge(Tensor w, Tensor a, Tensor b, Tensor magnitude, Tensor norm, float scale, bool unmerge)
    {
        using var call = new CpuCall();
        Check.Cpu(NativeCpu.lk_cpu_dora_merge(w.Shape[0], w.Shape[1], a.Shape[0], call.InputOutput(w), call.Input(a), call.Input(b),
                                              call.Input(magnitude), call.Input(norm), scale, unmerge ? 1 : 0));
        call.WriteBack();
    }
}
