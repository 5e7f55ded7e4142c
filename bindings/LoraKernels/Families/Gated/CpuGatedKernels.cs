// The gated-rank family on the native CPU kernels (native/cpu/gated.cpp, gated_router.cpp,
// gated_training.cpp); the router's linear map is lk_cpu_sgemm. BF16 tensors go through CpuCall's
// fp32 staging as every CPU op's do.
using LoraKernels.Backends.Cpu;
using LoraKernels.Interop;

namespace LoraKernels.Families.Gated;

internal sealed unsafe class CpuGatedKernels : IGatedKernels
{
    public void Forward(Tensor x, Tensor w0, Tensor? bias, Tensor a, Tensor b, Tensor gate, float scale, float dropoutP, ulong seed,
                        Tensor y, Tensor u)
    {
        using var call = new CpuCall();
        long m = x.Shape[0], r = a.Shape[0];
        float* yPointer = call.Output(y);
        Check.Cpu(NativeCpu.lk_cpu_gated_forward(m, w0.Shape[1], w0.Shape[0], r, call.Input(x), call.Input(w0), call.Input(bias),
                                                 call.Input(a), call.Input(b), call.Input(gate), GateStride(gate, r), scale,
                                                 dropoutP, seed, yPointer, call.Output(u)));
        call.WriteBack();
    }

    public void Backward(Tensor x, Tensor w0, Tensor a, Tensor b, Tensor gate, Tensor u, Tensor dy, float scale, float dropoutP,
                         ulong seed, Tensor? dx, Tensor? dA, Tensor? dB, Tensor? dGate)
    {
        using var call = new CpuCall();
        long r = a.Shape[0];
        Check.Cpu(NativeCpu.lk_cpu_gated_backward(dy.Shape[0], w0.Shape[1], w0.Shape[0], r, call.Input(x), call.Input(w0),
                                                  call.Input(a), call.Input(b), call.Input(gate), GateStride(gate, r),
                                                  call.Input(u), call.Input(dy), scale, dropoutP, seed, call.Output(dx),
                                                  call.Output(dA), call.Output(dB), call.Output(dGate)));
        call.WriteBack();
    }

    public void Merge(Tensor w, Tensor a, Tensor b, Tensor gate, float scale)
    {
        using var call = new CpuCall();
        Check.Cpu(NativeCpu.lk_cpu_gated_merge(w.Shape[0], w.Shape[1], a.Shape[0], call.InputOutput(w), call.Input(a),
                                               call.Input(b), call.Input(gate), scale));
        call.WriteBack();
    }

    public void TopKForward(Tensor x, Tensor w0, Tensor? bias, Tensor a, Tensor b, Tensor expert, Tensor weight, float scale,
                            float dropoutP, ulong seed, Tensor y, Tensor h)
    {
        using var call = new CpuCall();
        float* yPointer = call.Output(y);
        Check.Cpu(NativeCpu.lk_cpu_gated_topk_forward(x.Shape[0], w0.Shape[1], w0.Shape[0], a.Shape[0], expert.Shape[1],
                                                      call.Input(x), call.Input(w0), call.Input(bias), call.Input(a),
                                                      call.Input(b), call.Input(expert), call.Input(weight), scale, dropoutP,
                                                      seed, yPointer, call.Output(h)));
        call.WriteBack();
    }

    public void TopKBackward(Tensor x, Tensor w0, Tensor a, Tensor b, Tensor expert, Tensor weight, Tensor h, Tensor dy,
                             float scale, float dropoutP, ulong seed, Tensor? dx, Tensor? dA, Tensor? dB, Tensor? dWeight)
    {
        using var call = new CpuCall();
        Check.Cpu(NativeCpu.lk_cpu_gated_topk_backward(dy.Shape[0], w0.Shape[1], w0.Shape[0], a.Shape[0], expert.Shape[1],
                                                       call.Input(x), call.Input(w0), call.Input(a), call.Input(b),
                                                       call.Input(expert), call.Input(weight), call.Input(h), call.Input(dy),
                                                       scale, dropoutP, seed, call.Output(dx), call.Output(dA), call.Output(dB),
                                                       call.Output(dWeight)));
        call.WriteBack();
    }

    public void RouterForward(Tensor x, Tensor router, Tensor logits)
    {
        using var call = new CpuCall();
        long m = x.Shape[0], inFeatures = x.Shape[1], experts = router.Shape[0];
        Check.Cpu(NativeCpu.lk_cpu_sgemm(0, 1, m, experts, inFeatures, 1f, call.Input(x), inFeatures, call.Input(router), inFeatures,
                                         0f, call.Output(logits), experts));
        call.WriteBack();
    }

    public void RouterBackward(Tensor x, Tensor router, Tensor dLogits, Tensor? dx, Tensor? dRouter)
    {
        using var call = new CpuCall();
        long m = x.Shape[0], inFeatures = x.Shape[1], experts = router.Shape[0];
        float* gradient = call.Input(dLogits);
        if (dx is not null)
            Check.Cpu(NativeCpu.lk_cpu_sgemm(0, 0, m, inFeatures, experts, 1f, gradient, experts, call.Input(router), inFeatures,
                                             0f, call.Output(dx), inFeatures));
        if (dRouter is not null)
            Check.Cpu(NativeCpu.lk_cpu_sgemm(1, 0, experts, inFeatures, m, 1f, gradient, experts, call.Input(x), inFeatures,
                                             0f, call.Output(dRouter), inFeatures));
        call.WriteBack();
    }

    public void Softmax(Tensor logits, Tensor probs)
    {
        using var call = new CpuCall();
        Check.Cpu(NativeCpu.lk_cpu_gated_softmax(logits.Shape[0], logits.Shape[1], call.Input(logits), call.Output(probs)));
    }

    public void SoftmaxBackward(Tensor probs, Tensor dProbs, Tensor dLogits)
    {
        using var call = new CpuCall();
        Check.Cpu(NativeCpu.lk_cpu_gated_softmax_backward(probs.Shape[0], probs.Shape[1], call.Input(probs), call.Input(dProbs),
                                                          call.Output(dLogits)));
    }

    public void RouteTopK(Tensor probs, int k, bool renormalize, Tensor expert, Tensor weight)
    {
        using var call = new CpuCall();
        Check.Cpu(NativeCpu.lk_cpu_gated_route_topk(probs.Shape[0], probs.Shape[1], k, call.Input(probs), renormalize ? 1 : 0,
                                                    call.Output(expert), call.Output(weight)));
    }

    public void RouteTopKBackward(Tensor probs, Tensor expert, Tensor weight, Tensor dWeight, bool renormalize, Tensor dProbs)
    {
        using var call = new CpuCall();
        Check.Cpu(NativeCpu.lk_cpu_gated_route_topk_backward(probs.Shape[0], probs.Shape[1], expert.Shape[1], call.Input(probs),
                                                             call.Input(expert), call.Input(weight), call.Input(dWeight),
                                                             renormalize ? 1 : 0, call.Output(dProbs)));
    }

    public void Balance(Tensor probs, Tensor expert, Tensor stats)
    {
        using var call = new CpuCall();
        Check.Cpu(NativeCpu.lk_cpu_gated_balance(probs.Shape[0], probs.Shape[1], expert.Shape[1], call.Input(probs),
                                                 call.Input(expert), call.Output(stats)));
    }

    public void BalanceBackward(Tensor stats, float coefficient, Tensor dProbs)
    {
        using var call = new CpuCall();
        Check.Cpu(NativeCpu.lk_cpu_gated_balance_backward(dProbs.Shape[0], dProbs.Shape[1], call.Input(stats), coefficient,
                                                          call.Output(dProbs)));
    }

    public void SoftThreshold(Tensor gate, float lambda)
    {
        using var call = new CpuCall();
        Check.Cpu(NativeCpu.lk_cpu_gated_soft_threshold(gate.ElementCount, call.InputOutput(gate), lambda));
    }

    public void Sensitivity(Tensor p, Tensor grad, Tensor importance, Tensor uncertainty, float beta1, float beta2)
    {
        using var call = new CpuCall();
        Check.Cpu(NativeCpu.lk_cpu_gated_sensitivity(p.ElementCount, call.Input(p), call.Input(grad), call.InputOutput(importance),
                                                     call.InputOutput(uncertainty), beta1, beta2));
    }

    public void TripletScore(Tensor importanceA, Tensor uncertaintyA, Tensor importanceE, Tensor uncertaintyE, Tensor importanceB,
                             Tensor uncertaintyB, Tensor score)
    {
        using var call = new CpuCall();
        Check.Cpu(NativeCpu.lk_cpu_gated_triplet_score(importanceA.Shape[0], importanceA.Shape[1], importanceB.Shape[0],
                                                       call.Input(importanceA), call.Input(uncertaintyA), call.Input(importanceE),
                                                       call.Input(uncertaintyE), call.Input(importanceB), call.Input(uncertaintyB),
                                                       call.Output(score)));
    }

    public void Gram(Tensor x, bool transpose, Tensor c)
    {
        using var call = new CpuCall();
        Check.Cpu(NativeCpu.lk_cpu_gated_gram(x.Shape[0], x.Shape[1], call.Input(x), transpose ? 1 : 0, call.Output(c)));
    }

    public void OrthogonalityGradient(Tensor x, Tensor c, bool transpose, float coefficient, Tensor g)
    {
        using var call = new CpuCall();
        Check.Cpu(NativeCpu.lk_cpu_gated_orth_grad(x.Shape[0], x.Shape[1], call.Input(x), call.Input(c), transpose ? 1 : 0,
                                                   coefficient, call.Output(g)));
        call.WriteBack();
    }

    /// <summary>0 for a per-rank gate [r], r for a per-token gate [M, r].</summary>
    private static long GateStride(Tensor gate, long r) => gate.Rank == 1 ? 0 : r;
}
