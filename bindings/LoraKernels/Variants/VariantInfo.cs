// What the catalogue says about one variant: where it sits in the variant guide's six families,
// its paper, how many parameters it trains on a layer, where it runs, its defaults and whether
// this build has it.
using LoraKernels.Layers;

namespace LoraKernels.Variants;

/// <summary>The six categories of the variant guide (000_9cd751effa0af045.txt, section 1.3).</summary>
public enum VariantFamily
{
    /// <summary>基础 LoRA: the core idea.</summary>
    Basic,
    /// <summary>结构优化型: changes the adapter's structure or how it is injected.</summary>
    Structural,
    /// <summary>数学基础型: changes the mathematics of the low-rank approximation (init, optimization).</summary>
    MathematicalFoundation,
    /// <summary>内存效率型: memory efficiency.</summary>
    MemoryEfficiency,
    /// <summary>多模态与架构扩展型: new architectures (convolutions, MoE, SSM).</summary>
    ArchitectureExtension,
    /// <summary>自动化型: automated hyper-parameter search.</summary>
    Automation,
}

/// <summary>A paper: title, year and arXiv id (null when the variant has no paper of its own; Note says why).</summary>
public sealed record PaperReference(string Title, int Year, string? ArxivId, string? Note = null)
{
    public override string ToString() => ArxivId is null ? $"{Title} ({Year}; {Note})" : $"{Title} ({Year}, arXiv:{ArxivId})";
}

/// <summary>Builds a variant's layer over w0 [out, in] (and bias) on a device, with rank r and the options.</summary>
internal delegate IAdapterLayer LayerFactory(Device device, Tensor w0, Tensor? bias, int r, AdapterOptions options);

public sealed record VariantInfo
{
    /// <summary>The catalogue key (lower case), as <see cref="Catalogue.Create"/> takes it.</summary>
    public required string Name { get; init; }
    public required string DisplayName { get; init; }
    /// <summary>Other names the catalogue accepts for it.</summary>
    public IReadOnlyList<string> Aliases { get; init; } = [];
    public required VariantFamily Family { get; init; }
    public required PaperReference Paper { get; init; }
    public required string Summary { get; init; }
    /// <summary>The trainable-parameter count of one [out, in] layer, as a formula in in, out and the options.</summary>
    public required string ParameterFormula { get; init; }
    internal Func<long, long, AdapterOptions, long> CountParameters { get; init; } =
        (_, _, _) => throw new InvalidOperationException("This catalogue entry has no parameter count.");

    /// <summary>The devices it runs on in this build.</summary>
    public IReadOnlyList<DeviceKind> Backends { get; init; } = [];
    /// <summary>The storage dtypes of its layer in this build.</summary>
    public IReadOnlyList<DType> DTypes { get; init; } = [];
    /// <summary>Its defaults, from REFERENCE.md (PEFT's where PEFT has the variant).</summary>
    public required string Defaults { get; init; }

    /// <summary>The layer factory its family registered (every entry sets one; CatalogueTests builds each).</summary>
    internal LayerFactory Create { get; init; } =
        (_, _, _, _, _) => throw new InvalidOperationException("This catalogue entry has no layer factory.");

    /// <summary>Every device kind, the backends of a variant whose kernels run everywhere.</summary>
    internal static readonly DeviceKind[] AllDevices = [DeviceKind.Cpu, DeviceKind.Simt, DeviceKind.Cuda];

    /// <summary>The dense storage dtypes.</summary>
    internal static readonly DType[] DenseDTypes = [DType.F32, DType.BF16];

    /// <summary>The options' rank, else <paramref name="defaultRank"/> (for parameter-count formulas).</summary>
    internal static long RankOr(AdapterOptions options, int defaultRank) => options.Rank ?? defaultRank;

    /// <summary>The rank used when the options leave it unset.</summary>
    public int DefaultRank { get; init; } = 8;

    /// <summary>Trainable parameters of one layer with <paramref name="inFeatures"/> inputs and <paramref name="outFeatures"/> outputs.</summary>
    public long TrainableParameters(long inFeatures, long outFeatures, AdapterOptions? options = null)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(inFeatures, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(outFeatures, 1);
        return CountParameters(inFeatures, outFeatures, options ?? new AdapterOptions());
    }

    /// <summary>The rank these options give this variant.</summary>
    public int RankOf(AdapterOptions options) => options.Rank ?? DefaultRank;
}
