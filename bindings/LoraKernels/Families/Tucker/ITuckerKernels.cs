using LoraKernels.Backends.Gpu;

namespace LoraKernels.Families.Tucker;

/// <summary>
/// The shape of one strided batched product (native/include/lora_kernels_tucker.h): C_b = alpha·op(A_b)·op(B_b) +
/// beta·C_b for b &lt; Batch, or, when <see cref="Reduce"/>, C = alpha·Σ_b op(A_b)·op(B_b) + beta·C. op(A_b) is
/// [M, K] (stored [K, M] when <see cref="TransA"/>), op(B_b) [K, N] (stored [N, K] when <see cref="TransB"/>),
/// C_b [M, N]; X_b starts StrideX elements after X_(b-1) (0: shared by every b).
/// </summary>
internal readonly record struct BatchedProduct(long Batch, long M, long N, long K, bool TransA, long StrideA, bool TransB,
                                               long StrideB, long StrideC, bool Reduce = false)
{
    /// <summary>The product of one shared A [M, K] (or stored [K, M]) with each B_b, into each C_b.</summary>
    public static BatchedProduct SharedLeft(long batch, long m, long n, long k, bool transA, bool transB = false) =>
        new(batch, m, n, k, transA, 0, transB, k * n, m * n);

    /// <summary>One plain product C [M, N] = op(A)·op(B).</summary>
    public static BatchedProduct Single(long m, long n, long k, bool transA = false, bool transB = false) =>
        new(1, m, n, k, transA, 0, transB, 0, 0);
}

/// <summary>
/// The Tucker family's kernels (kernels/tucker.cu, native/cpu/tucker.cpp): the strided batched product every mode
/// product runs as, also used by the Kronecker and convolution adapters for their factor and 1×1 products. The
/// caller (<see cref="Ops.Tucker"/>'s internal Product) has checked that every batch element lies inside its tensor.
/// </summary>
internal interface ITuckerKernels
{
    /// <summary>c (=)+= the batched product of a and b (one dtype); see <see cref="BatchedProduct"/>.</summary>
    void BatchedMatmul(in BatchedProduct p, Tensor a, Tensor b, float alpha, float beta, Tensor c);

    /// <summary>The implementation for <paramref name="device"/> (created once per device).</summary>
    static ITuckerKernels On(Device device) =>
        device.Kernels<ITuckerKernels>(static () => new CpuTuckerKernels(), static gpu => new GpuTuckerKernels(gpu));
}
