// libloraknl_cpu's gated-rank exports (native/include/lora_kernels_gated.h).
using System.Runtime.InteropServices;

namespace LoraKernels.Interop;

internal static unsafe partial class NativeCpu
{
    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_gated_forward(long m, long inFeatures, long outFeatures, long r, float* x, float* w0,
                                                   float* bias, float* a, float* b, float* gate, long gateStride, float scale,
                                                   float dropoutP, ulong seed, float* y, float* u);

    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_gated_backward(long m, long inFeatures, long outFeatures, long r, float* x, float* w0,
                                                    float* a, float* b, float* gate, long gateStride, float* u, float* dy,
                                                    float scale, float dropoutP, ulong seed, float* dx, float* dA, float* dB,
                                                    float* dGate);

    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_gated_merge(long outFeatures, long inFeatures, long r, float* w, float* a, float* b,
                                                 float* gate, float scale);

    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_gated_topk_forward(long m, long inFeatures, long outFeatures, long experts, long k,
                                                        float* x, float* w0, float* bias, float* a, float* b, float* expert,
                                                        float* weight, float scale, float dropoutP, ulong seed, float* y,
                                                        float* h);

    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_gated_topk_backward(long m, long inFeatures, long outFeatures, long experts, long k,
                                                         float* x, float* w0, float* a, float* b, float* expert,
                                                         float* weight, float* h, float* dy, float scale, float dropoutP,
                                                         ulong seed, float* dx, float* dA, float* dB, float* dWeight);

    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_gated_softmax(long m, long experts, float* logits, float* probs);

    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_gated_softmax_backward(long m, long experts, float* probs, float* dProbs, float* dLogits);

    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_gated_route_topk(long m, long experts, long k, float* probs, int renormalize,
                                                      float* expert, float* weight);

    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_gated_route_topk_backward(long m, long experts, long k, float* probs, float* expert,
                                                               float* weight, float* dWeight, int renormalize, float* dProbs);

    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_gated_balance(long m, long experts, long k, float* probs, float* expert, float* stats);

    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_gated_balance_backward(long m, long experts, float* stats, float coefficient, float* dProbs);

    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_gated_soft_threshold(long n, float* gate, float lambda);

    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_gated_sensitivity(long n, float* p, float* grad, float* ipt, float* unc, float beta1,
                                                       float beta2);

    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_gated_triplet_score(long r, long inFeatures, long outFeatures, float* iptA, float* uncA,
                                                         float* iptE, float* uncE, float* iptB, float* uncB, float* score);

    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_gated_gram(long rows, long columns, float* x, int transpose, float* c);

    [LibraryImport(LibraryNames.Cpu)]
    public static partial int lk_cpu_gated_orth_grad(long rows, long columns, float* x, float* c, int transpose, float coefficient,
                                                     float* g);
}
