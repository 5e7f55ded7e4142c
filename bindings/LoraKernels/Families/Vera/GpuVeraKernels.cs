// Launch code for VeRA (kernels/vera.cu on top of kernels/lora.cu): VeRA is LoRA with scale 1 and
// B' = diag(λ_b)·B_l·diag(λ_d) (the strategy comment of kernels/vera.cu says why), so each op
// folds B' (and copies A_l dense when its row stride max_in differs from in) into temporaries of
// the call and runs the LoRA kernels with their own geometry. tests/native/parity/vera_parity_test.cpp
// launches the same sequence.
using LoraKernels.Backends.Gpu;
using LoraKernels.Families.Lora;
using LoraKernels.Runtime;

namespace LoraKernels.Families.Vera;

internal sealed class GpuVeraKernels(GpuLaunch gpu) : IVeraKernels
{
    private readonly GpuLoraKernels _lora = new(gpu);

    // kernels/vera.cu: kVeraThreads, and the warps per block of grad_lambda_b (one row each).
    internal const uint VeraThreads = 256;
    internal const int VeraRowsPerBlock = 8;
    internal const int VeraColumnsPerBlock = 32;

    public void Forward(Tensor x, Tensor w0, Tensor? bias, Tensor veraA, Tensor veraB, Tensor lambdaD, Tensor lambdaB,
                            float dropoutP, ulong seed, Tensor y, Tensor u)
    {
        var (aDense, bFolded) = VeraFold(w0, veraA, veraB, lambdaD, lambdaB);
        using (aDense)
        using (bFolded)
            _lora.Forward(x, w0, bias, aDense ?? veraA, bFolded, 1f, dropoutP, seed, y, u);
    }

    public void Backward(Tensor w0, Tensor veraA, Tensor veraB, Tensor lambdaD, Tensor lambdaB, Tensor u, Tensor dy,
                             float dropoutP, ulong seed, Tensor? dx, Tensor? dLambdaD, Tensor? dLambdaB)
    {
        int inFeatures = checked((int)w0.Shape[1]), outFeatures = checked((int)w0.Shape[0]);
        int rank = checked((int)veraA.Shape[0]);
        int tokens = checked((int)(dy.ElementCount / outFeatures));
        DType kernelDType = dy.DType;
        if (dx is not null)
        {
            var (aDense, bFolded) = VeraFold(w0, veraA, veraB, lambdaD, lambdaB);
            using (aDense)
            using (bFolded)
            using (Tensor du = Tensor.Empty(dy.Device, DType.F32, tokens, rank))
            {
                // du = dy B' = (dy ⊙ λ_b) B_l ⊙ λ_d, then dx = dy W0 + dropout'(du A_l) in one pass.
                using (var args = new KernelArguments()
                           .Pointer(dy).Pointer(bFolded).Pointer(du)
                           .Int(tokens).Int(outFeatures).Int(rank).Float(1f))
                    gpu.Launch(GpuLaunch.KernelFor(kernelDType, "lk_lora_grad_u_f32", "lk_lora_grad_u_bf16"), GpuLaunch.TileGrid(tokens, rank), new Dim3(GpuLaunch.TileThreads), 0, args);
                using (var args = new KernelArguments()
                           .Pointer(dy).Pointer(w0).Pointer(du).Pointer(aDense ?? veraA)
                           .Pointer(dx)
                           .Int(tokens).Int(inFeatures).Int(outFeatures).Int(rank).Float(dropoutP).ULong(seed))
                    gpu.Launch(GpuLaunch.KernelFor(kernelDType, "lk_lora_grad_x_f32", "lk_lora_grad_x_bf16"), GpuLaunch.TileGrid(tokens, inFeatures), new Dim3(GpuLaunch.TileThreads), 0,
                                   args);
            }
        }
        if (dLambdaD is null && dLambdaB is null) return;

        // G = dyᵀ u [out, r]; dλ_b and dλ_d are its rows and columns weighted by B_l and the other vector.
        using Tensor g = Tensor.Empty(dy.Device, dy.DType, outFeatures, rank);
        using (var args = new KernelArguments()
                   .Pointer(dy).Pointer(u).Pointer(g)
                   .Int(tokens).Int(outFeatures).Int(rank).Float(1f))
            gpu.Launch(GpuLaunch.KernelFor(kernelDType, "lk_lora_grad_b_f32", "lk_lora_grad_b_bf16"), GpuLaunch.TileGrid(outFeatures, rank), new Dim3(GpuLaunch.TileThreads), 0, args);
        if (dLambdaB is not null)
        {
            using var args = new KernelArguments()
                .Pointer(g).Pointer(veraB).Pointer(lambdaD).Pointer(dLambdaB)
                .Int(outFeatures).Int(rank);
            gpu.Launch(GpuLaunch.KernelFor(kernelDType, "lk_vera_grad_lambda_b_f32", "lk_vera_grad_lambda_b_bf16"), new Dim3((uint)GpuLaunch.CeilDiv(outFeatures, VeraRowsPerBlock)),
                           new Dim3(VeraThreads), 0, args);
        }
        if (dLambdaD is not null)
        {
            using var args = new KernelArguments()
                .Pointer(g).Pointer(veraB).Pointer(lambdaB).Pointer(dLambdaD)
                .Int(outFeatures).Int(rank);
            gpu.Launch(GpuLaunch.KernelFor(kernelDType, "lk_vera_grad_lambda_d_f32", "lk_vera_grad_lambda_d_bf16"), new Dim3((uint)GpuLaunch.CeilDiv(rank, VeraColumnsPerBlock)),
                           new Dim3(VeraThreads), 0, args);
        }
    }

    public void Merge(Tensor w, Tensor veraA, Tensor veraB, Tensor lambdaD, Tensor lambdaB, float scale)
    {
        var (aDense, bFolded) = VeraFold(w, veraA, veraB, lambdaD, lambdaB);
        using (aDense)
        using (bFolded)
            _lora.Merge(w, aDense ?? veraA, bFolded, scale);
    }

    /// <summary>
    /// B' = diag(λ_b)·B_l·diag(λ_d) [out, r] and, when in &lt; max_in, A_l copied dense [r, in]
    /// (null when vera_A's rows are already A_l's, so the LoRA kernels read it in place).
    /// </summary>
    private (Tensor? ADense, Tensor BFolded) VeraFold(Tensor w0, Tensor veraA, Tensor veraB, Tensor lambdaD, Tensor lambdaB)
    {
        int inFeatures = checked((int)w0.Shape[1]), outFeatures = checked((int)w0.Shape[0]);
        int rank = checked((int)veraA.Shape[0]), lda = checked((int)veraA.Shape[1]);
        Tensor? aDense = null;
        Tensor? bFolded = null;
        try
        {
            if (lda != inFeatures) aDense = Tensor.Empty(w0.Device, w0.DType, rank, inFeatures);
            bFolded = Tensor.Empty(w0.Device, w0.DType, outFeatures, rank);
            long total = (aDense is null ? 0 : (long)rank * inFeatures) + (long)outFeatures * rank;
            using var args = new KernelArguments()
                .Pointer(veraA).Int(lda).Pointer(veraB).Pointer(lambdaD).Pointer(lambdaB)
                .Pointer(aDense).Pointer(bFolded)
                .Int(inFeatures).Int(outFeatures).Int(rank);
            gpu.Launch(GpuLaunch.KernelFor(w0.DType, "lk_vera_fold_f32", "lk_vera_fold_bf16"), new Dim3(GpuLaunch.ElementwiseGrid(total, gpu.Device.MultiprocessorCount)),
                           new Dim3(VeraThreads), 0, args);
            return (aDense, bFolded);
        }
        catch
        {
            aDense?.Dispose();
            bFolded?.Dispose();
            throw;
        }
    }
}
