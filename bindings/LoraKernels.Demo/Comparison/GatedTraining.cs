using System.Diagnostics;
using System.Globalization;
using LoraKernels.Autograd;
using LoraKernels.Layers;
using LoraKernels.Variants;

namespace LoraKernels.Demo.Comparison;

/// <summary>
/// What the gated-rank variants add to the comparison's training loop, and how every variant reports the rank it
/// ends with. SoRA: its sparsity loss (sparse_lambda = 1e-3) and the proximal step on its gates with λ = the learning
/// rate (SoRA's sparse_optimizer_multiply_lr.py form: the demo's cosine schedule takes the learning rate down tenfold,
/// and a fixed λ either prunes nothing in 500 steps or, once above the Adam step, everything; λ = lr keeps the gates
/// whose gradient holds them up). AdaLoRA: its orthogonality loss and rank allocator (init_r = the comparison's r,
/// target_r = r/2, the cubic schedule between the first tenth and the last fifth), with orth_reg_weight 0.01 instead
/// of PEFT's 0.5, which is sized for language-model losses of about 1 and on this task's MSE of about 10⁻² holds A and
/// B on the regulariser (measured: the loss stays at 2·10⁻², against 2·10⁻⁴ at 0.01). The mixture of rank-1 experts
/// needs nothing (its load-balancing loss rides on the tape). MiRA has its own loop (<see cref="RunMira"/>).
/// </summary>
internal sealed class GatedTraining : IDisposable
{
    /// <summary>SoRA's proximal λ as a multiple of the learning rate, and AdaLoRA's orthogonality weight, for this task.</summary>
    private const float SoraLambdaPerLearningRate = 1f, AdaLoraOrthogonalityWeight = 0.01f;

    private readonly IAdapterLayer[] _layers;
    private readonly SoraGates? _sora;
    private readonly AdaLoraAllocator? _adaLora;
    private GatedTraining(IAdapterLayer[] layers, SoraGates? sora, AdaLoraAllocator? adaLora)
    {
        _layers = layers;
        _sora = sora;
        _adaLora = adaLora;
    }

    /// <summary>The extra steps of variant <paramref name="name"/> over <paramref name="layers"/> for a run of <paramref name="steps"/>.</summary>
    public static GatedTraining For(string name, IAdapterLayer[] layers, int steps) => name switch
    {
        "sora" => new GatedTraining(layers, new SoraGates(layers.Cast<GatedRankLinear>(), SoraLambdaPerLearningRate), null),
        "adalora" => new GatedTraining(layers, null, new AdaLoraAllocator(layers.Cast<AdaLoraLinear>(), new AdaLoraOptions
        {
            TotalSteps = steps,
            TargetRank = Math.Max(1, layers.Cast<AdaLoraLinear>().Min(l => l.Rank) / 2),
            Tinit = steps / 10,
            Tfinal = steps / 5,
            DeltaT = Math.Max(1, steps / 50),
            OrthogonalityWeight = AdaLoraOrthogonalityWeight,
        })),
        _ => new GatedTraining(layers, null, null),
    };

    /// <summary>Records the variant's own loss terms after the task loss.</summary>
    public void AddLosses(Tape tape)
    {
        _sora?.AddSparsityLoss(tape);
        _adaLora?.OrthogonalityLoss(tape);
    }

    /// <summary>Runs after the optimizer's step (before ZeroGrad) of 0-based step <paramref name="step"/>, at <paramref name="learningRate"/>.</summary>
    public void AfterStep(int step, float learningRate)
    {
        _sora?.ProximalStep(learningRate);
        _adaLora?.Update(step + 1);
    }

    /// <summary>The rank each layer ends with: the adapter's r, SoRA's and AdaLoRA's surviving ranks, the experts a token uses.</summary>
    public string Rank()
    {
        if (_adaLora is not null) return string.Join(" · ", _adaLora.Ranks());
        return string.Join(" · ", _layers.Select(layer => layer switch
        {
            GatedRankLinear gated => gated.SurvivingRank.ToString(CultureInfo.InvariantCulture),
            LoraLinear lora => lora.Rank.ToString(CultureInfo.InvariantCulture),
            LoraFaLinear fa => fa.Rank.ToString(CultureInfo.InvariantCulture),
            DoraLinear dora => dora.Rank.ToString(CultureInfo.InvariantCulture),
            QloraLinear qlora => qlora.Rank.ToString(CultureInfo.InvariantCulture),
            VeraLinear vera => vera.Rank.ToString(CultureInfo.InvariantCulture),
            RankOneMixtureLinear mixture => $"{mixture.K} of {mixture.Experts}",
            _ => "?",
        }));
    }

    public void Dispose() => _adaLora?.Dispose();

    /// <summary>
    /// MiRA on the demo's task: the bases of <paramref name="students"/>, candidate ranks {2, 4, r}, and the step budget
    /// split into the search (a warm-up and outer steps of 60 inner steps each, 3/5 of the budget) and the chosen
    /// configuration's training (the rest). Its validation batches come from a stream of their own; both splits are
    /// scored against the teacher.
    /// </summary>
    public static ComparisonResult RunMira(Device device, Training.TrainerOptions options, int steps, IAdapterLayer[] students,
                                           LoraLinear[] teachers, string displayName, long liveBytesBefore)
    {
        const int innerSteps = 60;
        int outerSteps = Math.Max(1, steps * 3 / 5 / innerSteps - 1);  // the warm-up takes one inner loop's steps
        var train = new Training.SplitMixRandom(options.Seed ^ 0x5EED_BA7C4ul);
        var validation = new Training.SplitMixRandom(options.Seed ^ 0xFA11_DA7Aul);
        long peak = 0;
        float Loss(Tape tape, IReadOnlyList<IAdapterLayer> layers, MiraSplit split, int step)
        {
            var random = split == MiraSplit.Train ? train : validation;
            using var x = Tensor.FromArray(device, random.Uniform(options.BatchSize * options.InFeatures, MathF.Sqrt(3f)), options.BatchSize,
                                           options.InFeatures);
            using var target = VariantComparison.TeacherForward(teachers, x);
            Variable prediction = layers[1].Forward(tape, tape.Relu(layers[0].Forward(tape, new Variable(x))));
            float loss = tape.MseLoss(prediction, target);
            tape.Backward();
            peak = Math.Max(peak, device.LiveBytes - liveBytesBefore);
            return loss;
        }
        var bases = students.Cast<GatedRankLinear>().Select(s => (s.W0, s.Bias)).ToArray();
        var clock = Stopwatch.StartNew();
        using MiraResult result = MiraSearch.Run(device, bases, Loss, new MiraOptions
        {
            CandidateRanks = new[] { 2, 4, options.Rank }.Distinct().ToArray(),
            InitialAlpha = options.Alpha,
            OuterSteps = outerSteps,
            InnerSteps = innerSteps,
            FinalSteps = Math.Max(1, steps - (outerSteps + 1) * innerSteps),
            LearningRate = options.LearningRate,
            Seed = options.Seed,
        });
        device.Synchronize();
        double seconds = clock.Elapsed.TotalSeconds;
        IReadOnlyList<float> losses = result.TrainLosses;
        int tail = Math.Min(10, losses.Count);
        string ranks = string.Join(" · ", result.Ranks.Zip(result.Alphas, (r, a) => string.Create(CultureInfo.InvariantCulture, $"{r} (α {a:0.#})")));
        return new ComparisonResult(displayName, result.Adapters.Sum(a => a.Parameters().Sum(p => p.Value.ElementCount)),
                                    result.Adapters.Sum(a => a.Parameters().Sum(p => p.Value.SizeInBytes)),
                                    (float)losses.Skip(losses.Count - tail).Average(), losses.Count / Math.Max(seconds, 1e-9), peak,
                                    losses.ToArray(), ranks, seconds);
    }
}
