// The segmented family on the native CPU kernels (native/cpu/segmented.cpp); BF16 tensors go through
// CpuCall's fp32 staging, the segment table is passed in place.
using LoraKernels.Backends.Cpu;
using LoraKernels.Interop;
using LoraKernels.Ops;

namespace LoraKernels.Families.Segmented;

internal sealed unsafe class CpuSegmentedKernels : ISegmentedKernels
{
    public void Forward(Tensor x, Tensor? w0, Tensor? w0Table, Tensor? bias, Tensor? aTable, Tensor? bTable, Tensor? scales,
                        SegmentTable segments, Tensor y, Tensor? u)
    {
        using var call = new CpuCall();
        var (m, inFeatures, outFeatures, r) = Dims(x, w0 ?? w0Table!, aTable);
        fixed (int* table = segments.Triples)
            Check.Cpu(NativeCpu.lk_cpu_segmented_forward(m, inFeatures, outFeatures, r, segments.Adapters, call.Input(x), call.Input(w0),
                                                         call.Input(w0Table), call.Input(bias), call.Input(aTable), call.Input(bTable),
                                                         call.Input(scales), table, segments.Segments.Count, call.Output(y),
                                                         call.Output(u)));
        call.WriteBack();
    }

    public void Backward(Tensor x, Tensor? w0, Tensor? w0Table, Tensor? aTable, Tensor? bTable, Tensor? scales, Tensor? u, Tensor dy,
                         SegmentTable segments, Tensor? dx, Tensor? dATable, Tensor? dBTable)
    {
        using var call = new CpuCall();
        var (m, inFeatures, outFeatures, r) = Dims(x, w0 ?? w0Table!, aTable);
        fixed (int* table = segments.Triples)
            Check.Cpu(NativeCpu.lk_cpu_segmented_backward(m, inFeatures, outFeatures, r, segments.Adapters, call.Input(x),
                                                          call.Input(w0), call.Input(w0Table), call.Input(aTable), call.Input(bTable),
                                                          call.Input(scales), call.Input(u), call.Input(dy), table,
                                                          segments.Segments.Count, call.Output(dx), call.Output(dATable),
                                                          call.Output(dBTable)));
        call.WriteBack();
    }

    /// <summary>(M, in, out, r) from x [M, in], a base whose last two dimensions are [out, in], and the A table [n, r, in] (r = 0 without one).</summary>
    internal static (long M, long In, long Out, long R) Dims(Tensor x, Tensor baseWeight, Tensor? aTable) =>
        (x.Shape[0], x.Shape[1], baseWeight.Shape[baseWeight.Rank - 2], aTable?.Shape[1] ?? 0);
}
