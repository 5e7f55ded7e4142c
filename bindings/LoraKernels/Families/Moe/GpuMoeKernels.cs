// The MoE steps on a GPU device (kernels/moe.cu): the element-wise grid for the row moves and SwiGLU,
// one warp per assignment for the combine's backward. The routing arrays are copied to the device per
// call. tests/native/parity/moe_parity_test.cpp launches the same geometry.
using LoraKernels.Backends.Gpu;
using LoraKernels.Runtime;

namespace LoraKernels.Families.Moe;

internal sealed class GpuMoeKernels(GpuLaunch gpu) : IMoeKernels
{
    // kernels/moe.cu: kMoeThreads (the element-wise block) and kMoeWarps (assignments per block of combine_backward).
    internal const int AssignmentsPerBlock = 8;

    public void Gather(Tensor x, int[] tokens, Tensor xs)
    {
        using DeviceBuffer table = gpu.Upload(tokens);
        using var args = new KernelArguments().Pointer(x).Pointer(table).Pointer(xs).Long(tokens.Length).Int(checked((int)x.Shape[1]));
        gpu.LaunchElementwise("lk_moe_gather_f32", xs.ElementCount, args);
    }

    public void Combine(Tensor o, int[] positions, int k, Tensor? gates, Tensor? bias, Tensor y)
    {
        using DeviceBuffer table = gpu.Upload(positions);
        using var args = new KernelArguments()
            .Pointer(o).Pointer(table).Pointer(gates).Pointer(bias).Pointer(y)
            .Long(y.Shape[0]).Int(k).Int(checked((int)y.Shape[1]));
        gpu.LaunchElementwise("lk_moe_combine_f32", y.ElementCount, args);
    }

    public void CombineBackward(Tensor dy, Tensor? o, int[] tokens, Tensor gates, Tensor? dOutput, Tensor? dGates)
    {
        using DeviceBuffer table = gpu.Upload(tokens);
        using var args = new KernelArguments()
            .Pointer(dy).Pointer(o).Pointer(table).Pointer(gates).Pointer(dOutput).Pointer(dGates)
            .Long(tokens.Length).Int(checked((int)dy.Shape[1]));
        gpu.Launch("lk_moe_combine_backward_f32", new Dim3((uint)GpuLaunch.CeilDiv(tokens.Length, AssignmentsPerBlock)),
                   new Dim3(GpuLaunch.ElementwiseThreads), 0, args);
    }

    public void SwiGlu(Tensor g, Tensor u, Tensor h)
    {
        using var args = new KernelArguments().Pointer(g).Pointer(u).Pointer(h).Long(g.ElementCount);
        gpu.LaunchElementwise("lk_moe_swiglu_f32", g.ElementCount, args);
    }

    public void SwiGluBackward(Tensor g, Tensor u, Tensor dh, Tensor dg, Tensor du)
    {
        using var args = new KernelArguments().Pointer(g).Pointer(u).Pointer(dh).Pointer(dg).Pointer(du).Long(g.ElementCount);
        gpu.LaunchElementwise("lk_moe_swiglu_backward_f32", g.ElementCount, args);
    }
}
