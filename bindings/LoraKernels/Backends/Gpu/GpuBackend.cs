// The GPU backend: the shared ops (IBackend) for CUDA and the SIMT emulator, over an IKernelDevice,
// and the GpuLaunch every family's GPU kernels launch through (Device.Kernels hands it to them).
// The element-wise launches live in GpuBackend.Elementwise.cs, beside kernels/elementwise.cu.
using LoraKernels.Runtime;

namespace LoraKernels.Backends.Gpu;

internal sealed partial class GpuBackend : IBackend
{
    public GpuBackend(IKernelDevice device)
    {
        ArgumentNullException.ThrowIfNull(device);
        Launcher = new GpuLaunch(device);
    }

    /// <summary>The launch helpers and geometry over this backend's kernel device.</summary>
    public GpuLaunch Launcher { get; }
}
