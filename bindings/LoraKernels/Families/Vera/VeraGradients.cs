// What Ops.Vera.Backward returns (see Ops/OpResults.cs for the shared shape of op results).
namespace LoraKernels.Ops;

/// <summary>dx [M, in], dλ_d [r], dλ_b [out] of VeRA (the projections are frozen); null where not requested.</summary>
public sealed record VeraGradients(Tensor? Dx, Tensor? DLambdaD, Tensor? DLambdaB) : IDisposable
{
    public void Dispose() => Checks.DisposeAll(Dx, DLambdaD, DLambdaB);
}
