// The segment lists of the multi-tensor optimizer kernels, field for field as kernels/optim_segments.cuh
// lays them out (the CPU library static_asserts the sizes these structs are checked against in the
// tests), and the growable list one optimizer reuses every step: a host array for the CPU kernels, and
// on GPU devices the device buffer it is uploaded to for the launch (kept between launches: freeing
// device memory synchronizes a CUDA device, which would stall a paged step's copies).
using System.Runtime.InteropServices;
using LoraKernels.Runtime;

namespace LoraKernels.Optim;

[StructLayout(LayoutKind.Sequential)]
internal struct AdamWSegment
{
    public ulong Param, ParamBf16, Grad, M, V;
    public long N, FirstBlock;
    public float Decay, StepSize, BiasCorrection2Sqrt, Eps;
}

[StructLayout(LayoutKind.Sequential)]
internal struct AdamW8bitSegment
{
    public ulong Param, ParamBf16, Grad, MCodes, VCodes, MAbsmax, VAbsmax;
    public long N, FirstBlock;
    public float Decay, StepSize, Eps, Unused;
}

[StructLayout(LayoutKind.Sequential)]
internal struct GradSpan
{
    public ulong Grad;
    public long N, FirstBlock;
}

internal sealed class SegmentList<T> : IDisposable where T : unmanaged
{
    private T[] _items = new T[16];
    private DeviceBuffer? _table;

    public int Count { get; private set; }

    /// <summary>The segments added since the last Clear (writable: the GPU launcher fills first_block).</summary>
    public Span<T> Items => _items.AsSpan(0, Count);

    public void Clear() => Count = 0;

    public void Add(in T segment)
    {
        if (Count == _items.Length) Array.Resize(ref _items, 2 * _items.Length);
        _items[Count++] = segment;
    }

    /// <summary>Uploads the segments to <paramref name="device"/> and returns the device copy (valid until the next upload).</summary>
    public DeviceBuffer Upload(IKernelDevice device)
    {
        long bytes = (long)Count * Marshal.SizeOf<T>();
        if (_table is null || _table.SizeInBytes < bytes)
        {
            long grown = Math.Max(bytes, 2 * (_table?.SizeInBytes ?? 0));
            _table?.Dispose();
            _table = null;
            _table = device.Allocate(grown);
        }
        device.Upload(_table, 0, MemoryMarshal.AsBytes(Items));
        return _table;
    }

    public void Dispose()
    {
        _table?.Dispose();
        _table = null;
    }
}

/// <summary>lk_file_run: one positioned transfer of Bytes bytes between file descriptor Fd at FileOffset and Memory.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct FileRun
{
    public long FileOffset;
    public ulong Memory;
    public long Bytes;
    public int Fd;
    public int Reserved;
}
