// What Ops.Dora returns (see Ops/OpResults.cs for the shared shape of op results).
namespace LoraKernels.Ops;

/// <summary>
/// DoRA's forward: Y [M, out], U = x·Aᵀ [M, r] (F32) and Z = x·W0ᵀ + s·U·Bᵀ [M, out] (x's dtype), the
/// column-scaled quantity before the magnitude, which the backward needs for dm.
/// </summary>
public sealed record DoraForwardResult(Tensor Y, Tensor U, Tensor Z) : IDisposable
{
    public void Dispose() => Checks.DisposeAll(Y, U, Z);
}

/// <summary>DoRA's training forward with dropout: Y and the state its backward takes.</summary>
public sealed record DoraDropoutForwardResult(Tensor Y, Dora.DropoutState State) : IDisposable
{
    public void Dispose()
    {
        Y.Dispose();
        State.Dispose();
    }
}

/// <summary>dx [M, in], dA [r, in], dB [out, r], dm [out] of DoRA; null where not requested.</summary>
public sealed record DoraGradients(Tensor? Dx, Tensor? DA, Tensor? DB, Tensor? DMagnitude) : IDisposable
{
    public void Dispose() => Checks.DisposeAll(Dx, DA, DB, DMagnitude);
}
