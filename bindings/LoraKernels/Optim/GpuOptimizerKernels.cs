// IOptimizerKernels on a GPU device (kernels/optim.cu): one block per kOptimChunk elements of a
// segment (one per 256-element block for 8-bit), first_block the running sum of the blocks before a
// segment, the list uploaded to the list's own device buffer; the norm pass's per-block partials are
// added on the host in block order. kernels/launch_geometry.cuh holds the constants mirrored here.
using LoraKernels.Backends.Gpu;
using LoraKernels.Runtime;

namespace LoraKernels.Optim;

internal sealed class GpuOptimizerKernels(GpuLaunch gpu) : IOptimizerKernels
{
    internal const uint Threads = 256;      // kOptimThreads
    internal const int Chunk = 4096;        // kOptimChunk
    internal const int Block8bit = 256;     // kOptim8bitBlock
    private const long MaxGridX = int.MaxValue;

    public void AdamW(SegmentList<AdamWSegment> segments, float beta1, float beta2, float gradScale, bool bnbForm)
    {
        long blocks = 0;
        foreach (ref AdamWSegment s in segments.Items) AssignBlocks(ref s.FirstBlock, s.N, Chunk, ref blocks);
        Launch("lk_optim_adamw_f32", blocks, segments, args => args.Float(beta1).Float(beta2).Float(gradScale).Int(bnbForm ? 1 : 0));
    }

    public void AdamW8bit(SegmentList<AdamW8bitSegment> segments, float beta1, float beta2, float gradScale)
    {
        long blocks = 0;
        foreach (ref AdamW8bitSegment s in segments.Items) AssignBlocks(ref s.FirstBlock, s.N, Block8bit, ref blocks);
        Launch("lk_optim_adamw8bit_f32", blocks, segments, args => args.Float(beta1).Float(beta2).Float(gradScale));
    }

    public double GradSumOfSquares(SegmentList<GradSpan> spans)
    {
        long blocks = 0;
        foreach (ref GradSpan s in spans.Items) AssignBlocks(ref s.FirstBlock, s.N, Chunk, ref blocks);
        if (blocks == 0) return 0.0;
        CheckGrid(blocks);
        IKernelDevice device = gpu.Device;
        var partials = new double[blocks];
        DeviceBuffer table = spans.Upload(device);
        using (DeviceBuffer sums = device.Allocate(blocks * sizeof(double)))
        {
            using (var args = new KernelArguments().Pointer(table).Int(spans.Count).Pointer(sums))
                device.Launch("lk_optim_grad_sumsq_f32", new Dim3((uint)blocks), new Dim3(Threads), 0, args);
            device.Download(sums, 0, System.Runtime.InteropServices.MemoryMarshal.AsBytes(partials.AsSpan()));
        }
        double total = 0.0;
        foreach (double partial in partials) total += partial;
        return total;
    }

    private void Launch<T>(string kernel, long blocks, SegmentList<T> segments, Action<KernelArguments> scalars) where T : unmanaged
    {
        if (blocks == 0) return;
        CheckGrid(blocks);
        DeviceBuffer table = segments.Upload(gpu.Device);
        using var args = new KernelArguments().Pointer(table).Int(segments.Count);
        scalars(args);
        gpu.Launch(kernel, new Dim3((uint)blocks), new Dim3(Threads), 0, args);
    }

    private static void AssignBlocks(ref long firstBlock, long elements, int elementsPerBlock, ref long blocks)
    {
        firstBlock = blocks;
        blocks += (elements + elementsPerBlock - 1) / elementsPerBlock;
    }

    private static void CheckGrid(long blocks)
    {
        if (blocks > MaxGridX)
            throw new NotSupportedException($"One optimizer launch would need {blocks} blocks; a CUDA grid allows {MaxGridX}. Page the state (StatePaging) to split it.");
    }
}
