// IDoraKernels on a GPU device: launch code for kernels/dora.cu, composed with lora.cu's GEMMs as the kernel file's comment
// describes: the weight norm from ‖W0‖², P = W0 Aᵀ, G = A Aᵀ and H = |A||A|ᵀ in double
// (lk_dora_project; QDoRA's P by lk_nf4_project_f32), the certified expansion (lk_dora_weight_norm),
// whose count of uncertified rows is read back, and the direct recomputation of those rows
// (lk_dora_row_norm; for QDoRA on a dequantized temporary made only then); the forward as the LoRA
// forward without bias followed by the column scale; the backward as the magnitude gradient and
// dz = dy ⊙ g followed by the LoRA backward on dz; merge and unmerge in double (lk_dora_merge).
// tests/native/parity/dora_parity_test.cpp launches the kernels with the same geometry.
using System.Runtime.InteropServices;
using LoraKernels.Backends.Gpu;
using LoraKernels.Families.Lora;
using LoraKernels.Families.Qlora;
using LoraKernels.Runtime;

namespace LoraKernels.Families.Dora;

internal sealed class GpuDoraKernels(GpuLaunch gpu) : IDoraKernels
{
    private readonly GpuLoraKernels _lora = new(gpu);
    private readonly GpuQloraKernels _qlora = new(gpu);

    internal const uint DoraThreads = 256;      // kDoraThreads
    internal const int DoraRowsPerSqnormBlock = 8;  // kDoraWarps: one warp per W0 row
    internal const int DoraGradColumns = 32;    // kGradColumns: magnitude_grad columns per block
    internal const int DoraProjectRowsPerBlock = 8;  // kDoraWarps (kProjectWarps in nf4.cu): one warp per row

    public void RowSquaredNorm(Tensor w0, Tensor sqnorm)
    {
        int outFeatures = checked((int)w0.Shape[0]), inFeatures = checked((int)w0.Shape[1]);
        using var args = new KernelArguments().Pointer(w0).Pointer(sqnorm).Int(outFeatures).Int(inFeatures);
        gpu.Launch(GpuLaunch.KernelFor(w0.DType, "lk_dora_row_sqnorm_f32", "lk_dora_row_sqnorm_bf16"),
                       new Dim3((uint)GpuLaunch.CeilDiv(outFeatures, DoraRowsPerSqnormBlock)), new Dim3(DoraThreads), 0, args);
    }

    public DoraNormReport WeightNorm(Tensor w0, Tensor w0SquaredNorm, Tensor a, Tensor b, float scale, Tensor norm)
    {
        int outFeatures = checked((int)w0.Shape[0]), inFeatures = checked((int)w0.Shape[1]);
        int rank = checked((int)a.Shape[0]);
        using DeviceBuffer p = gpu.Device.Allocate((long)outFeatures * rank * sizeof(double));
        LaunchDoraProject(w0.DType, w0, a, p, outFeatures, inFeatures, rank, absolute: false);
        return DoraNormFromProjection(w0.DType, p, w0SquaredNorm, a, b, scale, norm, () => (w0, false));
    }

    public DoraNormReport WeightNormQuantized(QuantizedWeight w0, Tensor w0SquaredNorm, Tensor a, Tensor b, float scale, Tensor norm)
    {
        int outFeatures = checked((int)w0.Shape[0]), inFeatures = checked((int)w0.Shape[1]);
        int rank = checked((int)a.Shape[0]);
        using DeviceBuffer p = gpu.Device.Allocate((long)outFeatures * rank * sizeof(double));
        using (var args = GpuQloraKernels.StatsArguments(new KernelArguments().Pointer(w0.Codes), w0)
                   .Pointer(a).Pointer(p).Int(outFeatures).Int(inFeatures).Int(rank)
                   .Int(w0.BlockSize).Int((int)w0.QuantType))
            gpu.Launch("lk_nf4_project_f32", new Dim3((uint)GpuLaunch.CeilDiv(outFeatures, DoraProjectRowsPerBlock)), new Dim3(DoraThreads), 0, args);
        // Rows the expansion cannot certify are recomputed from deq(W) rows: dequantized for this call only.
        return DoraNormFromProjection(DType.F32, p, w0SquaredNorm, a, b, scale, norm, () =>
        {
            Tensor dense = Tensor.Empty(a.Device, DType.F32, outFeatures, inFeatures);
            try
            {
                _qlora.Dequantize(w0, dense);
                return (dense, true);
            }
            catch
            {
                dense.Dispose();
                throw;
            }
        });
    }

    /// <summary>lk_dora_project: P [rows, r] (double) = X Aᵀ, of absolute values when <paramref name="absolute"/>.</summary>
    private void LaunchDoraProject(DType dtype, Tensor x, Tensor a, DeviceBuffer p, int rows, int inFeatures, int rank, bool absolute)
    {
        using var args = new KernelArguments().Pointer(x).Pointer(a).Pointer(p).Int(rows).Int(inFeatures).Int(rank).Int(absolute ? 1 : 0);
        gpu.Launch(GpuLaunch.KernelFor(dtype, "lk_dora_project_f32", "lk_dora_project_bf16"), new Dim3((uint)GpuLaunch.CeilDiv(rows, DoraProjectRowsPerBlock)),
                       new Dim3(DoraThreads), 0, args);
    }

    /// <summary>
    /// G and H, the certified expansion over P, a read-back of the two counts (rows listed for the direct
    /// path, zero rows) and, when rows were listed, lk_dora_row_norm on them, reading the rows of
    /// <paramref name="source"/>'s tensor (disposed afterwards when it says it is owned).
    /// </summary>
    private DoraNormReport DoraNormFromProjection(DType dtype, DeviceBuffer p, Tensor w0SquaredNorm, Tensor a, Tensor b,
                                                  float scale, Tensor norm, Func<(Tensor Rows, bool Owned)> source)
    {
        int outFeatures = checked((int)b.Shape[0]), inFeatures = checked((int)a.Shape[1]), rank = checked((int)a.Shape[0]);
        using DeviceBuffer g = gpu.Device.Allocate((long)rank * rank * sizeof(double));
        using DeviceBuffer h = gpu.Device.Allocate((long)rank * rank * sizeof(double));
        using DeviceBuffer rows = gpu.Device.Allocate((long)outFeatures * sizeof(int));
        using DeviceBuffer counts = gpu.Device.Allocate(2 * sizeof(int));
        gpu.Device.Memset(counts, 0, 2 * sizeof(int), 0);
        LaunchDoraProject(dtype, a, a, g, rank, inFeatures, rank, absolute: false);
        LaunchDoraProject(dtype, a, a, h, rank, inFeatures, rank, absolute: true);
        using (var args = new KernelArguments()
                   .Pointer(w0SquaredNorm).Pointer(p).Pointer(g).Pointer(h).Pointer(b)
                   .Pointer(norm).Pointer(rows).Pointer(counts)
                   .Int(outFeatures).Int(inFeatures).Int(rank).Float(scale))
            gpu.Launch(GpuLaunch.KernelFor(dtype, "lk_dora_weight_norm_f32", "lk_dora_weight_norm_bf16"), new Dim3((uint)GpuLaunch.CeilDiv(outFeatures, DoraThreads)),
                           new Dim3(DoraThreads), 0, args);
        Span<int> count = stackalloc int[2];
        gpu.Device.Download(counts, 0, MemoryMarshal.AsBytes(count));
        if (count[0] > 0)
        {
            var (rowSource, owned) = source();
            try
            {
                using var args = new KernelArguments()
                    .Pointer(rowSource).Pointer(a).Pointer(b).Pointer(rows).Pointer(counts)
                    .Pointer(norm).Int(inFeatures).Int(rank).Float(scale);
                gpu.Launch(GpuLaunch.KernelFor(dtype, "lk_dora_row_norm_f32", "lk_dora_row_norm_bf16"), new Dim3((uint)count[0]),
                               new Dim3(DoraThreads), 0, args);
                gpu.Device.Download(counts, 0, MemoryMarshal.AsBytes(count));
            }
            finally
            {
                if (owned) rowSource.Dispose();
            }
        }
        return new DoraNormReport(count[0], count[1]);
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

    public void Merge(Tensor w, Tensor a, Tensor b, Tensor magnitude, Tensor norm, float scale, bool unmerge)
    {
        int outFeatures = checked((int)w.Shape[0]), inFeatures = checked((int)w.Shape[1]), rank = checked((int)a.Shape[0]);
        using var args = new KernelArguments()
            .Pointer(w).Pointer(a).Pointer(b).Pointer(magnitude).Pointer(norm)
            .Int(outFeatures).Int(inFeatures).Int(rank).Float(scale).Int(unmerge ? 1 : 0);
        gpu.LaunchElementwise(GpuLaunch.KernelFor(w.DType, "lk_dora_merge_f32", "lk_dora_merge_bf16"), (long)outFeatures * inFeatures, args);
    }
}
