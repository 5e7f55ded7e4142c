// Launch code for kernels/dora.cu, composed with lora.cu's GEMMs as the kernel file's comment
// describes: the weight norm from ‖W0‖², P = W0 Aᵀ and G = A Aᵀ (lk_lora_project run on W0 and on
// A), the forward as the LoRA forward without bias followed by the column scale, the backward as
// the magnitude gradient and dz = dy ⊙ g followed by the LoRA backward on dz.
// tests/native/parity/dora_parity_test.cpp launches the kernels with the same geometry.
using LoraKernels.Backends.Gpu;
using LoraKernels.Families.Lora;
using LoraKernels.Runtime;

namespace LoraKernels.Families.Dora;

internal sealed class GpuDoraKernels(GpuLaunch gpu) : IDoraKernels
{
    private readonly GpuLoraKernels _lora = new(gpu);

    internal const uint DoraThreads = 256;      // kDoraThreads
    internal const int DoraRowsPerSqnormBlock = 8;  // kDoraWarps: one warp per W0 row
    internal const int DoraGradColumns = 32;    // kGradColumns: magnitude_grad columns per block

    public void RowSquaredNorm(Tensor w0, Tensor sqnorm)
    {
        int outFeatures = checked((int)w0.Shape[0]), inFeatures = checked((int)w0.Shape[1]);
        using var args = new KernelArguments().Pointer(w0).Pointer(sqnorm).Int(outFeatures).Int(inFeatures);
        gpu.Launch(GpuLaunch.KernelFor(w0.DType, "lk_dora_row_sqnorm_f32", "lk_dora_row_sqnorm_bf16"),
                       new Dim3((uint)GpuLaunch.CeilDiv(outFeatures, DoraRowsPerSqnormBlock)), new Dim3(DoraThreads), 0, args);
    }

    public void WeightNorm(Tensor w0, Tensor w0SquaredNorm, Tensor a, Tensor b, float scale, Tensor norm)
    {
        int outFeatures = checked((int)w0.Shape[0]), inFeatures = checked((int)w0.Shape[1]);
        int rank = checked((int)a.Shape[0]);
        DType kernelDType = w0.DType;
        using Tensor p = Tensor.Empty(w0.Device, DType.F32, outFeatures, rank);
        using Tensor g = Tensor.Empty(w0.Device, DType.F32, rank, rank);
        // lk_lora_project computes u = x Aᵀ; with x := W0 it is P = W0 Aᵀ, with x := A it is G = A Aᵀ.
        using (var args = new KernelArguments()
                   .Pointer(w0).Pointer(a).Pointer(p)
                   .Int(outFeatures).Int(inFeatures).Int(rank).Float(0f).ULong(0))
            gpu.Launch(GpuLaunch.KernelFor(kernelDType, "lk_lora_project_f32", "lk_lora_project_bf16"), GpuLaunch.TileGrid(outFeatures, rank), new Dim3(GpuLaunch.TileThreads), 0, args);
        using (var args = new KernelArguments()
                   .Pointer(a).Pointer(a).Pointer(g)
                   .Int(rank).Int(inFeatures).Int(rank).Float(0f).ULong(0))
            gpu.Launch(GpuLaunch.KernelFor(kernelDType, "lk_lora_project_f32", "lk_lora_project_bf16"), GpuLaunch.TileGrid(rank, rank), new Dim3(GpuLaunch.TileThreads), 0, args);
        using var normArgs = new KernelArguments()
            .Pointer(w0SquaredNorm).Pointer(p).Pointer(g).Pointer(b).Pointer(norm)
            .Int(outFeatures).Int(rank).Float(scale);
        gpu.Launch(GpuLaunch.KernelFor(kernelDType, "lk_dora_weight_norm_f32", "lk_dora_weight_norm_bf16"), new Dim3((uint)GpuLaunch.CeilDiv(outFeatures, DoraThreads)),
                       new Dim3(DoraThreads), 0, normArgs);
    }

    public void Forward(Tensor x, Tensor w0, Tensor? bias, Tensor a, Tensor b, float scale, Tensor magnitude, Tensor norm,
                            Tensor y, Tensor u, Tensor? z)
    {
        // z = x W0ᵀ + scale·u Bᵀ (into y itself when z is not kept), then y = g ⊙ z + bias in place or from z.
        Tensor preScale = z ?? y;
        _lora.Forward(x, w0, null, a, b, scale, 0f, 0, preScale, u);
        int outFeatures = checked((int)w0.Shape[0]);
        int tokens = checked((int)(x.ElementCount / w0.Shape[1]));
        using var args = new KernelArguments()
            .Pointer(preScale).Pointer(magnitude).Pointer(norm).Pointer(bias)
            .Pointer(y).Int(tokens).Int(outFeatures);
        gpu.LaunchElementwise(GpuLaunch.KernelFor(x.DType, "lk_dora_scale_columns_f32", "lk_dora_scale_columns_bf16"), (long)tokens * outFeatures, args);
    }

    public void Backward(Tensor x, Tensor w0, Tensor a, Tensor b, Tensor u, Tensor z, Tensor dy, float scale,
                             Tensor magnitude, Tensor norm, Tensor? dx, Tensor? dA, Tensor? dB, Tensor? dMagnitude)
    {
        int outFeatures = checked((int)w0.Shape[0]);
        int tokens = checked((int)(x.ElementCount / w0.Shape[1]));
        DType kernelDType = x.DType;
        if (dMagnitude is not null)
        {
            using var args = new KernelArguments()
                .Pointer(dy).Pointer(z).Pointer(norm).Pointer(dMagnitude)
                .Int(tokens).Int(outFeatures);
            gpu.Launch(GpuLaunch.KernelFor(kernelDType, "lk_dora_magnitude_grad_f32", "lk_dora_magnitude_grad_bf16"), new Dim3((uint)GpuLaunch.CeilDiv(outFeatures, DoraGradColumns)),
                           new Dim3(DoraThreads), 0, args);
        }
        if (dx is null && dA is null && dB is null) return;
        using Tensor dz = Tensor.Empty(x.Device, x.DType, tokens, outFeatures);
        using (var args = new KernelArguments()
                   .Pointer(dy).Pointer(magnitude).Pointer(norm).Pointer(dz)
                   .Int(tokens).Int(outFeatures))
            gpu.LaunchElementwise(GpuLaunch.KernelFor(kernelDType, "lk_dora_scale_grad_f32", "lk_dora_scale_grad_bf16"), (long)tokens * outFeatures, args);
        _lora.Backward(x, w0, a, b, u, dz, scale, 0f, 0, dx, dA, dB);
    }

    public void WeightNormTransposed(Tensor w0SquaredNorm, Tensor pt, Tensor a, Tensor b, float scale, Tensor norm)
    {
        int outFeatures = checked((int)b.Shape[0]), inFeatures = checked((int)a.Shape[1]);
        int rank = checked((int)a.Shape[0]);
        using Tensor g = Tensor.Empty(a.Device, DType.F32, rank, rank);
        using (var args = new KernelArguments()
                   .Pointer(a).Pointer(a).Pointer(g)
                   .Int(rank).Int(inFeatures).Int(rank).Float(0f).ULong(0))
            gpu.Launch("lk_lora_project_f32", GpuLaunch.TileGrid(rank, rank), new Dim3(GpuLaunch.TileThreads), 0, args);
        using var normArgs = new KernelArguments()
            .Pointer(w0SquaredNorm).Pointer(pt).Pointer(g).Pointer(b).Pointer(norm)
            .Int(outFeatures).Int(rank).Float(scale);
        gpu.Launch("lk_dora_weight_norm_pt_f32", new Dim3((uint)GpuLaunch.CeilDiv(outFeatures, DoraThreads)),
                       new Dim3(DoraThreads), 0, normArgs);
    }

    public void ScaleColumns(Tensor z, Tensor magnitude, Tensor norm, Tensor? bias, Tensor y)
    {
        int tokens = checked((int)z.Shape[0]), outFeatures = checked((int)z.Shape[1]);
        using var args = new KernelArguments()
            .Pointer(z).Pointer(magnitude).Pointer(norm).Pointer(bias)
            .Pointer(y).Int(tokens).Int(outFeatures);
        gpu.LaunchElementwise(GpuLaunch.KernelFor(z.DType, "lk_dora_scale_columns_f32", "lk_dora_scale_columns_bf16"), (long)tokens * outFeatures, args);
    }

    public void ScaleGrad(Tensor dy, Tensor z, Tensor magnitude, Tensor norm, Tensor? dMagnitude, Tensor? dz)
    {
        int tokens = checked((int)dy.Shape[0]), outFeatures = checked((int)dy.Shape[1]);
        DType kernelDType = dy.DType;
        if (dMagnitude is not null)
        {
            using var args = new KernelArguments()
                .Pointer(dy).Pointer(z).Pointer(norm).Pointer(dMagnitude)
                .Int(tokens).Int(outFeatures);
            gpu.Launch(GpuLaunch.KernelFor(kernelDType, "lk_dora_magnitude_grad_f32", "lk_dora_magnitude_grad_bf16"), new Dim3((uint)GpuLaunch.CeilDiv(outFeatures, DoraGradColumns)),
                           new Dim3(DoraThreads), 0, args);
        }
        if (dz is not null)
        {
            using var args = new KernelArguments()
                .Pointer(dy).Pointer(magnitude).Pointer(norm).Pointer(dz)
                .Int(tokens).Int(outFeatures);
            gpu.LaunchElementwise(GpuLaunch.KernelFor(kernelDType, "lk_dora_scale_grad_f32", "lk_dora_scale_grad_bf16"), (long)tokens * outFeatures, args);
        }
    }

    public void Dropout(Tensor x, float p, ulong seed, Tensor y)
    {
        int n = checked((int)x.ElementCount);
        using var args = new KernelArguments().Pointer(x).Pointer(y).Int(n).Float(p).ULong(seed);
        gpu.LaunchElementwise("lk_dora_dropout_f32", n, args);
    }

    public void ScaleRows(Tensor w, Tensor magnitude, Tensor norm, bool invert)
    {
        int outFeatures = checked((int)w.Shape[0]), inFeatures = checked((int)w.Shape[1]);
        using var args = new KernelArguments()
            .Pointer(w).Pointer(magnitude).Pointer(norm)
            .Int(outFeatures).Int(inFeatures).Int(invert ? 1 : 0);
        gpu.LaunchElementwise(GpuLaunch.KernelFor(w.DType, "lk_dora_scale_rows_f32", "lk_dora_scale_rows_bf16"), (long)outFeatures * inFeatures, args);
    }
}
