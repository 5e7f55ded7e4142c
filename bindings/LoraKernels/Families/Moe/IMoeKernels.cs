// The MoE family's own kernels, the steps around the experts' segmented products
// (native/include/lora_kernels_moe.h): moving rows between token order and expert-sorted order, and
// SwiGLU. F32 only (the MoE layer is F32). The routing tables are host arrays (MoeRouting); each call
// passes them to the kernels (a GPU device gets a copy of P ints per call, beside the GEMMs it feeds).
namespace LoraKernels.Families.Moe;

internal interface IMoeKernels
{
    /// <summary>xs[p, :] = x[tokens[p], :].</summary>
    void Gather(Tensor x, int[] tokens, Tensor xs);

    /// <summary>y[t, :] = bias + Σ_j gates[p]·o[p, :] with p = positions[t·k + j]; gates null: weights of 1.</summary>
    void Combine(Tensor o, int[] positions, int k, Tensor? gates, Tensor? bias, Tensor y);

    /// <summary>dOutput[p, :] = gates[p]·dy[tokens[p], :]; dGates[p] = dy[tokens[p]]·o[p]; null outputs are skipped.</summary>
    void CombineBackward(Tensor dy, Tensor? o, int[] tokens, Tensor gates, Tensor? dOutput, Tensor? dGates);

    /// <summary>h = silu(g) ⊙ u.</summary>
    void SwiGlu(Tensor g, Tensor u, Tensor h);

    /// <summary>dg = dh ⊙ u ⊙ silu'(g), du = dh ⊙ silu(g).</summary>
    void SwiGluBackward(Tensor g, Tensor u, Tensor dh, Tensor dg, Tensor du);

    /// <summary>The implementation for <paramref name="device"/> (created once per device).</summary>
    static IMoeKernels On(Device device) =>
        device.Kernels<IMoeKernels>(static () => new CpuMoeKernels(), static gpu => new GpuMoeKernels(gpu));
}
