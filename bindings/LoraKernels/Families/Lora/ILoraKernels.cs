// The LoRA family's kernels: the fused forward, backward and merge of
//   y = x W0ᵀ + bias + scale·(dropout(x) Aᵀ) Bᵀ   (REFERENCE.md 1.5-1.6)
// on the CPU (native/cpu/lora.cpp) and on GPU devices (kernels/lora.cu, on CUDA or the emulator).
// Ops.Lora checks every argument before calling, so implementations assume valid, same-device
// tensors; u and du are F32, everything else has x's dtype.
using LoraKernels.Backends.Gpu;

namespace LoraKernels.Families.Lora;

internal interface ILoraKernels
{
    /// <summary>y = x W0ᵀ + bias + scale·u Bᵀ with u = dropout(x) Aᵀ written to <paramref name="u"/> (F32 [M, r]).</summary>
    void Forward(Tensor x, Tensor w0, Tensor? bias, Tensor a, Tensor b, float scale, float dropoutP, ulong seed, Tensor y, Tensor u);

    /// <summary>dx = dy W0 + dropout'(du A), dA = duᵀ dropout(x), dB = scale·dyᵀ u, du = scale·dy B; null outputs are skipped.</summary>
    void Backward(Tensor x, Tensor w0, Tensor a, Tensor b, Tensor u, Tensor dy, float scale, float dropoutP, ulong seed,
                  Tensor? dx, Tensor? dA, Tensor? dB);

    /// <summary>w += scale·B·A in place (unmerge passes -scale).</summary>
    void Merge(Tensor w, Tensor a, Tensor b, float scale);

    /// <summary>The implementation for <paramref name="device"/> (created once per device).</summary>
    static ILoraKernels On(Device device) =>
        device.Kernels<ILoraKernels>(static () => new CpuLoraKernels(), static gpu => new GpuLoraKernels(gpu));
}
