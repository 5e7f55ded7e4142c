// One native CPU call's memory: what every CPU kernel wrapper (the shared backend's and each
// family's) passes to libloraknl_cpu goes through a CpuCall, which leases it for the call.
using System.Runtime.InteropServices;
using LoraKernels.Interop;
using LoraKernels.Runtime;

namespace LoraKernels.Backends.Cpu;

/// <summary>
/// The memory of one native call. Every tensor or buffer whose address it hands out is leased
/// until Dispose (BufferLeases), so the call cannot outlive its memory; an F32 tensor is used in
/// place, a BF16 one gets a temporary fp32 copy (inputs converted now, outputs converted back by
/// WriteBack). Temporaries and leases are released on Dispose, also when the call threw.
/// </summary>
internal sealed unsafe class CpuCall : IDisposable
{
    private readonly BufferLeases _leases = new();
    private readonly List<IntPtr> _temporaries = new();
    private readonly List<(IntPtr Staged, long Count, IntPtr Target)> _outputs = new();

    public float* Input(Tensor? tensor) => tensor is null ? null : Stage(tensor, convertIn: true, writeBack: false);
    public float* Output(Tensor? tensor) => tensor is null ? null : Stage(tensor, convertIn: false, writeBack: true);
    public float* InputOutput(Tensor tensor) => Stage(tensor, convertIn: true, writeBack: true);

    /// <summary>The tensor's own storage, whatever its dtype (for dtype-aware code such as casts).</summary>
    public void* Raw(Tensor tensor) => (void*)_leases.Address(tensor);

    public byte* Bytes(DeviceBuffer? buffer) => (byte*)_leases.Address(buffer);
    public float* Floats(DeviceBuffer? buffer) => (float*)_leases.Address(buffer);

    /// <summary>The statistics of <paramref name="weight"/> as the CPU kernels read them, their buffers leased.</summary>
    public LkQuantStats Stats(QuantizedWeight weight) => new()
    {
        QuantType = (int)weight.QuantType,
        BlockSize = weight.BlockSize,
        Absmax = Floats(weight.Absmax),
        QAbsmax = Bytes(weight.QAbsmax),
        Absmax2 = Floats(weight.Absmax2),
        Offset = weight.IsNested ? weight.Offset : 0f,
    };

    private float* Stage(Tensor tensor, bool convertIn, bool writeBack)
    {
        void* storage = Raw(tensor);
        if (tensor.DType == DType.F32) return (float*)storage;
        long bytes = Math.Max(tensor.ElementCount * sizeof(float), 1);
        float* staged;
        try
        {
            staged = (float*)NativeMemory.AlignedAlloc((nuint)bytes, 64);
        }
        catch (OutOfMemoryException e)
        {
            throw new OutOfMemoryException($"LoraKernels could not allocate {bytes} bytes of host memory for an fp32 copy of {tensor.Describe()}.", e);
        }
        _temporaries.Add((IntPtr)staged);
        if (convertIn) Check.Cpu(NativeCpu.lk_cpu_bf16_to_f32(tensor.ElementCount, (ushort*)storage, staged));
        if (writeBack) _outputs.Add(((IntPtr)staged, tensor.ElementCount, (IntPtr)storage));
        return staged;
    }

    public void WriteBack()
    {
        foreach (var (staged, count, target) in _outputs)
            Check.Cpu(NativeCpu.lk_cpu_f32_to_bf16(count, (float*)staged, (ushort*)target));
    }

    public void Dispose()
    {
        foreach (IntPtr temporary in _temporaries) NativeMemory.AlignedFree((void*)temporary);
        _temporaries.Clear();
        _leases.Dispose();
    }
}
