// What Ops.Gated's backwards return (see Ops/OpResults.cs for the shared shape of op results).
namespace LoraKernels.Ops;

/// <summary>dx [M, in], dA [r, in], dB [out, r], dGate ([r] or [M, r]) of a gated low-rank delta; null where not requested.</summary>
public sealed record GatedGradients(Tensor? Dx, Tensor? DA, Tensor? DB, Tensor? DGate) : IDisposable
{
    public void Dispose() => Checks.DisposeAll(Dx, DA, DB, DGate);
}

/// <summary>dx [M, in], dA [E, in], dB [out, E], dWeight [M, k] of the top-k rank-1 experts; null where not requested.</summary>
public sealed record TopKGradients(Tensor? Dx, Tensor? DA, Tensor? DB, Tensor? DWeight) : IDisposable
{
    public void Dispose() => Checks.DisposeAll(Dx, DA, DB, DWeight);
}
