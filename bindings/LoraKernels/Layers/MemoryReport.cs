// Where a layer's memory goes, measured: each figure is the sum of DeviceBuffer.SizeInBytes over
// the buffers the layer (and its optimizer's state for the layer's parameters) actually holds, so
// the report shows what the device pays, not what a formula predicts. The tests check it against
// the formulas (dense: out·in·sizeof(dtype); 4-bit: ⌈n/2⌉ code bytes plus 4 bytes per block, or
// with double quantization 1 byte per block plus 4 bytes per 256 blocks; AdamW 8 bytes per element,
// 8-bit AdamW 2 bytes per element plus 8 per block of 256). Paged optimizer state (pinned host
// memory, a mapped file) is reported apart from the resident state and is not in TotalBytes.
using LoraKernels.Autograd;
using LoraKernels.Optim;

namespace LoraKernels.Layers;

/// <summary>Bytes of one parameter group's optimizer state: resident in the device's memory, or paged (pinned host memory, a mapped file).</summary>
public sealed record OptimizerGroupMemory(string Group, long ResidentBytes, long PagedBytes);

public sealed record MemoryReport(string Layer, long BaseWeightBytes, long StatisticsBytes, long AdapterBytes,
                                  long GradientBytes, long OptimizerStateBytes, long OptimizerPagedBytes = 0)
{
    /// <summary>Every byte of the device's memory counted above (paged optimizer state lives elsewhere).</summary>
    public long TotalBytes => BaseWeightBytes + StatisticsBytes + AdapterBytes + GradientBytes + OptimizerStateBytes;

    /// <summary>An optimizer's state per parameter group, resident and paged (<see cref="Optimizer.StateMemory"/>).</summary>
    public static IReadOnlyList<OptimizerGroupMemory> Of(Optimizer optimizer)
    {
        ArgumentNullException.ThrowIfNull(optimizer);
        return optimizer.StateMemory();
    }

    /// <summary>
    /// A LoRA layer: base = W0 and bias (dense), no statistics, adapter = A and B, gradients of A and B
    /// present now, and <paramref name="optimizer"/>'s state for them (0 when null or before its first step).
    /// </summary>
    public static MemoryReport Of(LoraLinear layer, Optimizer? optimizer = null, string? name = null)
    {
        ArgumentNullException.ThrowIfNull(layer);
        long baseBytes = layer.W0.Buffer.SizeInBytes + (layer.Bias?.Buffer.SizeInBytes ?? 0);
        return WithAdapter(name ?? "LoRA", baseBytes, 0, layer.Parameters(), optimizer);
    }

    /// <summary>A QLoRA layer: base = the packed 4-bit codes and bias, statistics = absmax (plain or nested), adapter as LoRA.</summary>
    public static MemoryReport Of(QloraLinear layer, Optimizer? optimizer = null, string? name = null)
    {
        ArgumentNullException.ThrowIfNull(layer);
        MemoryReport frozen = Of(layer.Base);
        return WithAdapter(name ?? "QLoRA", frozen.BaseWeightBytes, frozen.StatisticsBytes, layer.Parameters(), optimizer);
    }

    /// <summary>A frozen 4-bit layer: codes and bias, and its quantization statistics.</summary>
    public static MemoryReport Of(Nf4Linear layer, string? name = null)
    {
        ArgumentNullException.ThrowIfNull(layer);
        long baseBytes = layer.Weight.CodesBufferBytes + (layer.Bias?.Buffer.SizeInBytes ?? 0);
        return new MemoryReport(name ?? "NF4", baseBytes, layer.Weight.StatisticsBytes, 0, 0, 0);
    }

    private static MemoryReport WithAdapter(string name, long baseBytes, long statisticsBytes, IEnumerable<Parameter> parameters, Optimizer? optimizer)
    {
        long adapter = 0, gradients = 0, state = 0;
        foreach (Parameter parameter in parameters)
        {
            adapter += parameter.Value.Buffer.SizeInBytes;
            gradients += parameter.Grad?.Buffer.SizeInBytes ?? 0;
            state += optimizer?.StateBytes(parameter) ?? 0;
        }
        bool paged = optimizer?.Paging is not null;
        return new MemoryReport(name, baseBytes, statisticsBytes, adapter, gradients, paged ? 0 : state, paged ? state : 0);
    }
}
