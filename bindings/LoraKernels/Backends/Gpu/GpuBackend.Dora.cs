// Launch code for kernels/dora.cu, composed with lora.cu's GEMMs as the kernel file's comment
// describes: the weight norm from ‖W0‖², P = W0 Aᵀ, G = A Aᵀ and H = |A||A|ᵀ in double
// (lk_dora_project; QDoRA's P by lk_nf4_project_f32), the certified expansion (lk_dora_weight_norm),
// whose count of uncertified rows is read back, and the direct recomputation of those rows
// (lk_dora_row_norm; for QDoRA on a dequantized temporary made only then); the forward as the LoRA
// forward without bias followed by the column scale; the backward as the magnitude gradient and
// dz = dy ⊙ g followed by the LoRA backward on dz; merge and unmerge in double (lk_dora_merge).
// tests/native/parity/dora_parity_test.cpp launches the kernels with the same geometry.
using System.Runtime.InteropServices;
using LoraKernels.Runtime;

namespace LoraKernels.Backends.Gpu;

internal sealed partial class GpuBackend
{
    internal const uint DoraThreads = 256;      // kDoraThreads
    internal const int DoraRowsPerSqnormBlock = 8;  // kDoraWarps: one warp per W0 row
    internal const int DoraGradColumns = 32;    // kGradColumns: magnitude_grad columns per block
    internal const int DoraProjectRowsPerBlock = 8;  // kDoraWarps (kProjectWarps in nf4.cu): one warp per row

    public void DoraRowSquaredNorm(Tensor w0, Tensor sqnorm)
    {
        int outFeatures = checked((int)w0.Shape[0]), inFeatures = checked((int)w0.Shape[1]);
        using var args = new KernelArguments().Pointer(w0.Address).Pointer(sqnorm.Address).Int(outFeatures).Int(inFeatures);
        _device.Launch(KernelFor(w0.DType, "lk_dora_row_sqnorm_f32", "lk_dora_row_sqnorm_bf16"),
                       new Dim3((uint)CeilDiv(outFeatures, DoraRowsPerSqnormBlock)), new Dim3(DoraThreads), 0, args);
    }

    public DoraNormReport DoraWeightNorm(Tensor w0, Tensor w0SquaredNorm, Tensor a, Tensor b, float scale, Tensor norm)
    {
        int outFeatures = checked((int)w0.Shape[0]), inFeatures = checked((int)w0.Shape[1]);
        int rank = checked((int)a.Shape[0]);
        using DeviceBuffer p = _device.Allocate((long)outFeatures * rank * sizeof(double));
        LaunchDoraProject(w0.DType, w0.Address, a.Address, p.Address, outFeatures, inFeatures, rank, absolute: false);
        return DoraNormFromProjection(w0.DType, p, w0SquaredNorm, a, b, scale, norm, () => (w0, false));
    }

    public DoraNormReport DoraWeightNormQuantized(QuantizedWeight w0, Tensor w0SquaredNorm, Tensor a, Tensor b, float scale, Tensor norm)
    {
        int outFeatures = checked((int)w0.Shape[0]), inFeatures = checked((int)w0.Shape[1]);
        int rank = checked((int)a.Shape[0]);
        using DeviceBuffer p = _device.Allocate((long)outFeatures * rank * sizeof(double));
        using (var args = StatsArguments(new KernelArguments().Pointer(w0.CodesAddress), w0)
                   .Pointer(a.Address).Pointer(p.Address).Int(outFeatures).Int(inFeatures).Int(rank)
                   .Int(w0.BlockSize).Int((int)w0.QuantType))
            _device.Launch("lk_nf4_project_f32", new Dim3((uint)CeilDiv(outFeatures, DoraProjectRowsPerBlock)), new Dim3(DoraThreads), 0, args);
        // Rows the expansion cannot certify are recomputed from deq(W) rows: dequantized for this call only.
        return DoraNormFromProjection(DType.F32, p, w0SquaredNorm, a, b, scale, norm, () =>
        {
            Tensor dense = Tensor.Empty(a.Device, DType.F32, outFeatures, inFeatures);
            try
            {
                Dequantize4Bit(w0, dense);
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
    private void LaunchDoraProject(DType dtype, ulong x, ulong a, ulong p, int rows, int inFeatures, int rank, bool absolute)
    {
        using var args = new KernelArguments().Pointer(x).Pointer(a).Pointer(p).Int(rows).Int(inFeatures).Int(rank).Int(absolute ? 1 : 0);
        _device.Launch(KernelFor(dtype, "lk_dora_project_f32", "lk_dora_project_bf16"), new Dim3((uint)CeilDiv(rows, DoraProjectRowsPerBlock)),
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
        using DeviceBuffer g = _device.Allocate((long)rank * rank * sizeof(double));
        using DeviceBuffer h = _device.Allocate((long)rank * rank * sizeof(double));
        using DeviceBuffer rows = _device.Allocate((long)outFeatures * sizeof(int));
        using DeviceBuffer counts = _device.Allocate(2 * sizeof(int));
        _device.Memset(counts, 0, 2 * sizeof(int), 0);
        LaunchDoraProject(dtype, a.Address, a.Address, g.Address, rank, inFeatures, rank, absolute: false);
        LaunchDoraProject(dtype, a.Address, a.Address, h.Address, rank, inFeatures, rank, absolute: true);
        using (var args = new KernelArguments()
                   .Pointer(w0SquaredNorm.Address).Pointer(p.Address).Pointer(g.Address).Pointer(h.Address).Pointer(b.Address)
                   .Pointer(norm.Address).Pointer(rows.Address).Pointer(counts.Address)
                   .Int(outFeatures).Int(inFeatures).Int(rank).Float(scale))
            _device.Launch(KernelFor(dtype, "lk_dora_weight_norm_f32", "lk_dora_weight_norm_bf16"), new Dim3((uint)CeilDiv(outFeatures, DoraThreads)),
                           new Dim3(DoraThreads), 0, args);
        Span<int> count = stackalloc int[2];
        _device.Download(counts, 0, MemoryMarshal.AsBytes(count));
        if (count[0] > 0)
        {
            var (rowSource, owned) = source();
            try
            {
                using var args = new KernelArguments()
                    .Pointer(rowSource.Address).Pointer(a.Address).Pointer(b.Address).Pointer(rows.Address).Pointer(counts.Address)
                    .Pointer(norm.Address).Int(inFeatures).Int(rank).Float(scale);
                _device.Launch(KernelFor(dtype, "lk_dora_row_norm_f32", "lk_dora_row_norm_bf16"), new Dim3((uint)count[0]),
                               new Dim3(DoraThreads), 0, args);
                _device.Download(counts, 0, MemoryMarshal.AsBytes(count));
            }
            finally
            {
                if (owned) rowSource.Dispose();
            }
        }
        return new DoraNormReport(count[0], count[1]);
    }

    public void DoraForward(Tensor x, Tensor w0, Tensor? bias, Tensor a, Tensor b, float scale, Tensor magnitude, Tensor norm,
                            Tensor y, Tensor u, Tensor? z)
    {
        // z = x W0ᵀ + scale·u Bᵀ (into y itself when z is not kept), then y = g ⊙ z + bias in place or from z.
        Tensor preScale = z ?? y;
        LoraForward(x, w0, null, a, b, scale, 0f, 0, preScale, u);
        int outFeatures = checked((int)w0.Shape[0]);
        int tokens = checked((int)(x.ElementCount / w0.Shape[1]));
        using var args = new KernelArguments()
            .Pointer(preScale.Address).Pointer(magnitude.Address).Pointer(norm.Address).Pointer(bias?.Address ?? 0)
            .Pointer(y.Address).Int(tokens).Int(outFeatures);
        LaunchElementwise(KernelFor(x.DType, "lk_dora_scale_columns_f32", "lk_dora_scale_columns_bf16"), (long)tokens * outFeatures, args);
    }

    public void DoraBackward(Tensor x, Tensor w0, Tensor a, Tensor b, Tensor u, Tensor z, Tensor dy, float scale,
                             Tensor magnitude, Tensor norm, Tensor? dx, Tensor? dA, Tensor? dB, Tensor? dMagnitude)
    {
        int outFeatures = checked((int)w0.Shape[0]);
        int tokens = checked((int)(x.ElementCount / w0.Shape[1]));
        DType kernelDType = x.DType;
        if (dMagnitude is not null)
        {
            using var args = new KernelArguments()
                .Pointer(dy.Address).Pointer(z.Address).Pointer(norm.Address).Pointer(dMagnitude.Address)
                .Int(tokens).Int(outFeatures);
            _device.Launch(KernelFor(kernelDType, "lk_dora_magnitude_grad_f32", "lk_dora_magnitude_grad_bf16"), new Dim3((uint)CeilDiv(outFeatures, DoraGradColumns)),
                           new Dim3(DoraThreads), 0, args);
        }
        if (dx is null && dA is null && dB is null) return;
        using Tensor dz = Tensor.Empty(x.Device, x.DType, tokens, outFeatures);
        using (var args = new KernelArguments()
                   .Pointer(dy.Address).Pointer(magnitude.Address).Pointer(norm.Address).Pointer(dz.Address)
                   .Int(tokens).Int(outFeatures))
            LaunchElementwise(KernelFor(kernelDType, "lk_dora_scale_grad_f32", "lk_dora_scale_grad_bf16"), (long)tokens * outFeatures, args);
        LoraBackward(x, w0, a, b, u, dz, scale, 0f, 0, dx, dA, dB);
    }

    public void DoraScaleColumns(Tensor z, Tensor magnitude, Tensor norm, Tensor? bias, Tensor y)
    {
        int tokens = checked((int)z.Shape[0]), outFeatures = checked((int)z.Shape[1]);
        using var args = new KernelArguments()
            .Pointer(z.Address).Pointer(magnitude.Address).Pointer(norm.Address).Pointer(bias?.Address ?? 0)
            .Pointer(y.Address).Int(tokens).Int(outFeatures);
        LaunchElementwise(KernelFor(z.DType, "lk_dora_scale_columns_f32", "lk_dora_scale_columns_bf16"), (long)tokens * outFeatures, args);
    }

    public void DoraScaleGrad(Tensor dy, Tensor z, Tensor magnitude, Tensor norm, Tensor? dMagnitude, Tensor? dz)
    {
        int tokens = checked((int)dy.Shape[0]), outFeatures = checked((int)dy.Shape[1]);
        DType kernelDType = dy.DType;
        if (dMagnitude is not null)
        {
            using var args = new KernelArguments()
                .Pointer(dy.Address).Pointer(z.Address).Pointer(norm.Address).Pointer(dMagnitude.Address)
                .Int(tokens).Int(outFeatures);
            _device.Launch(KernelFor(kernelDType, "lk_dora_magnitude_grad_f32", "lk_dora_magnitude_grad_bf16"), new Dim3((uint)CeilDiv(outFeatures, DoraGradColumns)),
                           new Dim3(DoraThreads), 0, args);
        }
        if (dz is not null)
        {
            using var args = new KernelArguments()
                .Pointer(dy.Address).Pointer(magnitude.Address).Pointer(norm.Address).Pointer(dz.Address)
                .Int(tokens).Int(outFeatures);
            LaunchElementwise(KernelFor(kernelDType, "lk_dora_scale_grad_f32", "lk_dora_scale_grad_bf16"), (long)tokens * outFeatures, args);
        }
    }

    public void DoraDropout(Tensor x, float p, ulong seed, Tensor y)
    {
        int n = checked((int)x.ElementCount);
        using var args = new KernelArguments().Pointer(x.Address).Pointer(y.Address).Int(n).Float(p).ULong(seed);
        LaunchElementwise("lk_dora_dropout_f32", n, args);
    }

    public void DoraMerge(Tensor w, Tensor a, Tensor b, Tensor magnitude, Tensor norm, float scale, bool unmerge)
    {
        int outFeatures = checked((int)w.Shape[0]), inFeatures = checked((int)w.Shape[1]), rank = checked((int)a.Shape[0]);
        using var args = new KernelArguments()
            .Pointer(w.Address).Pointer(a.Address).Pointer(b.Address).Pointer(magnitude.Address).Pointer(norm.Address)
            .Int(outFeatures).Int(inFeatures).Int(rank).Float(scale).Int(unmerge ? 1 : 0);
        LaunchElementwise(KernelFor(w.DType, "lk_dora_merge_f32", "lk_dora_merge_bf16"), (long)outFeatures * inFeatures, args);
    }
}
