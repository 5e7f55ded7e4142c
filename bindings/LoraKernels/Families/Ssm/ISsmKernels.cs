// The SSM family's kernels (native/include/lora_kernels_ssm.h): Mamba's selective scan (forward over whole
// sequences, its backward, the decode step), the block's causal depthwise convolution + SiLU, the column
// moves between the block's wide activations and dense ones, and the frozen dense products of the
// projections that carry no LoRA. Ops.Ssm checks every argument first; all tensors are F32 on one device.
using LoraKernels.Backends.Gpu;

namespace LoraKernels.Families.Ssm;

/// <summary>Columns [Offset, Offset + Width) of every row of a row-major [rows, Stride] tensor, read and written in place.</summary>
internal readonly record struct Columns(Tensor Tensor, int Offset, int Width)
{
    public int Stride => (int)Tensor.Shape[1];
    public long Rows => Tensor.Shape[0];

    /// <summary>All of a matrix's columns.</summary>
    public static Columns Of(Tensor matrix) => new(matrix, 0, (int)matrix.Shape[1]);
}

/// <summary>
/// One scan: batch sequences of L steps (rows b·L + t), D channels, N states. u and delta are dense [M, D];
/// B, C and z are column slices (the block's x_proj and in_proj outputs); A [D, N], D skip [D], delta bias [D];
/// H0 [batch, D, N] the state before the first step (null: zeros).
/// </summary>
internal sealed record ScanProblem(int Batch, int Length, int Channels, int States, Tensor U, Tensor Delta, Tensor? DeltaBias, Tensor A,
                                   Columns B, Columns C, Tensor DSkip, Columns? Z, Tensor? H0)
{
    public long Rows => (long)Batch * Length;
}

internal interface ISsmKernels
{
    /// <summary>y [M, D] and, when given, the state after the last step [batch, D, N].</summary>
    void ScanForward(ScanProblem p, Tensor y, Tensor? lastState);

    /// <summary>du, dΔ (w.r.t. delta before softplus) [M, D], dB and dC (into their columns), dz (into its columns); null outputs are skipped.</summary>
    void ScanBackward(ScanProblem p, Tensor dy, Tensor? du, Tensor? dDelta, Columns? dB, Columns? dC, Columns? dz);

    /// <summary>One decode step for the batch's rows (p.Length = 1): state [batch, D, N] updated in place, y [batch, D].</summary>
    void Step(ScanProblem p, Tensor state, Tensor y);

    /// <summary>y [M, D] = silu(causal depthwise convolution of x's columns).</summary>
    void ConvForward(int batch, Columns x, Tensor weight, Tensor? bias, Tensor y);

    /// <summary>dx (into its columns) from dy [M, D].</summary>
    void ConvBackward(int batch, Columns x, Tensor weight, Tensor? bias, Tensor dy, Columns dx);

    /// <summary>One decode step: state [batch, D, K - 1] shifted in place, y [batch, D].</summary>
    void ConvStep(Columns x, Tensor weight, Tensor? bias, Tensor state, Tensor y);

    /// <summary>destination's columns = source's columns (same rows and width).</summary>
    void CopyColumns(Columns source, Columns destination);

    /// <summary>y = x Wᵀ + bias for a frozen projection.</summary>
    void DenseForward(Tensor x, Tensor w, Tensor? bias, Tensor y);

    /// <summary>dx = dy W for a frozen projection.</summary>
    void DenseGradX(Tensor dy, Tensor w, Tensor dx);

    /// <summary>The implementation for <paramref name="device"/> (created once per device).</summary>
    static ISsmKernels On(Device device) =>
        device.Kernels<ISsmKernels>(static () => new CpuSsmKernels(), static gpu => new GpuSsmKernels(gpu));
}
