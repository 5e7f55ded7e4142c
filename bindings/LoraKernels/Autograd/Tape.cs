// Reverse-mode autograd over the ops a LoRA training step needs. Each recorded op runs forward
// at once and appends a closure that, during Backward, turns its output's gradient into its
// inputs' gradients; Backward runs the closures in reverse order. Gradients reaching the same
// variable or parameter are summed (axpy): parameters keep summing across backward passes until
// ZeroGrad, as in PyTorch. Every tensor the tape creates (op outputs, saved intermediates such as
// LoRA's u, variable gradients) is owned by the tape and freed on Reset or Dispose; parameter
// gradients belong to their parameters.
using LoraKernels.Layers;

namespace LoraKernels.Autograd;

public sealed partial class Tape : IDisposable
{
    private readonly List<Action> _backward = new();
    private readonly List<Tensor> _owned = new();
    private readonly List<Variable> _gradientHolders = new();
    private long _recording;
    private bool _hasLoss;
    private bool _backwardDone;
    private bool _disposed;

    /// <summary>Records y = layer(x): the fused LoRA forward, with dropout when the layer is training.</summary>
    /// <exception cref="InvalidOperationException">The layer is merged (unmerge it to train).</exception>
    public Variable Lora(LoraLinear layer, Variable x)
    {
        ArgumentNullException.ThrowIfNull(layer);
        CheckInput(x);
        ThrowIfUnusable();
        if (layer.Merged)
            throw new InvalidOperationException("The LoraLinear layer is merged (W0 holds W0 + s·B·A); call Unmerge before training it.");
        float scale = layer.Scale;
        float dropoutP = layer.Training ? layer.Dropout : 0f;
        ulong seed = dropoutP > 0f ? layer.NextDropoutSeed() : 0;
        Parameter a = layer.A, b = layer.B;
        Tensor w0 = layer.W0;

        var (y, u) = Ops.Lora.Forward(x.Value, w0, layer.Bias, a.Value, b.Value, scale, dropoutP, seed);
        Own(y);
        Own(u);
        var output = NewOutput(y, x.RequiresGrad || a.RequiresGrad || b.RequiresGrad);
        if (output.RequiresGrad)
        {
            _backward.Add(() =>
            {
                if (output.Grad is null) return;
                var (dx, dA, dB) = Ops.Lora.Backward(x.Value, w0, a.Value, b.Value, u, output.Grad, scale, dropoutP, seed,
                                                     needDx: x.RequiresGrad, needDA: a.RequiresGrad, needDB: b.RequiresGrad);
                try
                {
                    AccumulateParameter(a, ref dA);
                    AccumulateParameter(b, ref dB);
                    if (dx is not null)
                    {
                        AccumulateVariable(x, Own(dx));
                        dx = null;
                    }
                }
                finally
                {
                    // Only what an accumulation that threw did not take over is left here.
                    dA?.Dispose();
                    dB?.Dispose();
                    dx?.Dispose();
                }
            });
        }
        return output;
    }

    /// <summary>Records max(x, 0) (F32).</summary>
    public Variable Relu(Variable x)
    {
        CheckInput(x);
        ThrowIfUnusable();
        Tensor y = Own(Ops.Elementwise.Relu(x.Value));
        var output = NewOutput(y, x.RequiresGrad);
        if (output.RequiresGrad)
        {
            _backward.Add(() =>
            {
                if (output.Grad is null) return;
                AccumulateVariable(x, Own(Ops.Elementwise.ReluBackward(x.Value, output.Grad)));
            });
        }
        return output;
    }

    /// <summary>Records a dtype conversion (e.g. a BF16 layer's output to F32 for ReLU or the loss); its gradient is cast back.</summary>
    public Variable Cast(Variable x, DType dtype)
    {
        CheckInput(x);
        ThrowIfUnusable();
        Tensor y = Own(Ops.Elementwise.Cast(x.Value, dtype));
        var output = NewOutput(y, x.RequiresGrad);
        if (output.RequiresGrad)
        {
            DType inputDType = x.Value.DType;
            _backward.Add(() =>
            {
                if (output.Grad is null) return;
                AccumulateVariable(x, Own(Ops.Elementwise.Cast(output.Grad, inputDType)));
            });
        }
        return output;
    }

    /// <summary>Records the loss mean((pred - target)²) (F32) and returns its value; Backward starts from it.</summary>
    public float MseLoss(Variable pred, Tensor target)
    {
        CheckInput(pred);
        ThrowIfUnusable();
        var (loss, grad) = Ops.Elementwise.MseLoss(pred.Value, target, wantGrad: pred.RequiresGrad);
        _hasLoss = true;
        if (grad is not null)
        {
            Own(grad);
            _backward.Add(() => AccumulateVariable(pred, grad));
        }
        return loss;
    }

    /// <summary>
    /// Back-propagates from the recorded loss(es): fills Grad of every parameter and input variable
    /// that requires it. Runs once per recording; Reset the tape to record the next step.
    /// </summary>
    public void Backward()
    {
        ThrowIfUnusable();
        if (!_hasLoss) throw new InvalidOperationException("Backward needs a loss: record one with MseLoss first.");
        _backwardDone = true;
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
    private void CheckInput(Variable x, [System.Runtime.CompilerServices.CallerArgumentExpression(nameof(x))] string name = "")
    {
        ArgumentNullException.ThrowIfNull(x, name);
        if (x.Producer is null) return;
        if (!ReferenceEquals(x.Producer, this))
            throw new InvalidOperationException(
                $"{name} ({x.Value.Describe()}) was recorded on another tape; its gradient could never reach that tape's ops. Record the whole step on one tape.");
        if (x.Recording != _recording)
            throw new InvalidOperationException($"{name} was recorded before this tape's last Reset; its tensor has been freed. Record it again.");
    }

    /// <summary>A variable for an op's output, owned by this recording.</summary>
    private Variable NewOutput(Tensor y, bool requiresGrad) => new(y, requiresGrad) { Producer = this, Recording = _recording };

    private Tensor Own(Tensor tensor)
    {
        _owned.Add(tensor);
        return tensor;
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
