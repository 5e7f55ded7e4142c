// What Ops.Kron.Backward returns (see Ops/OpResults.cs for the shared shape of op results).
namespace LoraKernels.Ops;

/// <summary>dx [M, in], dW1 [out_l, in_m], dW2 [out_k, in_n] of the Kronecker adapter; null where not requested.</summary>
public sealed record KronGradients(Tensor? Dx, Tensor? DW1, Tensor? DW2) : IDisposable
{
    public void Dispose() => Checks.DisposeAll(Dx, DW1, DW2);
}
