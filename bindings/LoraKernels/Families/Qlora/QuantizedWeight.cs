// A tensor quantized to 4 bits in bitsandbytes' layout (REFERENCE.md §8.3-8.4): packed codes
// (two per byte, element 2k in the high nibble) and per-block statistics, either plain (one fp32
// absmax per block) or nested by double quantization (uint8 qabsmax per block, one fp32 absmax2
// per 256 blocks and an fp32 offset), on one device. The weight owns its buffers: Dispose frees
// each once, and every buffer is counted by the device's live-allocation counters.
using System.Collections.ObjectModel;
using System.Runtime.InteropServices;
using LoraKernels.Runtime;

namespace LoraKernels;

/// <summary>The 4-bit code (bitsandbytes' quant_type); values match lk_quant_stats.quant_type.</summary>
public enum QuantType { Nf4 = 0, Fp4 = 1 }

public sealed class QuantizedWeight : IDisposable
{
    /// <summary>First-level absmax values per nested block in double quantization (bnb's fixed 256).</summary>
    public const int NestedBlockSize = 256;

    private readonly long[] _shape;
    private DeviceBuffer? _codes;
    private DeviceBuffer? _absmax;
    private DeviceBuffer? _qabsmax;
    private DeviceBuffer? _absmax2;
    private bool _disposed;

    /// <summary>Allocates codes and plain statistics (contents undefined) for a tensor of <paramref name="shape"/>.</summary>
    internal QuantizedWeight(Device device, QuantType quantType, int blockSize, long[] shape, DType dtype)
    {
        ArgumentNullException.ThrowIfNull(device);
        _ = DTypeInfo.SizeOf(dtype);
        _shape = (long[])shape.Clone();
        ElementCount = Tensor.CountElements(_shape);
        Device = device;
        QuantType = quantType;
        BlockSize = blockSize;
        DType = dtype;
        Shape = new ReadOnlyCollection<long>(_shape);
        BlockCount = (ElementCount + blockSize - 1) / blockSize;
        CodeBytes = (ElementCount + 1) / 2;
        _codes = device.Allocate(CodeBytes);
        try
        {
            _absmax = device.Allocate(BlockCount * sizeof(float));
        }
        catch
        {
            _codes.Dispose();
            throw;
        }
    }

    public Device Device { get; }
    public QuantType QuantType { get; }

    /// <summary>Consecutive elements (of the row-major flattening) sharing one absmax.</summary>
    public int BlockSize { get; }

    /// <summary>The shape of the original tensor ([out, in] for a Linear weight).</summary>
    public IReadOnlyList<long> Shape { get; }

    public long ElementCount { get; }

    /// <summary>ceil(ElementCount / BlockSize): first-level absmax values.</summary>
    public long BlockCount { get; }

    /// <summary>The dtype the weight dequantizes to (bnb's QuantState.dtype): the original tensor's.</summary>
    public DType DType { get; }

    /// <summary>True once the statistics are double-quantized (bnb compress_statistics).</summary>
    public bool IsNested => _qabsmax is not null;

    /// <summary>mean(absmax) subtracted before double quantization; 0 while not nested.</summary>
    public float Offset { get; internal set; }

    /// <summary>Bytes of the packed codes: (ElementCount + 1) / 2.</summary>
    public long CodeBytes { get; }

    /// <summary>Bytes of the statistics buffers this weight holds now (measured from the buffers).</summary>
    public long StatisticsBytes => (_absmax?.SizeInBytes ?? 0) + (_qabsmax?.SizeInBytes ?? 0) + (_absmax2?.SizeInBytes ?? 0);

    /// <summary>Bytes of every buffer this weight holds (codes and statistics), measured.</summary>
    public long SizeInBytes => (_codes?.SizeInBytes ?? 0) + StatisticsBytes;

    /// <summary>Bytes of the codes buffer, measured (equals CodeBytes).</summary>
    internal long CodesBufferBytes => Live(_codes).SizeInBytes;

    /// <summary>Nested blocks of the double quantization: ceil(BlockCount / 256).</summary>
    public long NestedBlockCount => (BlockCount + NestedBlockSize - 1) / NestedBlockSize;

    public bool IsDisposed => _disposed;

    /// <summary>"NF4[64, 33] blocksize 64 (nested) → F32 on cpu", the form error messages use.</summary>
    public string Describe() =>
        $"{QuantType.ToString().ToUpperInvariant()}[{string.Join(", ", _shape)}] blocksize {BlockSize}{(IsNested ? " (nested)" : "")} → {DType} on {Device}{(_disposed ? " (disposed)" : "")}";

    public override string ToString() => Describe();

    /// <summary>The packed codes [CodeBytes]; native calls reach it through a lease (BufferLeases).</summary>
    internal DeviceBuffer Codes => Live(_codes);

    /// <summary>The plain fp32 absmax [BlockCount]; null when the statistics are nested.</summary>
    internal DeviceBuffer? Absmax => Live(_absmax, allowMissing: true);

    /// <summary>The uint8 qabsmax [BlockCount]; null when not nested.</summary>
    internal DeviceBuffer? QAbsmax => Live(_qabsmax, allowMissing: true);

    /// <summary>The fp32 nested absmax [NestedBlockCount]; null when not nested.</summary>
    internal DeviceBuffer? Absmax2 => Live(_absmax2, allowMissing: true);

    /// <summary>The packed codes as bitsandbytes stores them (bnb's "weight", shape [(n + 1) / 2, 1] uint8).</summary>
    public byte[] CodesToArray() => Download(Live(_codes));

    /// <summary>
    /// The fp32 absmax of every block [BlockCount]: bnb's "weight.absmax" when not nested; when nested, the
    /// values the kernels use, decoded as bitsandbytes' dequantize_blockwise does
    /// (dynamic_map[qabsmax[i]] · absmax2[i / 256] + offset).
    /// </summary>
    public float[] AbsmaxToArray()
    {
        if (Live(_absmax, allowMissing: true) is { } plain) return MemoryMarshal.Cast<byte, float>(Download(plain)).ToArray();
        byte[] quantized = QuantizedAbsmaxToArray();
        float[] nested = NestedAbsmaxToArray(), absmax = new float[BlockCount];
        unsafe
        {
            fixed (byte* q = quantized)
            fixed (float* a2 = nested, a = absmax)
                Interop.Check.Cpu(Interop.NativeCpu.lk_cpu_double_dequantize(BlockCount, q, a2, Offset, a));
        }
        return absmax;
    }

    /// <summary>The uint8 qabsmax [BlockCount] (bnb's "weight.absmax" when nested).</summary>
    public byte[] QuantizedAbsmaxToArray() =>
        Download(Live(_qabsmax, allowMissing: true) ?? throw new InvalidOperationException($"{Describe()} is not double-quantized."));

    /// <summary>The fp32 absmax2 [NestedBlockCount] (bnb's "weight.nested_absmax").</summary>
    public float[] NestedAbsmaxToArray() =>
        MemoryMarshal.Cast<byte, float>(Download(Live(_absmax2, allowMissing: true)
            ?? throw new InvalidOperationException($"{Describe()} is not double-quantized."))).ToArray();

    /// <summary>Overwrites the codes, plain absmax, qabsmax or absmax2 buffer with <paramref name="bytes"/> (exactly its size).</summary>
    internal void Upload(string buffer, ReadOnlySpan<byte> bytes)
    {
        DeviceBuffer target = buffer switch
        {
            "codes" => Live(_codes),
            "absmax" => Live(_absmax),
            "qabsmax" => Live(_qabsmax),
            "absmax2" => Live(_absmax2),
            _ => throw new ArgumentOutOfRangeException(nameof(buffer), buffer, "No such buffer."),
        };
        if (bytes.Length != target.SizeInBytes)
            throw new ArgumentException($"{Describe()}: the {buffer} buffer holds {target.SizeInBytes} bytes, got {bytes.Length}.", nameof(bytes));
        Device.Upload(target, 0, bytes);
    }

    /// <summary>Allocates the nested statistics (qabsmax, absmax2) next to the plain absmax, before DoubleQuantize fills them.</summary>
    internal void AllocateNested()
    {
        ThrowIfDisposed(nameof(QuantizedWeight));
        if (_qabsmax is not null) throw new InvalidOperationException($"{Describe()} is already double-quantized.");
        _qabsmax = Device.Allocate(BlockCount);
        try
        {
            _absmax2 = Device.Allocate(NestedBlockCount * sizeof(float));
        }
        catch
        {
            Interlocked.Exchange(ref _qabsmax, null)?.Dispose();
            throw;
        }
    }

    /// <summary>Frees the plain absmax once the nested form holds the statistics (bitsandbytes keeps only the nested form).</summary>
    internal void ReleasePlainAbsmax()
    {
        if (_qabsmax is null) throw new InvalidOperationException($"{Describe()} is not double-quantized; its plain absmax is its only statistics.");
        Interlocked.Exchange(ref _absmax, null)?.Dispose();
    }

    /// <summary>Throws ObjectDisposedException naming <paramref name="paramName"/> when the weight has been disposed.</summary>
    internal void ThrowIfDisposed(string paramName)
    {
        if (_disposed) throw new ObjectDisposedException(paramName, $"{paramName} ({Describe()}) has been disposed.");
    }

    /// <summary>Frees codes and statistics. Safe to call more than once.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        Interlocked.Exchange(ref _codes, null)?.Dispose();
        Interlocked.Exchange(ref _absmax, null)?.Dispose();
        Interlocked.Exchange(ref _qabsmax, null)?.Dispose();
        Interlocked.Exchange(ref _absmax2, null)?.Dispose();
    }

    private DeviceBuffer Live(DeviceBuffer? buffer) => Live(buffer, allowMissing: false)!;

    private DeviceBuffer? Live(DeviceBuffer? buffer, bool allowMissing)
    {
        ThrowIfDisposed(nameof(QuantizedWeight));
        if (buffer is null && !allowMissing) throw new InvalidOperationException($"{Describe()} has no such buffer.");
        return buffer;
    }

    private byte[] Download(DeviceBuffer buffer)
    {
        byte[] bytes = new byte[buffer.SizeInBytes];
        Device.Download(buffer, 0, bytes);
        return bytes;
    }
}
