// What the family ops return, as named records instead of tuples, so every family reads alike:
// a forward gives Y and the saved state its backward takes; a backward gives one gradient per
// input or trainable tensor, each null when it was not requested. Positional records deconstruct
// like the tuples they replace (var (y, u) = Lora.Forward(...)), and Dispose frees every tensor
// they hold, so `using var result = ...` cleans up a call.
namespace LoraKernels.Ops;

/// <summary>A low-rank forward (LoRA, QLoRA, VeRA): Y [M, out] and U = dropout(x)·Aᵀ [M, r] (F32), which the backward takes.</summary>
public sealed record ForwardResult(Tensor Y, Tensor U) : IDisposable
{
    public void Dispose() => Checks.DisposeAll(Y, U);
}

/// <summary>dx [M, in], dA [r, in], dB [out, r] of LoRA and QLoRA; null where not requested.</summary>
public sealed record LoraGradients(Tensor? Dx, Tensor? DA, Tensor? DB) : IDisposable
{
    public void Dispose() => Checks.DisposeAll(Dx, DA, DB);
}
