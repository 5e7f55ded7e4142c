// ISsmKernels on a GPU device (kernels/ssm.cu; the frozen projections through lora.cu at r = 0): the launch
// sequences of the chunked scan and its backward, with their scratch, and the element-wise geometry of the
// rest. docs/KERNELS.md documents them; tests/native/parity/ssm_parity_test.cpp launches the same sequences.
using LoraKernels.Backends.Gpu;
using LoraKernels.Families.Lora;
using LoraKernels.Runtime;

namespace LoraKernels.Families.Ssm;

internal sealed class GpuSsmKernels(GpuLaunch gpu) : ISsmKernels
{
    // kernels/ssm.cu: kSsmChunk (steps per chunk), kSsmThreads (channels per chunk-kernel block), kSsmGroup (backward block).
    internal const int Chunk = 16;
    internal const int ChunkThreads = 256;
    internal const int GroupThreads = 32;

    private readonly GpuLoraKernels _lora = new(gpu);

    /// <summary>chunk_state, chunk_carry (forward, from H0, with the last state), scan_forward.</summary>
    public void ScanForward(ScanProblem p, Tensor y, Tensor? lastState)
    {
        using Tensor entering = EnteringStates(p, lastState);
        using var args = Scan(p, new KernelArguments()).Pointer(entering).Pointer(y).Int(p.Channels)
            .Int(p.Length).Int(p.Channels).Int(p.States).Int(Chunks(p));
        gpu.Launch("lk_ssm_scan_forward_f32", ChunkGrid(p, ChunkThreads), new Dim3(ChunkThreads), 0, args);
    }

    /// <summary>
    /// The forward's entering states again; chunk_adjoint and the reverse carry; scan_backward (du, dΔ, dz and the
    /// per-warp partial sums of dB, dC); reduce_groups for dB and for dC.
    /// </summary>
    public void ScanBackward(ScanProblem p, Tensor dy, Tensor? du, Tensor? dDelta, Columns? dB, Columns? dC, Columns? dz)
    {
        int chunks = Chunks(p), groups = (int)GpuLaunch.CeilDiv(p.Channels, GroupThreads);
        using Tensor entering = EnteringStates(p, null);
        using Tensor leaving = ChunkArray(p), decay = ChunkArray(p), adjoint = ChunkArray(p);
        using (var args = new KernelArguments()
                   .Pointer(p.Delta).Int(p.Channels).Pointer(p.DeltaBias).Pointer(p.A).Pointer(p.C.Tensor, p.C.Offset).Int(p.C.Stride))
        {
            ZArguments(args, p.Z).Pointer(dy).Int(p.Channels).Int(p.Length).Int(p.Channels).Int(p.States).Int(chunks)
                .Pointer(leaving).Pointer(decay);
            gpu.Launch("lk_ssm_chunk_adjoint_f32", ChunkGrid(p, ChunkThreads), new Dim3(ChunkThreads), 0, args);
        }
        Carry(p, decay, leaving, null, adjoint, null, reverse: true);
        using Tensor partialB = Tensor.Empty(dy.Device, DType.F32, groups, p.Rows, p.States);
        using Tensor partialC = Tensor.Empty(dy.Device, DType.F32, groups, p.Rows, p.States);
        using (var args = Scan(p, new KernelArguments()))
        {
            args.Pointer(entering).Pointer(adjoint).Pointer(dy).Int(p.Channels).Pointer(du).Int(p.Channels).Pointer(dDelta).Int(p.Channels);
            ZArguments(args, dz).Pointer(partialB).Pointer(partialC).Int(p.Length).Int(p.Channels).Int(p.States).Int(chunks).Int(p.Batch);
            gpu.Launch("lk_ssm_scan_backward_f32", ChunkGrid(p, GroupThreads), new Dim3(GroupThreads), 0, args);
        }
        foreach (var (partial, target) in new[] { (partialB, dB), (partialC, dC) })
        {
            if (target is not { } columns) continue;
            using var args = new KernelArguments()
                .Pointer(partial).Int(groups).Long(p.Rows).Int(p.States).Pointer(columns.Tensor, columns.Offset).Int(columns.Stride);
            gpu.LaunchElementwise("lk_ssm_reduce_groups_f32", p.Rows * p.States, args);
        }
    }

    public void Step(ScanProblem p, Tensor state, Tensor y)
    {
        using var args = new KernelArguments()
            .Pointer(p.U).Int(p.Channels).Pointer(p.Delta).Int(p.Channels).Pointer(p.DeltaBias).Pointer(p.A)
            .Pointer(p.B.Tensor, p.B.Offset).Pointer(p.C.Tensor, p.C.Offset).Int(p.B.Stride).Pointer(p.DSkip);
        ZArguments(args, p.Z).Pointer(state).Pointer(y).Int(p.Channels).Int(p.Batch).Int(p.Channels).Int(p.States);
        gpu.LaunchElementwise("lk_ssm_step_f32", (long)p.Batch * p.Channels, args);
    }

    public void ConvForward(int batch, Columns x, Tensor weight, Tensor? bias, Tensor y)
    {
        using var args = new KernelArguments()
            .Pointer(x.Tensor, x.Offset).Int(x.Stride).Pointer(weight).Pointer(bias).Pointer(y).Int((int)y.Shape[1])
            .Int(batch).Int(checked((int)(x.Rows / batch))).Int(x.Width).Int((int)weight.Shape[1]);
        gpu.LaunchElementwise("lk_ssm_conv_forward_f32", x.Rows * x.Width, args);
    }

    public void ConvBackward(int batch, Columns x, Tensor weight, Tensor? bias, Tensor dy, Columns dx)
    {
        using var args = new KernelArguments()
            .Pointer(x.Tensor, x.Offset).Int(x.Stride).Pointer(weight).Pointer(bias).Pointer(dy).Int((int)dy.Shape[1])
            .Pointer(dx.Tensor, dx.Offset).Int(dx.Stride)
            .Int(batch).Int(checked((int)(x.Rows / batch))).Int(x.Width).Int((int)weight.Shape[1]);
        gpu.LaunchElementwise("lk_ssm_conv_backward_f32", x.Rows * x.Width, args);
    }

    public void ConvStep(Columns x, Tensor weight, Tensor? bias, Tensor state, Tensor y)
    {
        using var args = new KernelArguments()
            .Pointer(x.Tensor, x.Offset).Int(x.Stride).Pointer(weight).Pointer(bias).Pointer(state).Pointer(y).Int((int)y.Shape[1])
            .Int(checked((int)x.Rows)).Int(x.Width).Int((int)weight.Shape[1]);
        gpu.LaunchElementwise("lk_ssm_conv_step_f32", x.Rows * x.Width, args);
    }

    public void CopyColumns(Columns source, Columns destination)
    {
        using var args = new KernelArguments()
            .Pointer(source.Tensor, source.Offset).Int(source.Stride).Pointer(destination.Tensor, destination.Offset).Int(destination.Stride)
            .Long(source.Rows).Int(source.Width);
        gpu.LaunchElementwise("lk_ssm_copy_columns_f32", source.Rows * source.Width, args);
    }

    public void DenseForward(Tensor x, Tensor w, Tensor? bias, Tensor y) => _lora.BaseForward(x, w, bias, y);

    public void DenseGradX(Tensor dy, Tensor w, Tensor dx) => _lora.BaseGradX(dy, w, dx);

    /// <summary>chunk_state then chunk_carry: the state entering every chunk [batch, chunks, D, N] (and the last state when asked).</summary>
    private Tensor EnteringStates(ScanProblem p, Tensor? lastState)
    {
        using Tensor leaving = ChunkArray(p), decay = ChunkArray(p);
        using (var args = new KernelArguments()
                   .Pointer(p.U).Int(p.Channels).Pointer(p.Delta).Int(p.Channels).Pointer(p.DeltaBias).Pointer(p.A)
                   .Pointer(p.B.Tensor, p.B.Offset).Pointer(p.C.Tensor, p.C.Offset).Int(p.B.Stride).Pointer(p.DSkip)
                   .Int(p.Length).Int(p.Channels).Int(p.States).Int(Chunks(p)).Pointer(leaving).Pointer(decay))
            gpu.Launch("lk_ssm_chunk_state_f32", ChunkGrid(p, ChunkThreads), new Dim3(ChunkThreads), 0, args);
        Tensor entering = ChunkArray(p);
        try
        {
            Carry(p, decay, leaving, p.H0, entering, lastState, reverse: false);
            return entering;
        }
        catch
        {
            entering.Dispose();
            throw;
        }
    }

    private void Carry(ScanProblem p, Tensor mult, Tensor add, Tensor? init, Tensor carry, Tensor? last, bool reverse)
    {
        int dn = p.Channels * p.States;
        using var args = new KernelArguments()
            .Pointer(mult).Pointer(add).Pointer(init).Pointer(carry).Pointer(last)
            .Int(p.Batch).Int(Chunks(p)).Int(dn).Int(reverse ? 1 : 0);
        gpu.LaunchElementwise("lk_ssm_chunk_carry_f32", (long)p.Batch * dn, args);
    }

    /// <summary>u, delta, delta bias, A, B, C and the D skip, as the scan kernels take them first.</summary>
    private static KernelArguments Scan(ScanProblem p, KernelArguments args)
    {
        args.Pointer(p.U).Int(p.Channels).Pointer(p.Delta).Int(p.Channels).Pointer(p.DeltaBias).Pointer(p.A)
            .Pointer(p.B.Tensor, p.B.Offset).Pointer(p.C.Tensor, p.C.Offset).Int(p.B.Stride).Pointer(p.DSkip);
        return ZArguments(args, p.Z);
    }

    /// <summary>A column slice as (pointer, stride), or (null, 0).</summary>
    private static KernelArguments ZArguments(KernelArguments args, Columns? columns) =>
        columns is { } c ? args.Pointer(c.Tensor, c.Offset).Int(c.Stride) : args.NullPointer().Int(0);

    private static int Chunks(ScanProblem p) => checked((int)GpuLaunch.CeilDiv(p.Length, Chunk));

    private static Tensor ChunkArray(ScanProblem p) =>
        Tensor.Empty(p.U.Device, DType.F32, p.Batch, Chunks(p), p.Channels, p.States);

    /// <summary>The chunk kernels' grid: x over channels (threads per block), y = chunk, z = sequence.</summary>
    private static Dim3 ChunkGrid(ScanProblem p, int threads) =>
        new((uint)GpuLaunch.CeilDiv(p.Channels, threads), (uint)Chunks(p), (uint)p.Batch);
}
