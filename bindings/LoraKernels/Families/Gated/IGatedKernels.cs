using LoraKernels.Backends.Gpu;

namespace LoraKernels.Families.Gated;

/// <summary>
/// The gated-rank family's ops (kernels/gated.cu with kernels/lora.cu, native/cpu/gated*.cpp), checked
/// by <see cref="Ops.Gated"/>, <see cref="Ops.Routing"/> and the training steps before the call.
/// x, W0, bias, A, B, dy and their gradients share x's dtype; gates, u, h, routing tensors and every
/// training state are F32. A gate is [r] (per rank) or [M, r] (per token).
/// </summary>
internal interface IGatedKernels
{
    /// <summary>u = dropout(x) Aᵀ (F32 [M, r]); y = x W0ᵀ + bias + scale·(u ⊙ G) Bᵀ.</summary>
    void Forward(Tensor x, Tensor w0, Tensor? bias, Tensor a, Tensor b, Tensor gate, float scale, float dropoutP, ulong seed,
                 Tensor y, Tensor u);

    /// <summary>dx, dA, dB and the gate's gradient (native/include/lora_kernels_gated.h); null outputs are skipped.</summary>
    void Backward(Tensor x, Tensor w0, Tensor a, Tensor b, Tensor gate, Tensor u, Tensor dy, float scale, float dropoutP, ulong seed,
                  Tensor? dx, Tensor? dA, Tensor? dB, Tensor? dGate);

    /// <summary>w += scale·B·diag(g)·A in place, gate [r].</summary>
    void Merge(Tensor w, Tensor a, Tensor b, Tensor gate, float scale);

    /// <summary>h = dropout(x_m)·A[e] (F32 [M, k]); y = x W0ᵀ + bias + scale·Σ_t w·h·B[:, e], A [E, in], B [out, E].</summary>
    void TopKForward(Tensor x, Tensor w0, Tensor? bias, Tensor a, Tensor b, Tensor expert, Tensor weight, float scale,
                     float dropoutP, ulong seed, Tensor y, Tensor h);

    /// <summary>dx, dA [E, in], dB [out, E] and d(weight) [M, k]; null outputs are skipped.</summary>
    void TopKBackward(Tensor x, Tensor w0, Tensor a, Tensor b, Tensor expert, Tensor weight, Tensor h, Tensor dy, float scale,
                      float dropoutP, ulong seed, Tensor? dx, Tensor? dA, Tensor? dB, Tensor? dWeight);

    /// <summary>logits [M, E] (F32) = x·Wrᵀ, the router's linear map (Wr [E, in], x's dtype).</summary>
    void RouterForward(Tensor x, Tensor router, Tensor logits);

    /// <summary>dx = dlogits·Wr and dWr = dlogitsᵀ·x, each when non-null.</summary>
    void RouterBackward(Tensor x, Tensor router, Tensor dLogits, Tensor? dx, Tensor? dRouter);

    void Softmax(Tensor logits, Tensor probs);
    void SoftmaxBackward(Tensor probs, Tensor dProbs, Tensor dLogits);
    void RouteTopK(Tensor probs, int k, bool renormalize, Tensor expert, Tensor weight);
    void RouteTopKBackward(Tensor probs, Tensor expert, Tensor weight, Tensor dWeight, bool renormalize, Tensor dProbs);

    /// <summary>stats [2E]: slots routed to each expert, then each expert's probability sum over the tokens.</summary>
    void Balance(Tensor probs, Tensor expert, Tensor stats);
    void BalanceBackward(Tensor stats, float coefficient, Tensor dProbs);

    /// <summary>SoRA's proximal step on gate (F32) in place.</summary>
    void SoftThreshold(Tensor gate, float lambda);

    /// <summary>AdaLoRA's importance EMAs of one parameter: p (its dtype), grad, ipt, unc (F32, p's shape).</summary>
    void Sensitivity(Tensor p, Tensor grad, Tensor importance, Tensor uncertainty, float beta1, float beta2);

    /// <summary>score [r] of a layer's triplets from the EMAs of A [r, in], E [r] and B [out, r].</summary>
    void TripletScore(Tensor importanceA, Tensor uncertaintyA, Tensor importanceE, Tensor uncertaintyE, Tensor importanceB,
                      Tensor uncertaintyB, Tensor score);

    /// <summary>C = X Xᵀ (transpose false) or Xᵀ X (true), F32.</summary>
    void Gram(Tensor x, bool transpose, Tensor c);

    /// <summary>g = coefficient·(C − I)·X (transpose false) or coefficient·X·(C − I) (true), X's dtype.</summary>
    void OrthogonalityGradient(Tensor x, Tensor c, bool transpose, float coefficient, Tensor g);

    /// <summary>The implementation for <paramref name="device"/> (created once per device).</summary>
    static IGatedKernels On(Device device) =>
        device.Kernels<IGatedKernels>(static () => new CpuGatedKernels(), static gpu => new GpuGatedKernels(gpu));
}
