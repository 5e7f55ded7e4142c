namespace LoraKernels.Ops;

/// <summary>How <see cref="Lora.Forward"/> computes y on a GPU device.</summary>
public enum LoraForwardPath
{
    /// <summary>This library's fused kernels: one decode launch for few tokens, else project u and one tiled
    /// product whose reduction is [scale·u | x]·[B | W0]ᵀ (on tensor cores for BF16 on sm_80+).</summary>
    Fused,

    /// <summary>
    /// The vendor GEMM sequence PEFT runs through PyTorch: cuBLAS (<c>cublasGemmEx</c>, bf16 inputs, fp32
    /// compute; SGEMM for F32) for u = x·Aᵀ, y = x·W0ᵀ, y += 1·biasᵀ and y += scale·u·Bᵀ with beta = 1,
    /// u rounded to the activations' dtype for the last product as PEFT's bf16 adapters do. A baseline to
    /// measure the fused kernels against, and a fallback. Dropout, which cuBLAS cannot mask, takes u from
    /// the fused project kernel. GPU devices only (the emulator stands in the CPU GEMM for cuBLAS).
    /// </summary>
    VendorGemm,
}
