// What Ops.Tucker.Backward returns (see Ops/OpResults.cs for the shared shape of op results).
namespace LoraKernels.Ops;

/// <summary>dx [M, in], dA [r_in, in], dCore [r_out, r_in], dB [out, r_out] of the Tucker adapter; null where not requested.</summary>
public sealed record TuckerGradients(Tensor? Dx, Tensor? DA, Tensor? DCore, Tensor? DB) : IDisposable
{
    public void Dispose() => Checks.DisposeAll(Dx, DA, DCore, DB);
}
