// IBackend's DoRA ops over the native CPU kernels (native/cpu/dora.cpp), BF16 staged through fp32
// as every CPU op is.
using LoraKernels.Interop;

namespace LoraKernels.Backends.Cpu;

internal sealed unsafe partial class CpuBackend
{
    public void DoraRowSquaredNorm(Tensor w0, Tensor sqnorm)
    {
        using var f32 = new Fp32Staging();
        Check.Cpu(NativeCpu.lk_cpu_dora_row_sqnorm(w0.Shape[0], w0.Shape[1], f32.Input(w0), f32.Output(sqnorm)));
        f32.WriteBack();
    }

    public DoraNormReport DoraWeightNorm(Tensor w0, Tensor w0SquaredNorm, Tensor a, Tensor b, float scale, Tensor norm)
    {
        using var f32 = new Fp32Staging();
        LkDoraNormReport report;
        Check.Cpu(NativeCpu.lk_cpu_dora_weight_norm(w0.Shape[0], w0.Shape[1], a.Shape[0], f32.Input(w0), f32.Input(w0SquaredNorm),
                                                    f32.Input(a), f32.Input(b), scale, f32.Output(norm), &report));
        f32.WriteBack();
        return new DoraNormReport(report.RecomputedRows, report.ZeroRows);
    }

    public void DoraForward(Tensor x, Tensor w0, Tensor? bias, Tensor a, Tensor b, float scale, Tensor magnitude, Tensor norm,
                            Tensor y, Tensor u, Tensor? z)
    {
        using var f32 = new Fp32Staging();
        long m = x.Shape[0], inFeatures = x.Shape[1], outFeatures = w0.Shape[0], r = a.Shape[0];
        Check.Cpu(NativeCpu.lk_cpu_dora_forward(m, inFeatures, outFeatures, r, f32.Input(x), f32.Input(w0), f32.Input(bias),
                                                f32.Input(a), f32.Input(b), scale, f32.Input(magnitude), f32.Input(norm),
                                                f32.Output(y), f32.Output(u), f32.Output(z)));
        f32.WriteBack();
    }

    public void DoraBackward(Tensor x, Tensor w0, Tensor a, Tensor b, Tensor u, Tensor z, Tensor dy, float scale,
                             Tensor magnitude, Tensor norm, Tensor? dx, Tensor? dA, Tensor? dB, Tensor? dMagnitude)
    {
        using var f32 = new Fp32Staging();
        long m = x.Shape[0], inFeatures = x.Shape[1], outFeatures = w0.Shape[0], r = a.Shape[0];
        Check.Cpu(NativeCpu.lk_cpu_dora_backward(m, inFeatures, outFeatures, r, f32.Input(x), f32.Input(w0), f32.Input(a),
                                                 f32.Input(b), f32.Input(u), f32.Input(z), f32.Input(dy), scale,
                                                 f32.Input(magnitude), f32.Input(norm), f32.Output(dx), f32.Output(dA),
                                                 f32.Output(dB), f32.Output(dMagnitude)));
        f32.WriteBack();
    }

    public DoraNormReport DoraWeightNormQuantized(QuantizedWeight w0, Tensor w0SquaredNorm, Tensor a, Tensor b, float scale, Tensor norm)
    {
        using var f32 = new Fp32Staging();
        LkQuantStats stats = LkQuantStats.Of(w0);
        LkDoraNormReport report;
        Check.Cpu(NativeCpu.lk_cpu_dora_weight_norm_4bit(w0.Shape[0], w0.Shape[1], a.Shape[0], (byte*)w0.CodesAddress, &stats,
                                                         f32.Input(w0SquaredNorm), f32.Input(a), f32.Input(b), scale,
                                                         f32.Output(norm), &report));
        f32.WriteBack();
        return new DoraNormReport(report.RecomputedRows, report.ZeroRows);
    }

    public void DoraScaleColumns(Tensor z, Tensor magnitude, Tensor norm, Tensor? bias, Tensor y)
    {
        using var f32 = new Fp32Staging();
        Check.Cpu(NativeCpu.lk_cpu_dora_scale_columns(z.Shape[0], z.Shape[1], f32.Input(z), f32.Input(magnitude), f32.Input(norm),
                                                      f32.Input(bias), f32.Output(y)));
        f32.WriteBack();
    }

    public void DoraScaleGrad(Tensor dy, Tensor z, Tensor magnitude, Tensor norm, Tensor? dMagnitude, Tensor? dz)
    {
        using var f32 = new Fp32Staging();
        Check.Cpu(NativeCpu.lk_cpu_dora_scale_grad(dy.Shape[0], dy.Shape[1], f32.Input(dy), f32.Input(z), f32.Input(magnitude),
                                                   f32.Input(norm), f32.Output(dMagnitude), f32.Output(dz)));
        f32.WriteBack();
    }

    public void DoraDropout(Tensor x, float p, ulong seed, Tensor y)
    {
        using var f32 = new Fp32Staging();
        Check.Cpu(NativeCpu.lk_cpu_dora_dropout(x.ElementCount, f32.Input(x), p, seed, f32.Output(y)));
        f32.WriteBack();
    }

    public void DoraMerge(Tensor w, Tensor a, Tensor b, Tensor magnitude, Tensor norm, float scale, bool unmerge)
    {
        using var f32 = new Fp32Staging();
        Check.Cpu(NativeCpu.lk_cpu_dora_merge(w.Shape[0], w.Shape[1], a.Shape[0], f32.InputOutput(w), f32.Input(a), f32.Input(b),
                                              f32.Input(magnitude), f32.Input(norm), scale, unmerge ? 1 : 0));
        f32.WriteBack();
    }
}
