// Reverse-mode autograd. An op runs forward at once and is recorded with Record: the tape keeps its
// output and the tensors its backward needs, and a closure that, during Backward, turns the output's
// gradient into its inputs' and parameters' gradients; Backward runs the closures in reverse order.
// Layers record themselves (each adapter layer's Forward(Tape, Variable) calls Record with its own
// backward), so the tape knows no layer; the graph ops here (ReLU, casts) use Record too, and a new
// graph op (softmax, top-k, gather, scatter-add for routers) is one more Record call. Gradients
// reaching the same variable or parameter are summed (axpy): parameters keep summing across backward
// passes until ZeroGrad, as in PyTorch. Every tensor the tape creates (op outputs, saved intermediates such as
// LoRA's u, variable gradients) is owned by the tape and freed on Reset or Dispose; parameter
// gradients belong to their parameters.
namespace LoraKernels.Autograd;

public sealed class Tape : IDisposable
{
    private readonly List<Action> _backward = new();
    private readonly List<Tensor> _owned = new();
    private readonly List<Variable> _gradientHolders = new();
    private long _recording;
    private bool _hasLoss;
    private bool _backwardDone;
    private bool _disposed;

    /// <summary>
    /// Records an op whose forward has already run: the tape takes ownership of <paramref name="output"/>
    /// and of <paramref name="saved"/> (tensors its backward reads) and returns the output's variable.
    /// When the output depends on an input or parameter that requires a gradient, <paramref name="backward"/>
    /// runs during <see cref="Backward()"/> with the output's gradient; its <see cref="Gradients"/> are summed
    /// into the inputs' and parameters' Grad. Inputs must come from the caller or from this tape's
    /// current recording (an output of another tape could never receive its gradient).
    /// </summary>
    public Variable Record(Tensor output, IReadOnlyList<Variable> inputs, IReadOnlyList<Parameter> parameters,
                           BackwardFunction backward, params Tensor[] saved)
    {
        ArgumentNullException.ThrowIfNull(output);
        ArgumentNullException.ThrowIfNull(inputs);
        ArgumentNullException.ThrowIfNull(parameters);
        ArgumentNullException.ThrowIfNull(backward);
        ArgumentNullException.ThrowIfNull(saved);
        try
        {
            ThrowIfUnusable();
            for (int i = 0; i < inputs.Count; i++) CheckInput(inputs[i], $"inputs[{i}]");
        }
        catch
        {
            output.Dispose();
            foreach (Tensor tensor in saved) tensor?.Dispose();
            throw;
        }
        Own(output);
        foreach (Tensor tensor in saved) Own(tensor);
        bool requiresGrad = inputs.Any(v => v.RequiresGrad) || parameters.Any(p => p.RequiresGrad);
        var result = NewOutput(output, requiresGrad);
        if (requiresGrad)
        {
            Variable[] inputList = [.. inputs];
            Parameter[] parameterList = [.. parameters];
            _backward.Add(() =>
            {
                if (result.Grad is null) return;
                Accumulate(inputList, parameterList, backward(new BackwardContext(result.Grad, inputList, parameterList)));
            });
        }
        return result;
    }

    /// <summary>Records max(x, 0) (F32).</summary>
    public Variable Relu(Variable x)
    {
        CheckInput(x);
        ThrowIfUnusable();
        return Record(Ops.Elementwise.Relu(x.Value), [x], [],
                      g => Gradients.ForInputs(Ops.Elementwise.ReluBackward(x.Value, g.OutputGradient)));
    }

    /// <summary>Records a dtype conversion (e.g. a BF16 layer's output to F32 for ReLU or the loss); its gradient is cast back.</summary>
    public Variable Cast(Variable x, DType dtype)
    {
        CheckInput(x);
        ThrowIfUnusable();
        DType inputDType = x.Value.DType;
        return Record(Ops.Elementwise.Cast(x.Value, dtype), [x], [],
                      g => Gradients.ForInputs(Ops.Elementwise.Cast(g.OutputGradient, inputDType)));
    }

    /// <summary>Records the loss mean((pred - target)²) (F32) and returns its value; Backward starts from it.</summary>
    public float MseLoss(Variable pred, Tensor target)
    {
        CheckInput(pred);
        ThrowIfUnusable();
        return RecordLoss(pred, Ops.Losses.Mse(pred.Value, target, wantGradient: pred.RequiresGrad));
    }

    /// <summary>
    /// Records the softmax cross-entropy of <paramref name="logits"/> [M, C] (F32) against class indices
    /// <paramref name="targets"/> (see <see cref="Ops.Losses.CrossEntropy"/>: torch's mean reduction,
    /// ignoreIndex and label smoothing) and returns its value; Backward starts from it.
    /// </summary>
    public float CrossEntropyLoss(Variable logits, ReadOnlySpan<int> targets, int ignoreIndex = Ops.Losses.DefaultIgnoreIndex,
                                  float labelSmoothing = 0f)
    {
        CheckInput(logits);
        ThrowIfUnusable();
        return RecordLoss(logits, Ops.Losses.CrossEntropy(logits.Value, targets, ignoreIndex, labelSmoothing, wantGradient: logits.RequiresGrad));
    }

    private float RecordLoss(Variable prediction, Ops.LossResult result)
    {
        _hasLoss = true;
        if (result.Gradient is { } gradient)
        {
            Own(gradient);
            _backward.Add(() => AccumulateVariable(prediction, gradient));
        }
        return result.Loss;
    }

    /// <summary>
    /// Adds weight·<paramref name="loss"/> (a one-element F32 output of an op recorded on this tape, e.g. a router's
    /// load-balancing loss or a regulariser) to the loss Backward starts from, and returns weight·loss.
    /// </summary>
    public float AddLoss(Variable loss, float weight = 1f)
    {
        CheckInput(loss);
        ThrowIfUnusable();
        if (loss.Value.ElementCount != 1 || loss.Value.DType != DType.F32)
            throw new ArgumentException($"Tape.AddLoss: loss must be one F32 value, got {loss.Value.Describe()}", nameof(loss));
        Ops.Checks.Finite("Tape.AddLoss", nameof(weight), weight);
        _hasLoss = true;
        if (loss.RequiresGrad)
        {
            Tensor seed = Own(Tensor.FromArray(loss.Value.Device, [weight], [.. loss.Value.Shape]));
            _backward.Add(() => AccumulateVariable(loss, seed));
        }
        return weight * loss.Value.ToArray()[0];
    }

    /// <summary>
    /// Back-propagates from the recorded loss(es): fills Grad of every parameter and input variable
    /// that requires it. Runs once per recording; Reset the tape to record the next step.
    /// </summary>
    public void Backward()
    {
        ThrowIfUnusable();
        if (!_hasLoss) throw new InvalidOperationException("Backward needs a loss: record one with MseLoss, CrossEntropyLoss or AddLoss, or call Backward(output, gradient) with your own loss's gradient.");
        _backwardDone = true;
        for (int i = _backward.Count - 1; i >= 0; i--) _backward[i]();
    }

    /// <summary>
    /// Back-propagates from <paramref name="output"/> given d(loss)/d(output) = <paramref name="gradient"/>
    /// (the output's dtype and shape; copied, the caller keeps it), for a loss the tape does not compute:
    /// fills Grad of every parameter and input variable that requires it, as <see cref="Backward()"/> does.
    /// Any loss recorded on the tape contributes as well.
    /// </summary>
    public void Backward(Variable output, Tensor gradient)
    {
        ThrowIfUnusable();
        CheckInput(output);
        if (output.Producer is null)
            throw new ArgumentException("Backward: output is an input the caller made, not an op recorded on this tape.", nameof(output));
        Ops.Checks.Alive(gradient, "Tape.Backward", nameof(gradient));
        Ops.Checks.SameAs("Tape.Backward", nameof(gradient), gradient, "output", output.Value);
        _backwardDone = true;
        if (output.RequiresGrad) AccumulateVariable(output, Own(gradient.Clone()));
        for (int i = _backward.Count - 1; i >= 0; i--) _backward[i]();
    }

    /// <summary>Frees everything the tape owns (op outputs, intermediates, variable gradients) and forgets the recording.</summary>
    public void Reset()
    {
        foreach (Variable holder in _gradientHolders) holder.Grad = null;
        _gradientHolders.Clear();
        foreach (Tensor tensor in _owned) tensor.Dispose();
        _owned.Clear();
        _backward.Clear();
        _hasLoss = false;
        _backwardDone = false;
        _recording++;
    }

    public void Dispose()
    {
        if (_disposed) return;
        Reset();
        _disposed = true;
    }

    private void ThrowIfUnusable()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_backwardDone) throw new InvalidOperationException("Backward has already run on this recording; call Reset before recording the next step.");
    }

    /// <summary>
    /// An op's input must be a caller-made variable or an output of this tape's current recording: an
    /// output of another tape would never receive its gradient, since only that tape can run its backward.
    /// </summary>
    internal void CheckInput(Variable x, [System.Runtime.CompilerServices.CallerArgumentExpression(nameof(x))] string name = "")
    {
        ArgumentNullException.ThrowIfNull(x, name);
        if (x.Producer is null) return;
        if (!ReferenceEquals(x.Producer, this))
            throw new InvalidOperationException(
                $"{name} ({x.Value.Describe()}) was recorded on another tape; its gradient could never reach that tape's ops. Record the whole step on one tape.");
        if (x.Recording != _recording)
            throw new InvalidOperationException($"{name} was recorded before this tape's last Reset; its tensor has been freed. Record it again.");
    }

    /// <summary>What an op checks before it runs its forward: the tape can record, and x may be its input.</summary>
    internal void CheckRecording(Variable x, [System.Runtime.CompilerServices.CallerArgumentExpression(nameof(x))] string name = "")
    {
        ThrowIfUnusable();
        CheckInput(x, name);
    }

    /// <summary>A variable for an op's output, owned by this recording.</summary>
    private Variable NewOutput(Tensor y, bool requiresGrad) => new(y, requiresGrad) { Producer = this, Recording = _recording };

    private Tensor Own(Tensor tensor)
    {
        _owned.Add(tensor);
        return tensor;
    }

    /// <summary>Takes a backward function's gradients: inputs' into their variables, parameters' into their Grad; frees what is left if one throws.</summary>
    private void Accumulate(Variable[] inputs, Parameter[] parameters, Gradients gradients)
    {
        var pending = new List<Tensor>();
        for (int i = 0; i < gradients.Inputs.Count; i++) if (gradients.Inputs[i] is { } g) pending.Add(g);
        for (int i = 0; i < gradients.Parameters.Count; i++) if (gradients.Parameters[i] is { } g) pending.Add(g);
        try
        {
            if (gradients.Inputs.Count > inputs.Length || gradients.Parameters.Count > parameters.Length)
                throw new InvalidOperationException(
                    $"A backward function returned {gradients.Inputs.Count} input and {gradients.Parameters.Count} parameter gradients for an op of {inputs.Length} inputs and {parameters.Length} parameters.");
            for (int i = 0; i < gradients.Inputs.Count; i++)
            {
                if (gradients.Inputs[i] is not { } gradient) continue;
                pending.Remove(gradient);
                AccumulateVariable(inputs[i], Own(gradient));
            }
            for (int i = 0; i < gradients.Parameters.Count; i++)
            {
                Tensor? gradient = gradients.Parameters[i];
                if (gradient is null) continue;
                Tensor taken = gradient;
                AccumulateParameter(parameters[i], ref gradient);  // consumes it (gradient becomes null) unless it throws
                pending.Remove(taken);
            }
        }
        finally
        {
            foreach (Tensor left in pending) left.Dispose();
        }
    }

    /// <summary>Adds <paramref name="gradient"/> (Value's dtype, already owned by the tape) into the variable's gradient.</summary>
    private void AccumulateVariable(Variable variable, Tensor gradient)
    {
        if (!variable.RequiresGrad) return;
        if (variable.Grad is null)
        {
            variable.Grad = gradient;
            _gradientHolders.Add(variable);
            return;
        }
        AddInto(variable.Grad, gradient);
    }

    /// <summary>
    /// Adds a weight gradient (the weight's dtype) into the parameter's F32 gradient and consumes it:
    /// on return <paramref name="gradient"/> is null, having become the parameter's gradient or been freed.
    /// </summary>
    private static void AccumulateParameter(Parameter parameter, ref Tensor? gradient)
    {
        if (gradient is null) return;
        if (parameter.Grad is null)
        {
            if (gradient.DType == DType.F32)
            {
                parameter.Grad = gradient;
            }
            else
            {
                parameter.Grad = Ops.Elementwise.Cast(gradient, DType.F32);
                gradient.Dispose();
            }
            gradient = null;
            return;
        }
        if (gradient.DType == DType.F32)
        {
            Ops.Elementwise.Axpy(1f, gradient, parameter.Grad);
        }
        else
        {
            using Tensor widened = Ops.Elementwise.Cast(gradient, DType.F32);
            Ops.Elementwise.Axpy(1f, widened, parameter.Grad);
        }
        gradient.Dispose();
        gradient = null;
    }

    /// <summary>target += addend; a BF16 sum is formed in fp32 and rounded once.</summary>
    private static void AddInto(Tensor target, Tensor addend)
    {
        if (target.DType == DType.F32)
        {
            Ops.Elementwise.Axpy(1f, addend, target);
            return;
        }
        using Tensor sum = Ops.Elementwise.Cast(target, DType.F32);
        using Tensor widened = Ops.Elementwise.Cast(addend, DType.F32);
        Ops.Elementwise.Axpy(1f, widened, sum);
        target.Device.Backend.Cast(sum, target);
    }
}
