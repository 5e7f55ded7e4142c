// An adapted layer whose delta can be folded into its frozen weight (PEFT's merge / unmerge): it keeps the merged
// state and refuses to train while merged, and a derived layer supplies only AddDelta(scale), which adds
// scale·ΔW to a weight of the base's shape. Merge adds ΔW to the base weight, Unmerge subtracts it (exact up to
// rounding); each does nothing when already in that state, as PEFT (which warns). AddDelta also serves inference
// paths that form ΔW into a copy of the weight (the convolution adapters).
namespace LoraKernels.Layers;

public abstract class MergeableLinear<TBase> : AdaptedLinear<TBase> where TBase : FrozenLinear
{
    /// <summary>Takes ownership of <paramref name="frozenBase"/>.</summary>
    private protected MergeableLinear(TBase frozenBase) : base(frozenBase)
    {
    }

    /// <summary>Whether the base weight holds W0 + ΔW.</summary>
    public bool Merged { get; private set; }

    /// <summary>The base weight += ΔW (PEFT merge). Does nothing when already merged.</summary>
    public void Merge()
    {
        ThrowIfDisposed();
        if (Merged) return;
        AddDelta(MergeTarget, 1f);
        Merged = true;
    }

    /// <summary>The base weight -= ΔW. Does nothing when not merged.</summary>
    public void Unmerge()
    {
        ThrowIfDisposed();
        if (!Merged) return;
        AddDelta(MergeTarget, -1f);
        Merged = false;
    }

    /// <summary>The base weight Merge changes.</summary>
    private protected abstract Tensor MergeTarget { get; }

    /// <summary><paramref name="weight"/> (the base weight or a copy of it) += <paramref name="sign"/>·ΔW.</summary>
    private protected abstract void AddDelta(Tensor weight, float sign);

    /// <summary>Throws when merged: training needs ΔW apart from the base.</summary>
    private protected void ThrowIfMerged()
    {
        if (Merged) throw new InvalidOperationException($"The {GetType().Name} layer is merged (its weight holds W0 + ΔW); call Unmerge before training it.");
    }
}
