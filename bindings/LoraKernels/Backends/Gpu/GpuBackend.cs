// The GPU backend: one class for CUDA and the SIMT emulator, over an IKernelDevice. Its IBackend
// methods (kernel choice, launch geometry, argument packing) live in one partial file per kernel
// family, beside that family's kernels/*.cu: GpuBackend.Lora.cs, GpuBackend.Elementwise.cs and
// GpuBackend.Optim.cs.
using LoraKernels.Runtime;

namespace LoraKernels.Backends.Gpu;

internal sealed partial class GpuBackend : IBackend
{
    private readonly IKernelDevice _device;

    public GpuBackend(IKernelDevice device)
    {
        ArgumentNullException.ThrowIfNull(device);
        _device = device;
    }
}
