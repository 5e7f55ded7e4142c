// SoRA's sparsity machinery (REFERENCE.md 7.3, TsinghuaC3I/SoRA's SparseAdamW and trainer), as steps
// that run beside any optimizer rather than inside one: the L1 term sparse_lambda·Σ|g|/numel(g) the
// trainer adds to the loss (recorded on the tape), and the proximal soft-threshold the sparse optimizer
// applies to the gates after its AdamW step (λ = sparse_lambda_2, not multiplied by the learning rate, as
// the sparse_optimizer.py that run_glue.py imports), with its λ schedule (linear, log_linear or
// exp_linear from sparse_lambda_2 to max_lambda over lambda_num values, advanced by StepLambda).
// SoRA trains the gates without weight decay: give them a ParameterGroup of their own with weight
// decay 0. Once training is done, GatedRankLinear.Prune drops the ranks whose gate is zero.
using LoraKernels.Autograd;
using LoraKernels.Layers;

namespace LoraKernels.Variants;

/// <summary>SoRA's λ schedules (SparseAdamW's lambda_schedule).</summary>
public enum SoraLambdaSchedule
{
    /// <summary>λ stays sparse_lambda_2.</summary>
    None,
    /// <summary>np.linspace(λ₀, max_lambda, lambda_num).</summary>
    Linear,
    /// <summary>log(np.linspace(exp(λ₀), exp(max_lambda), lambda_num)).</summary>
    LogLinear,
    /// <summary>exp(np.linspace(log(λ₀), log(max_lambda), lambda_num)).</summary>
    ExpLinear,
}

public sealed class SoraGates
{
    /// <summary>SoRA's defaults: sparse_lambda = sparse_lambda_2 = 1e-3, max_lambda = 10, lambda_num = 10.</summary>
    public const float DefaultLambda = 1e-3f, DefaultMaxLambda = 10f;
    public const int DefaultLambdaCount = 10;

    private readonly GatedRankLinear[] _layers;
    private readonly double[] _lambdas;
    private int _index;

    /// <summary>
    /// The gates of <paramref name="layers"/>, thresholded with <paramref name="lambda"/> (sparse_lambda_2) or, with a
    /// schedule, with the schedule's values from <paramref name="lambda"/> to <paramref name="maxLambda"/> in
    /// <paramref name="lambdaCount"/> steps.
    /// </summary>
    public SoraGates(IEnumerable<GatedRankLinear> layers, float lambda = DefaultLambda, SoraLambdaSchedule schedule = SoraLambdaSchedule.None,
                     float maxLambda = DefaultMaxLambda, int lambdaCount = DefaultLambdaCount)
    {
        ArgumentNullException.ThrowIfNull(layers);
        _layers = layers.ToArray();
        if (_layers.Length == 0 || _layers.Any(l => l is null))
            throw new ArgumentException("SoraGates: give at least one layer, and no null.", nameof(layers));
        _lambdas = LambdaValues(lambda, schedule, maxLambda, lambdaCount);
        LambdaSchedule = schedule;
    }

    /// <summary>The λ the next ProximalStep uses.</summary>
    public float Lambda => (float)_lambdas[_index];

    /// <summary>Every λ of the schedule, in order (one value without a schedule).</summary>
    public IReadOnlyList<double> Lambdas => _lambdas;

    public SoraLambdaSchedule LambdaSchedule { get; }

    /// <summary>The λ schedule's values (SparseAdamW._build_lambda_list), computed in double as numpy does.</summary>
    public static double[] LambdaValues(float lambda, SoraLambdaSchedule schedule, float maxLambda = DefaultMaxLambda, int lambdaCount = DefaultLambdaCount)
    {
        if (!(lambda >= 0f) || !float.IsFinite(lambda))
            throw new ArgumentOutOfRangeException(nameof(lambda), lambda, "SoraGates: lambda must be finite and >= 0.");
        if (schedule == SoraLambdaSchedule.None) return [lambda];
        if (!float.IsFinite(maxLambda) || maxLambda < lambda)
            throw new ArgumentOutOfRangeException(nameof(maxLambda), maxLambda, $"SoraGates: max_lambda must be finite and >= lambda = {lambda}.");
        if (lambdaCount < 1) throw new ArgumentOutOfRangeException(nameof(lambdaCount), lambdaCount, "SoraGates: lambda_num must be >= 1.");
        if (schedule == SoraLambdaSchedule.ExpLinear && lambda <= 0f)
            throw new ArgumentOutOfRangeException(nameof(lambda), lambda, "SoraGates: the exp_linear schedule takes log(lambda), so lambda must be > 0.");
        double[] values = new double[lambdaCount];
        for (int i = 0; i < lambdaCount; i++)
        {
            double t = lambdaCount == 1 ? 0 : (double)i / (lambdaCount - 1);
            values[i] = schedule switch
            {
                SoraLambdaSchedule.Linear => Lerp(lambda, maxLambda, t),
                SoraLambdaSchedule.LogLinear => Math.Log(Lerp(Math.Exp(lambda), Math.Exp(maxLambda), t)),
                SoraLambdaSchedule.ExpLinear => Math.Exp(Lerp(Math.Log(lambda), Math.Log(maxLambda), t)),
                _ => throw new ArgumentOutOfRangeException(nameof(schedule), schedule, "SoraGates: unknown schedule."),
            };
        }
        return values;
    }

    /// <summary>SoRA's step_lambda: moves to the schedule's next λ; false (λ kept) once at its end or without a schedule.</summary>
    public bool StepLambda()
    {
        if (_index >= _lambdas.Length - 1) return false;
        _index++;
        return true;
    }

    /// <summary>
    /// Records sparse_lambda·Σ|g|/numel(g) over every gate as a tape loss (its gradient sparse_lambda·sign(g)/numel,
    /// 0 at g = 0 as torch's abs) and returns its value.
    /// </summary>
    public float AddSparsityLoss(Tape tape, float sparseLambda = DefaultLambda)
    {
        ArgumentNullException.ThrowIfNull(tape);
        if (!(sparseLambda >= 0f) || !float.IsFinite(sparseLambda))
            throw new ArgumentOutOfRangeException(nameof(sparseLambda), sparseLambda, "SoraGates: sparse_lambda must be finite and >= 0.");
        Parameter[] gates = _layers.Select(l => l.Gate).ToArray();
        float[][] values = gates.Select(g => g.Value.ToArray()).ToArray();
        long count = values.Sum(v => (long)v.Length);
        double sum = values.Sum(v => v.Sum(g => (double)Math.Abs(g)));
        Device device = gates[0].Value.Device;
        Variable loss = tape.Record(Tensor.FromArray(device, [(float)(sparseLambda * sum / count)], 1), [], gates, g =>
        {
            double seed = g.OutputGradient.ToArray()[0] * (double)sparseLambda / count;
            return new Gradients([], values.Select((v, i) => g.NeedsParameter(i)
                ? Tensor.FromArray(device, Array.ConvertAll(v, x => (float)(Math.Sign(x) * seed)), v.Length)
                : null).ToArray());
        });
        return tape.AddLoss(loss);
    }

    /// <summary>
    /// The proximal step on every gate with the current λ times <paramref name="lambdaScale"/> (Ops.Gated.SoftThreshold):
    /// run it after the optimizer's step. The default 1 is the sparse_optimizer.py run_glue.py imports; passing the
    /// learning rate is its sparse_optimizer_multiply_lr.py, whose threshold follows a decaying learning rate. Returns the
    /// number of gates that are zero afterwards.
    /// </summary>
    public int ProximalStep(float lambdaScale = 1f)
    {
        if (!(lambdaScale >= 0f) || !float.IsFinite(lambdaScale))
            throw new ArgumentOutOfRangeException(nameof(lambdaScale), lambdaScale, "SoraGates.ProximalStep: the scale of lambda must be finite and >= 0.");
        int zeros = 0;
        foreach (GatedRankLinear layer in _layers)
        {
            Ops.Gated.SoftThreshold(layer.Gate.Value, Lambda * lambdaScale);
            zeros += layer.Rank - layer.SurvivingRank;
        }
        return zeros;
    }

    /// <summary>Each layer's surviving rank (gates not zero), in the order given.</summary>
    public int[] SurvivingRanks() => _layers.Select(l => l.SurvivingRank).ToArray();

    private static double Lerp(double from, double to, double t) => from + (to - from) * t;
}
