using LoraKernels.Autograd;
using LoraKernels.Layers;
using LoraKernels.Optim;

namespace LoraKernels.Demo.Training;

/// <summary>Sizes and hyper-parameters of the Mamba demo's task.</summary>
public sealed record MambaTrainerOptions
{
    public MambaConfig Block { get; init; } = new(ModelFeatures: 16, States: 8, ConvWidth: 4, Expand: 2);
    public int Sequences { get; init; } = 4;
    public int Length { get; init; } = 32;
    public int Rank { get; init; } = 4;
    public float Alpha { get; init; } = 8f;
    /// <summary>Rank and standard deviation of the hidden change the teacher adds to in_proj and out_proj.</summary>
    public int HiddenRank { get; init; } = 2;
    public float HiddenChangeStd { get; init; } = 0.3f;
    public float LearningRate { get; init; } = 1e-2f;
    public ulong Seed { get; init; } = 7;
}

/// <summary>
/// The Mamba demo's task, a small synthetic sequence task: a frozen random Mamba block is the student's base; the
/// teacher is the same block with a hidden rank-<see cref="MambaTrainerOptions.HiddenRank"/> change merged into its
/// in_proj and out_proj. The student, with LoRA on all four projections (in_proj, x_proj, dt_proj, out_proj), learns
/// to reproduce the teacher's outputs on fresh random sequences: MSE and AdamW, every step through the causal
/// convolution and the selective scan (forward and backward) on one device.
/// </summary>
public sealed class MambaTrainer : IDisposable
{
    private readonly Device _device;
    private readonly MambaTrainerOptions _options;
    private readonly SplitMixRandom _batches;
    private readonly MambaBlock _student, _teacher;
    private readonly AdamW _optimizer;
    private readonly Tape _tape = new();

    public MambaTrainer(Device device, MambaTrainerOptions options)
    {
        _device = device;
        _options = options;
        _batches = new SplitMixRandom(options.Seed ^ 0xBA7C4ul);
        using MambaWeights weights = MambaWeights.Random(device, options.Block, options.Seed);
        _student = new MambaBlock(device, options.Block, weights, options.Rank, options.Alpha, MambaBlock.ProjectionNames, options.Seed + 1);
        try
        {
            var random = new SplitMixRandom(options.Seed ^ 0x7EAC4E5ul);
            AddHiddenChange(weights.InProj, random);
            AddHiddenChange(weights.OutProj, random);
            _teacher = new MambaBlock(device, options.Block, weights, 1, 1f, [], options.Seed);
            _optimizer = new AdamW(_student.Parameters(), lr: options.LearningRate, weightDecay: 0f);
        }
        catch
        {
            _student.Dispose();
            _teacher?.Dispose();
            throw;
        }
    }

    public long TrainableParameters => _student.Parameters().Sum(p => p.Value.ElementCount);
    public int StepsTaken { get; private set; }

    /// <summary>One AdamW step on a fresh batch of sequences; returns its loss (MSE against the teacher).</summary>
    public float Step()
    {
        int rows = _options.Sequences * _options.Length, width = _options.Block.ModelFeatures;
        using Tensor x = Tensor.FromArray(_device, _batches.Uniform(rows * width, 1f), rows, width);
        using Tensor target = _teacher.Forward(x, _options.Sequences);
        _tape.Reset();
        Variable y = _student.Forward(_tape, new Variable(x), _options.Sequences);
        float loss = _tape.MseLoss(y, target);
        _tape.Backward();
        _optimizer.Step();
        _optimizer.ZeroGrad();
        StepsTaken++;
        return loss;
    }

    /// <summary>weight += B*·A* with B* ~ N(0, std²) [out, k] and A* ~ N(0, 1/in) [k, in] (in place, on the host).</summary>
    private void AddHiddenChange(Tensor weight, SplitMixRandom random)
    {
        int outFeatures = (int)weight.Shape[0], inFeatures = (int)weight.Shape[1], k = _options.HiddenRank;
        float[] w = weight.ToArray();
        float[] b = random.Normal(outFeatures * k, _options.HiddenChangeStd);
        float[] a = random.Normal(k * inFeatures, 1f / MathF.Sqrt(inFeatures));
        for (int o = 0; o < outFeatures; o++)
            for (int i = 0; i < inFeatures; i++)
                for (int j = 0; j < k; j++) w[o * inFeatures + i] += b[o * k + j] * a[j * inFeatures + i];
        weight.CopyFrom(w);
    }

    public void Dispose()
    {
        _tape.Dispose();
        _optimizer.Dispose();
        _teacher.Dispose();
        _student.Dispose();
    }
}
