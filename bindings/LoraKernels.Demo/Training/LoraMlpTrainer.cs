using LoraKernels.Autograd;
using LoraKernels.Layers;
using LoraKernels.Ops;
using LoraKernels.Optim;

namespace LoraKernels.Demo.Training;

/// <summary>Sizes and hyper-parameters of the demo's task.</summary>
public sealed record TrainerOptions
{
    public int InFeatures { get; init; } = 256;
    public int HiddenFeatures { get; init; } = 512;
    public int OutFeatures { get; init; } = 256;
    public int BatchSize { get; init; } = 64;
    /// <summary>Rank and alpha of the adapters that learn (scale = alpha / rank).</summary>
    public int Rank { get; init; } = 8;
    public float Alpha { get; init; } = 16f;
    /// <summary>Rank of the hidden change ΔW = B*·A* that the teacher adds to each layer.</summary>
    public int HiddenRank { get; init; } = 4;
    /// <summary>Standard deviation of B*; A* ~ N(0, 1/in), so each ΔW moves a layer's output by about 2·this per unit input.</summary>
    public float HiddenChangeStd { get; init; } = 0.15f;
    public float LearningRate { get; init; } = 1e-2f;
    /// <summary>When set, the learning rate follows a cosine from LearningRate down to a tenth of it over this many steps (Adam's noise floor falls with it).</summary>
    public int? ScheduleSteps { get; init; }
    public ulong Seed { get; init; } = 2024;
    /// <summary>QLoRA instead of LoRA: the students' frozen bases are stored in NF4 (block size 64, double quantization).</summary>
    public bool QuantizedBase { get; init; }
}

/// <summary>
/// The demo's task: a frozen random MLP (in → hidden → out, ReLU between, biases) is the student's
/// base; the teacher is the same MLP with a hidden rank-<see cref="TrainerOptions.HiddenRank"/>
/// change ΔW = B*·A* merged into each layer's weight. LoRA adapters on the student's two layers
/// learn ΔW from fresh random inputs with AdamW and an MSE loss against the teacher's output
/// (QLoRA adapters over NF4 copies of the bases with <see cref="TrainerOptions.QuantizedBase"/>).
/// Every forward, backward and optimizer step runs through the library on one device.
/// </summary>
public sealed class LoraMlpTrainer : IDisposable
{
    private readonly Device _device;
    private readonly TrainerOptions _options;
    private readonly SplitMixRandom _batches;
    private readonly List<IDisposable> _owned = [];
    private readonly IAdapterLayer _student1, _student2;
    private readonly LoraLinear _teacher1, _teacher2;
    private readonly AdamW _optimizer;
    private readonly Tape _tape = new();

    public LoraMlpTrainer(Device device, TrainerOptions options)
    {
        _device = device;
        _options = options;
        var random = new SplitMixRandom(options.Seed);
        _batches = new SplitMixRandom(options.Seed ^ 0x5EED_BA7C4ul);
        try
        {
            (_student1, _teacher1) = CreateLayerPair(random, options.InFeatures, options.HiddenFeatures, layerSeed: 1);
            (_student2, _teacher2) = CreateLayerPair(random, options.HiddenFeatures, options.OutFeatures, layerSeed: 2);
            _optimizer = Own(new AdamW(_student1.Parameters().Concat(_student2.Parameters()),
                                       lr: options.LearningRate, weightDecay: 0f));
            if (options.ScheduleSteps is int total)
                _optimizer.Schedule = LearningRateSchedule.Cosine(Math.Max(1, total - 1), minimumFactor: 0.1);
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    public Device Device => _device;

    /// <summary>LoRA parameters that learn: r·(in + out) per layer.</summary>
    public long TrainableParameters =>
        (long)_options.Rank * (_options.InFeatures + _options.HiddenFeatures)
        + (long)_options.Rank * (_options.HiddenFeatures + _options.OutFeatures);

    /// <summary>Frozen base weights and biases plus the trainable adapters.</summary>
    public long TotalParameters =>
        TrainableParameters
        + (long)_options.HiddenFeatures * (_options.InFeatures + 1)
        + (long)_options.OutFeatures * (_options.HiddenFeatures + 1);

    public long StepsTaken => _optimizer.StepCount;

    /// <summary>The measured memory of the two student layers and their optimizer state.</summary>
    public IReadOnlyList<MemoryReport> MemoryReports() =>
        [Report(_student1, "layer 1"), Report(_student2, "layer 2")];

    private MemoryReport Report(IAdapterLayer layer, string name) => layer switch
    {
        QloraLinear qlora => MemoryReport.Of(qlora, _optimizer, name),
        LoraLinear lora => MemoryReport.Of(lora, _optimizer, name),
        _ => throw new InvalidOperationException($"No memory report for {layer.GetType().Name}."),
    };

    /// <summary>One AdamW step on a fresh random batch; returns that batch's loss (before the step).</summary>
    public float Step()
    {
        float[] inputs = _batches.Uniform(_options.BatchSize * _options.InFeatures, MathF.Sqrt(3f));  // unit variance
        using var x = Tensor.FromArray(_device, inputs, _options.BatchSize, _options.InFeatures);
        using var target = TeacherForward(x);

        _tape.Reset();
        Variable hidden = _tape.Relu(_student1.Forward(_tape, new Variable(x)));
        Variable prediction = _student2.Forward(_tape, hidden);
        float loss = _tape.MseLoss(prediction, target);
        _tape.Backward();
        _optimizer.Step();
        _optimizer.ZeroGrad();
        return loss;
    }

    public void Dispose()
    {
        _tape.Dispose();
        for (int i = _owned.Count - 1; i >= 0; i--) _owned[i].Dispose();
        _owned.Clear();
    }

    private Tensor TeacherForward(Tensor x)
    {
        using var preActivation = _teacher1.Forward(x);
        using var hidden = Elementwise.Relu(preActivation);
        return _teacher2.Forward(hidden);
    }

    /// <summary>
    /// A frozen base layer W0, bias ~ U(±1/√in) (nn.Linear's init), the student LoRA layer over it,
    /// and the teacher: the same W0 with ΔW = B*·A* merged in (a rank-HiddenRank LoraLinear with
    /// scale 1, merged, so its inference forward is the plain layer x (W0 + ΔW)ᵀ + b). Each layer
    /// keeps its own copy of W0 and the bias.
    /// </summary>
    private (IAdapterLayer Student, LoraLinear Teacher) CreateLayerPair(SplitMixRandom random, int inFeatures, int outFeatures, ulong layerSeed)
    {
        float bound = 1f / MathF.Sqrt(inFeatures);
        float[] hiddenA = random.Normal(_options.HiddenRank * inFeatures, 1f / MathF.Sqrt(inFeatures));
        float[] hiddenB = random.Normal(outFeatures * _options.HiddenRank, _options.HiddenChangeStd);
        using var w0 = Tensor.FromArray(_device, random.Uniform(outFeatures * inFeatures, bound), outFeatures, inFeatures);
        using var bias = Tensor.FromArray(_device, random.Uniform(outFeatures, bound), outFeatures);

        IAdapterLayer student = Own<IAdapterLayer>(_options.QuantizedBase
            ? new QloraLinear(_device, w0, bias, _options.Rank, _options.Alpha, seed: _options.Seed + layerSeed)
            : new LoraLinear(_device, w0, bias, _options.Rank, _options.Alpha, seed: _options.Seed + layerSeed));
        var teacher = Own(new LoraLinear(_device, w0, bias, _options.HiddenRank, alpha: _options.HiddenRank));
        teacher.A.Value.CopyFrom(hiddenA);
        teacher.B.Value.CopyFrom(hiddenB);
        teacher.Merge();
        teacher.Training = false;
        return (student, teacher);
    }

    private T Own<T>(T disposable) where T : IDisposable
    {
        _owned.Add(disposable);
        return disposable;
    }
}
