// The Tucker family's batched product on the native CPU kernels (native/cpu/tucker.cpp over the packed GEMM
// engine); BF16 tensors go through CpuCall's fp32 staging.
using LoraKernels.Backends.Cpu;
using LoraKernels.Interop;

namespace LoraKernels.Families.Tucker;

internal sealed unsafe class CpuTuckerKernels : ITuckerKernels
{
    public void BatchedMatmul(in BatchedProduct p, Tensor a, Tensor b, float alpha, float beta, Tensor c)
    {
        using var call = new CpuCall();
        float* cPointer = beta == 0f ? call.Output(c) : call.InputOutput(c);
        Check.Cpu(NativeCpu.lk_cpu_tucker_batched_matmul(p.Batch, p.M, p.N, p.K, p.TransA ? 1 : 0, call.Input(a), p.StrideA,
                                                         p.TransB ? 1 : 0, call.Input(b), p.StrideB, alpha, beta, cPointer,
                                                         p.StrideC, p.Reduce ? 1 : 0));
        call.WriteBack();
    }
}
