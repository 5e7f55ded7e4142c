// The losses a training loop ends in: each returns the mean loss and, when asked, its gradient
// with respect to the prediction, which Tape.MseLoss / Tape.CrossEntropyLoss feed to Backward.
// Both are fp32 on every device (a BF16 prediction is cast first: Tape.Cast) and reduce in a fixed
// order, so a run repeats bit for bit (docs/API.md, "Determinism").
namespace LoraKernels.Ops;

/// <summary>A loss value and, when it was asked for, d(loss)/d(prediction) (F32, the prediction's shape); Dispose frees the gradient.</summary>
public readonly record struct LossResult(float Loss, Tensor? Gradient) : IDisposable
{
    public void Dispose() => Gradient?.Dispose();
}

public static class Losses
{
    /// <summary>torch's default ignore_index: rows whose target is this do not count.</summary>
    public const int DefaultIgnoreIndex = -100;

    /// <summary>mean((pred - target)²) and, when asked, its gradient 2(pred - target)/n (F32, same shape and device).</summary>
    public static LossResult Mse(Tensor pred, Tensor target, bool wantGradient = true)
    {
        const string op = "Losses.Mse";
        Elementwise.CheckFp32(op, nameof(pred), pred);
        Checks.Alive(target, op, nameof(target));
        Checks.SameAs(op, nameof(target), target, nameof(pred), pred);
        if (!wantGradient) return new(pred.Device.Backend.MseLoss(pred, target, null), null);
        float loss = 0f;
        Tensor gradient = Elementwise.Produce(pred, DType.F32, dpred => loss = pred.Device.Backend.MseLoss(pred, target, dpred));
        return new(loss, gradient);
    }

    /// <summary>
    /// Softmax cross-entropy of <paramref name="logits"/> [M, C] (F32) against class indices
    /// <paramref name="targets"/> (M values in [0, C), or <paramref name="ignoreIndex"/> for rows that do
    /// not count), as torch.nn.functional.cross_entropy with reduction "mean": the mean over counted rows of
    /// logsumexp(x_i) - (1 - ε)·x_i[t_i] - ε·mean_j x_i[j], ε = <paramref name="labelSmoothing"/> in [0, 1].
    /// NaN when no row counts (as torch). The gradient is (softmax - (1 - ε)·onehot - ε/C) / count, and 0 on
    /// ignored rows. Numerically stable for any logit magnitude (the row's max is subtracted first).
    /// </summary>
    public static LossResult CrossEntropy(Tensor logits, ReadOnlySpan<int> targets, int ignoreIndex = DefaultIgnoreIndex,
                                          float labelSmoothing = 0f, bool wantGradient = true)
    {
        const string op = "Losses.CrossEntropy";
        Elementwise.CheckFp32(op, nameof(logits), logits);
        if (logits.Rank != 2 || logits.Shape[1] < 1)
            throw new ArgumentException($"{op}: logits must be [M, C] with C ≥ 1 classes, got {logits.Describe()}.", nameof(logits));
        long rows = logits.Shape[0], classes = logits.Shape[1];
        if (targets.Length != rows)
            throw new ArgumentException($"{op}: targets must hold one class per row of logits ({rows}), got {targets.Length}.", nameof(targets));
        if (!(labelSmoothing >= 0f && labelSmoothing <= 1f))
            throw new ArgumentOutOfRangeException(nameof(labelSmoothing), labelSmoothing, $"{op}: labelSmoothing must be in [0, 1].");
        int count = 0;
        for (int i = 0; i < targets.Length; i++)
        {
            if (targets[i] == ignoreIndex) continue;
            if ((uint)targets[i] >= (ulong)classes)
                throw new ArgumentOutOfRangeException(nameof(targets), targets[i],
                    $"{op}: targets[{i}] = {targets[i]} is not a class of logits {logits.Describe()} (0 to {classes - 1}) nor ignoreIndex {ignoreIndex}.");
            count++;
        }
        var problem = new CrossEntropyProblem(targets.ToArray(), ignoreIndex, labelSmoothing, count);
        if (!wantGradient) return new(logits.Device.Backend.CrossEntropy(logits, problem, null), null);
        float loss = 0f;
        Tensor gradient = Elementwise.Produce(logits, DType.F32, dlogits => loss = logits.Device.Backend.CrossEntropy(logits, problem, dlogits));
        return new(loss, gradient);
    }
}

/// <summary>Checked cross-entropy arguments: the targets and how many rows count.</summary>
internal sealed record CrossEntropyProblem(int[] Targets, int IgnoreIndex, float LabelSmoothing, int Count);
