// The segmented family's kernels: many adapters over one batch, each segment of rows with its own
// (A_a, B_a, s_a) from a table (native/include/lora_kernels_segmented.h), on the CPU
// (native/cpu/segmented.cpp) and on GPU devices (kernels/segmented.cu with lora.cu's dense base).
// Ops.Segmented checks every argument first, so implementations assume valid, same-device tensors.
using LoraKernels.Backends.Gpu;
using LoraKernels.Ops;

namespace LoraKernels.Families.Segmented;

internal interface ISegmentedKernels
{
    /// <summary>
    /// u = x_s A_aᵀ per segment (F32 [M, r], zero outside segments with an adapter) and
    /// y = x W0ᵀ + bias + s_a u Bᵀ_a, with exactly one of <paramref name="w0"/> (one dense base) and
    /// <paramref name="w0Table"/> (each row's adapter's base). With r = 0 the adapter tables, scales and u are null.
    /// </summary>
    void Forward(Tensor x, Tensor? w0, Tensor? w0Table, Tensor? bias, Tensor? aTable, Tensor? bTable, Tensor? scales,
                 SegmentTable segments, Tensor y, Tensor? u);

    /// <summary>dx = dy W0_(a) + du A_a, dA_a = Σ du_sᵀ x_s, dB_a = s_a Σ dy_sᵀ u_s, du = s_a dy B_a; null outputs are skipped.</summary>
    void Backward(Tensor x, Tensor? w0, Tensor? w0Table, Tensor? aTable, Tensor? bTable, Tensor? scales, Tensor? u, Tensor dy,
                  SegmentTable segments, Tensor? dx, Tensor? dATable, Tensor? dBTable);

    /// <summary>The implementation for <paramref name="device"/> (created once per device).</summary>
    static ISegmentedKernels On(Device device) =>
        device.Kernels<ISegmentedKernels>(static () => new CpuSegmentedKernels(), static gpu => new GpuSegmentedKernels(gpu));
}
