// The LoRA forward as the vendor GEMM sequence (LoraForwardPath.VendorGemm): what PEFT's
// Linear.forward costs through PyTorch's cuBLAS calls, for the benchmarks' comparison and as a
// fallback. On a GPU device, IVendorMath (cuBLAS on CUDA, the CPU GEMM on the emulator's memory):
//   u  = x·Aᵀ                     GemmBf16 (C fp32) | Sgemm; with dropout the fused project kernel
//   y  = x·W0ᵀ                    GemmBf16 (C in x's dtype) | Sgemm
//   y += 1·biasᵀ                  a K = 1 product with a ones column (beta = 1), when there is a bias
//   y += scale·u'·Bᵀ              beta = 1; u' = u rounded to bf16 for BF16 (PEFT's bf16 adapter output)
// Numerics differ from the fused path by PEFT's roundings: a BF16 y is rounded after x·W0ᵀ and after
// the bias, and the adapter term sees a bf16 u. Bytes: W0 once, x twice, y read and written twice.
using LoraKernels.Backends.Gpu;
using LoraKernels.Ops;
using LoraKernels.Runtime;

namespace LoraKernels.Families.Lora;

internal sealed class VendorLoraForward(GpuLaunch gpu)
{
    /// <summary>The sequence on GPU device <paramref name="device"/> (created once per device; Ops.Lora refuses the CPU first).</summary>
    public static VendorLoraForward On(Device device) =>
        device.Kernels<VendorLoraForward>(static () => throw new InvalidOperationException("The vendor GEMM path runs on GPU devices."),
                                          static launch => new VendorLoraForward(launch));

    public void Forward(Tensor x, Tensor w0, Tensor? bias, Tensor a, Tensor b, float scale, float dropoutP, ulong seed,
                        Tensor y, Tensor u)
    {
        int inFeatures = checked((int)w0.Shape[1]), outFeatures = checked((int)w0.Shape[0]), rank = checked((int)a.Shape[0]);
        int tokens = checked((int)(x.ElementCount / inFeatures));
        bool bf16 = x.DType == DType.BF16;
        IVendorMath math = gpu.Device.VendorMath;
        using var leases = new BufferLeases();
        ulong xAddress = leases.Address(x), yAddress = leases.Address(y);

        void Product(bool transB, int k, float alpha, ulong left, ulong right, int ldRight, float beta, ulong output, int n, int ldOutput,
                     DType outputType)
        {
            if (bf16) math.GemmBf16(false, transB, tokens, n, k, alpha, left, k, right, ldRight, beta, output, ldOutput, outputType);
            else math.Sgemm(false, transB, tokens, n, k, alpha, left, k, right, ldRight, beta, output, ldOutput);
        }

        if (rank > 0)
        {
            if (dropoutP > 0f) LowRankLaunches.Project(gpu, x, a, u, tokens, inFeatures, rank, dropoutP, seed);
            else Product(true, inFeatures, 1f, xAddress, leases.Address(a), inFeatures, 0f, leases.Address(u), rank, rank, DType.F32);
        }
        Product(true, inFeatures, 1f, xAddress, leases.Address(w0), inFeatures, 0f, yAddress, outFeatures, outFeatures, x.DType);
        if (bias is not null)
        {
            using Tensor ones = Tensor.Empty(x.Device, x.DType, tokens);
            Elementwise.Fill(ones, 1f);
            Product(false, 1, 1f, leases.Address(ones), leases.Address(bias), outFeatures, 1f, yAddress, outFeatures, outFeatures, x.DType);
        }
        if (rank == 0) return;
        using Tensor? rounded = bf16 ? Elementwise.Cast(u, DType.BF16) : null;
        Product(true, rank, scale, leases.Address(rounded ?? u), leases.Address(b), rank, 1f, yAddress, outFeatures, outFeatures, x.DType);
    }
}
