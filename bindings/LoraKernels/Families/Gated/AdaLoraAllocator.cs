// AdaLoRA's rank budget (REFERENCE.md 6.3-6.6; PEFT's RankAllocator and AdaLoraModel.update_and_allocate),
// beside any optimizer: OrthogonalityLoss records the regulariser on the tape before Backward, and
// Update(step) runs after the optimizer's Step and before ZeroGrad, as PEFT's update_and_allocate:
//   step <  T - tfinal: the importance EMAs of every element of A, E, B (I = |p ⊙ grad|, Ī and U with
//                       β1, β2), then, when the cubic schedule says so, the mask at its budget;
//   step == T - tfinal: the final mask at the target budget, the rank pattern kept, the EMAs reset;
//   step >  T - tfinal: the kept pattern re-applied (masked Λ may regrow under the optimizer).
// A triplet's score is S_E + mean_k S_A[i, k] + mean_j S_B[j, i] with S = Ī ⊙ U; the mask zeroes every Λ_i
// whose score is at most the k-th smallest over all layers, k = init_bgt - budget (torch.kthvalue), and
// leaves A and B alone. Where PEFT's kthvalue would fail (k = 0: budget = init_bgt), nothing is masked.
// The EMAs live on the layers' device (Ops of the gated family: lk_*_gated_sensitivity, _triplet_score);
// the scores come back to the host (init_r floats per layer) for the threshold, and the masks go to Λ.
using LoraKernels.Autograd;
using LoraKernels.Families.Gated;
using LoraKernels.Layers;

namespace LoraKernels.Variants;

/// <summary>AdaLoRA's configuration (PEFT's AdaLoraConfig; init_r is each layer's rank).</summary>
public sealed record AdaLoraOptions
{
    /// <summary>total_step: required, &gt; 0.</summary>
    public required int TotalSteps { get; init; }
    public int TargetRank { get; init; } = 8;
    public int Tinit { get; init; }
    public int Tfinal { get; init; }
    public int DeltaT { get; init; } = 1;
    public float Beta1 { get; init; } = 0.85f;
    public float Beta2 { get; init; } = 0.85f;
    public float OrthogonalityWeight { get; init; } = 0.5f;
}

public sealed class AdaLoraAllocator : IDisposable
{
    private readonly AdaLoraLinear[] _layers;
    private readonly Ema[][] _ema;  // per layer: A, E, B
    private bool[][]? _finalPattern;
    private bool _disposed;

    public AdaLoraAllocator(IEnumerable<AdaLoraLinear> layers, AdaLoraOptions options)
    {
        ArgumentNullException.ThrowIfNull(layers);
        ArgumentNullException.ThrowIfNull(options);
        _layers = layers.ToArray();
        if (_layers.Length == 0 || _layers.Any(l => l is null))
            throw new ArgumentException("AdaLoraAllocator: give at least one layer, and no null.", nameof(layers));
        if (_layers.Distinct(ReferenceEqualityComparer.Instance).Count() != _layers.Length)
            throw new ArgumentException("AdaLoraAllocator: a layer appears more than once.", nameof(layers));
        Check(options, _layers.Length, _layers.Sum(l => l.Rank));
        Options = options;
        InitialBudget = _layers.Sum(l => l.Rank);
        TargetBudget = options.TargetRank * _layers.Length;
        _ema = new Ema[_layers.Length][];
        try
        {
            for (int i = 0; i < _layers.Length; i++)
                _ema[i] = [new Ema(_layers[i].A.Value), new Ema(_layers[i].E.Value), new Ema(_layers[i].B.Value)];
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    public AdaLoraOptions Options { get; }

    /// <summary>init_bgt: the sum of the layers' ranks.</summary>
    public int InitialBudget { get; }

    /// <summary>target_bgt: target_r per layer.</summary>
    public int TargetBudget { get; }

    /// <summary>The last threshold applied (the k-th smallest triplet score), or null before any mask.</summary>
    public float? LastThreshold { get; private set; }

    /// <summary>Each layer's kept triplets: its rank pattern's count, or its rank before any mask (the final ranks after T - tfinal).</summary>
    public int[] Ranks() => _layers.Select(l => l.RankPattern?.Count(k => k) ?? l.Rank).ToArray();

    /// <summary>PEFT's budget_schedule(step): the budget and whether this step masks.</summary>
    public (int Budget, bool Mask) BudgetSchedule(int step) => BudgetSchedule(step, Options, InitialBudget, TargetBudget);

    /// <summary>The schedule for any configuration: init until tinit, cubic decay to the target, the target after T - tfinal.</summary>
    public static (int Budget, bool Mask) BudgetSchedule(int step, AdaLoraOptions options, int initialBudget, int targetBudget)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (step <= options.Tinit) return (initialBudget, false);
        if (step > options.TotalSteps - options.Tfinal) return (targetBudget, true);
        double multiplier = 1.0 - (double)(step - options.Tinit) / (options.TotalSteps - options.Tfinal - options.Tinit);
        int budget = (int)((initialBudget - targetBudget) * (multiplier * multiplier * multiplier) + targetBudget);
        return (budget, step % options.DeltaT == 0);
    }

    /// <summary>
    /// Records the orthogonality regulariser mean_{A, B of every layer} ‖C − I‖_F (C = A·Aᵀ for lora_A, BᵀB for lora_B)
    /// on the tape, weighted by OrthogonalityWeight (Tape.AddLoss), and returns the weighted value. Call it after the
    /// task loss, before Backward (PEFT adds it in AdaLoraModel.forward).
    /// </summary>
    public float OrthogonalityLoss(Tape tape)
    {
        ArgumentNullException.ThrowIfNull(tape);
        ObjectDisposedException.ThrowIf(_disposed, this);
        var factors = new List<(Parameter Parameter, bool Transpose)>();
        foreach (AdaLoraLinear layer in _layers)
        {
            factors.Add((layer.A, false));
            factors.Add((layer.B, true));
        }
        var grams = new Tensor[factors.Count];
        var norms = new double[factors.Count];
        try
        {
            for (int i = 0; i < factors.Count; i++)
            {
                grams[i] = AdaLoraMath.Gram(factors[i].Parameter.Value, factors[i].Transpose);
                norms[i] = ShiftedNorm(grams[i].ToArray(), (int)grams[i].Shape[0]);
            }
        }
        catch
        {
            foreach (Tensor? gram in grams) gram?.Dispose();
            throw;
        }
        int count = factors.Count;
        Tensor value = Tensor.FromArray(_layers[0].Device, [(float)(norms.Sum() / count)], 1);
        Variable loss = tape.Record(value, [], factors.Select(f => f.Parameter).ToArray(), g =>
        {
            double seed = g.OutputGradient.ToArray()[0];
            var gradients = new Tensor?[count];
            for (int i = 0; i < count; i++)
            {
                // d‖C − I‖_F = 2·(C − I)·X / ‖C − I‖_F (A) or 2·X·(C − I) / ‖C − I‖_F (B); zero where the norm is 0.
                if (!g.NeedsParameter(i)) continue;
                float coefficient = norms[i] > 0 ? (float)(seed * 2.0 / (norms[i] * count)) : 0f;
                gradients[i] = AdaLoraMath.OrthogonalityGradient(factors[i].Parameter.Value, grams[i], factors[i].Transpose, coefficient);
            }
            return new Gradients([], gradients);
        }, grams);
        return tape.AddLoss(loss, Options.OrthogonalityWeight);
    }

    /// <summary>
    /// PEFT's update_and_allocate(step): call after the optimizer's Step and before ZeroGrad (the EMAs read the
    /// gradients). Returns the budget of this step, or null once the final pattern is only re-applied.
    /// </summary>
    public int? Update(int step)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        int final = Options.TotalSteps - Options.Tfinal;
        if (step > final)
        {
            if (_finalPattern is null)
                throw new InvalidOperationException($"AdaLoraAllocator.Update({step}): step {final} (total_step - tfinal), which fixes the final pattern, was never run.");
            for (int i = 0; i < _layers.Length; i++) ApplyMask(_layers[i], _finalPattern[i]);
            return null;
        }
        if (step < final) UpdateImportance();
        var (budget, mask) = BudgetSchedule(step);
        if (mask || step == final) MaskToBudget(budget);
        if (step == final)
        {
            _finalPattern = _layers.Select(l => l.RankPattern!).ToArray();
            foreach (Ema ema in _ema.SelectMany(e => e)) ema.Reset();
        }
        return budget;
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        foreach (Ema[]? layer in _ema)
            if (layer is not null)
                foreach (Ema ema in layer) ema.Dispose();
    }

    /// <summary>I = |p ⊙ grad| into the EMAs of every element of A, E and B.</summary>
    private void UpdateImportance()
    {
        for (int i = 0; i < _layers.Length; i++)
        {
            Parameter[] parameters = [_layers[i].A, _layers[i].E, _layers[i].B];
            for (int j = 0; j < 3; j++)
            {
                Tensor grad = parameters[j].Grad ?? throw new InvalidOperationException(
                    $"AdaLoraAllocator.Update: {parameters[j].Name} has no gradient; call Update after Backward and the optimizer's Step, before ZeroGrad.");
                AdaLoraMath.Sensitivity(parameters[j].Value, grad, _ema[i][j].Importance, _ema[i][j].Uncertainty, Options.Beta1, Options.Beta2);
            }
        }
    }

    /// <summary>Zeroes every Λ_i whose triplet score is at most the (init_bgt − budget)-th smallest, and records each layer's pattern.</summary>
    private void MaskToBudget(int budget)
    {
        var scores = new float[_layers.Length][];
        for (int i = 0; i < _layers.Length; i++) scores[i] = AdaLoraMath.TripletScores(_ema[i]);
        int k = InitialBudget - budget;
        float threshold = float.NegativeInfinity;
        if (k > 0)
        {
            float[] all = scores.SelectMany(s => s).Order().ToArray();
            threshold = all[k - 1];
        }
        LastThreshold = threshold;
        for (int i = 0; i < _layers.Length; i++)
        {
            float[] layerScores = scores[i];
            ApplyMask(_layers[i], Array.ConvertAll(layerScores, s => !(s <= threshold)));
        }
    }

    /// <summary>Λ_i = 0 where the pattern is false; the pattern becomes the layer's RankPattern.</summary>
    private static void ApplyMask(AdaLoraLinear layer, bool[] keep)
    {
        float[] e = layer.E.Value.ToArray();
        for (int i = 0; i < e.Length; i++) if (!keep[i]) e[i] = 0f;
        layer.E.Value.CopyFrom(e);
        layer.RankPattern = keep;
    }

    /// <summary>‖C − I‖_F of an r×r matrix, in double.</summary>
    private static double ShiftedNorm(float[] c, int side)
    {
        double sum = 0;
        for (int i = 0; i < side; i++)
            for (int j = 0; j < side; j++)
            {
                double v = c[i * side + j] - (i == j ? 1.0 : 0.0);
                sum += v * v;
            }
        return Math.Sqrt(sum);
    }

    private static void Check(AdaLoraOptions o, int layers, int initialBudget)
    {
        const string op = "AdaLoraAllocator";
        if (o.TotalSteps <= 0) throw new ArgumentOutOfRangeException(nameof(o.TotalSteps), o.TotalSteps, $"{op}: total_step must be > 0.");
        if (o.TargetRank < 0) throw new ArgumentOutOfRangeException(nameof(o.TargetRank), o.TargetRank, $"{op}: target_r must be >= 0.");
        if (o.TargetRank * layers > initialBudget)
            throw new ArgumentOutOfRangeException(nameof(o.TargetRank), o.TargetRank,
                $"{op}: the target budget target_r·layers = {o.TargetRank * layers} is above the initial budget Σ init_r = {initialBudget}.");
        if (o.Tinit < 0 || o.Tfinal < 0) throw new ArgumentOutOfRangeException(nameof(o.Tinit), $"{op}: tinit and tfinal must be >= 0.");
        if (!(o.Tinit < o.TotalSteps - o.Tfinal))
            throw new ArgumentException($"{op}: tinit = {o.Tinit} must be below total_step - tfinal = {o.TotalSteps - o.Tfinal} (PEFT's requirement).", nameof(o));
        if (o.DeltaT < 1) throw new ArgumentOutOfRangeException(nameof(o.DeltaT), o.DeltaT, $"{op}: deltaT must be >= 1.");
        if (!(o.Beta1 >= 0f && o.Beta1 < 1f) || !(o.Beta2 >= 0f && o.Beta2 < 1f))
            throw new ArgumentOutOfRangeException(nameof(o.Beta1), $"{op}: beta1 and beta2 must be in [0, 1).");
        if (!(o.OrthogonalityWeight >= 0f) || !float.IsFinite(o.OrthogonalityWeight))
            throw new ArgumentOutOfRangeException(nameof(o.OrthogonalityWeight), o.OrthogonalityWeight, $"{op}: orth_reg_weight must be finite and >= 0.");
    }

    /// <summary>One parameter's EMAs Ī and U (F32, its shape, on its device).</summary>
    internal sealed class Ema : IDisposable
    {
        public Ema(Tensor parameter)
        {
            Importance = Tensor.Zeros(parameter.Device, DType.F32, [.. parameter.Shape]);
            try
            {
                Uncertainty = Tensor.Zeros(parameter.Device, DType.F32, [.. parameter.Shape]);
            }
            catch
            {
                Importance.Dispose();
                throw;
            }
        }

        public Tensor Importance { get; }
        public Tensor Uncertainty { get; }

        /// <summary>PEFT's reset_ipt: the EMAs start again from zero.</summary>
        public void Reset()
        {
            Ops.Elementwise.Fill(Importance, 0f);
            Ops.Elementwise.Fill(Uncertainty, 0f);
        }

        public void Dispose()
        {
            Importance.Dispose();
            Uncertainty.Dispose();
        }
    }
}
