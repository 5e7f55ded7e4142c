// The router's graph ops on the tape, each one Tape.Record over Ops.Routing with its backward:
// the logits' linear map, softmax, top-k with renormalisation, and the load-balancing loss (a
// one-value output for Tape.AddLoss). The mixture of rank-1 experts records its router with them;
// any other router (a different gate network, a different loss) can be written the same way.
using LoraKernels.Ops;

namespace LoraKernels.Autograd;

public static class RoutingTape
{
    /// <summary>Records logits [M, E] (F32) = x·Wrᵀ with the router's weight as a parameter.</summary>
    public static Variable RouterLogits(this Tape tape, Variable x, Parameter router)
    {
        ArgumentNullException.ThrowIfNull(tape);
        ArgumentNullException.ThrowIfNull(router);
        tape.CheckRecording(x);
        Tensor logits = Routing.Logits(x.Value, router.Value);
        return tape.Record(logits, [x], [router], g =>
        {
            var (dx, dRouter) = Routing.LogitsBackward(x.Value, router.Value, g.OutputGradient, g.NeedsInput(0), g.NeedsParameter(0));
            return new Gradients([dx], [dRouter]);
        });
    }

    /// <summary>Records probs = softmax of each row of <paramref name="logits"/> (refusing NaN and ±Inf logits).</summary>
    public static Variable Softmax(this Tape tape, Variable logits)
    {
        ArgumentNullException.ThrowIfNull(tape);
        tape.CheckRecording(logits);
        Tensor probs = Routing.Softmax(logits.Value);
        return tape.Record(probs, [logits], [], g => Gradients.ForInputs(Routing.SoftmaxBackward(probs, g.OutputGradient)));
    }

    /// <summary>
    /// Records the top-k routing of <paramref name="probs"/> (Routing.TopK): the weights as a variable, whose gradient
    /// flows back to the picked probabilities, and the expert indices [M, k] (owned by the tape, no gradient).
    /// </summary>
    public static (Variable Weight, Tensor Expert) TopK(this Tape tape, Variable probs, int k, bool renormalize = true)
    {
        ArgumentNullException.ThrowIfNull(tape);
        tape.CheckRecording(probs);
        var (weight, expert) = Routing.TopK(probs.Value, k, renormalize);
        Variable result = tape.Record(weight, [probs], [], g =>
            Gradients.ForInputs(Routing.TopKBackward(probs.Value, expert, weight, g.OutputGradient, renormalize, checkIndices: false)),
            expert);
        return (result, expert);
    }

    /// <summary>
    /// Records the load-balancing loss E·Σ_j f_j·P_j of a routing (Routing.BalanceLoss) as a one-value F32 output; pass
    /// it to <see cref="Tape.AddLoss"/> with the auxiliary coefficient. Its gradient reaches the probabilities only.
    /// </summary>
    public static Variable LoadBalanceLoss(this Tape tape, Variable probs, Tensor expert)
    {
        ArgumentNullException.ThrowIfNull(tape);
        tape.CheckRecording(probs);
        var (loss, stats) = Routing.BalanceLoss(probs.Value, expert, checkIndices: false);
        Tensor value;
        try
        {
            value = Tensor.FromArray(probs.Value.Device, [loss], 1);
        }
        catch
        {
            stats.Dispose();
            throw;
        }
        long tokens = probs.Value.Shape[0];
        return tape.Record(value, [probs], [], g =>
            Gradients.ForInputs(Routing.BalanceLossBackward(stats, tokens, g.OutputGradient.ToArray()[0])), stats);
    }
}
