// LoTR's shared factors (Bershatsky et al. 2024): the layers of a group with equal shapes share one input factor
// A = U_inᵀ [r_in, in] and one output factor B = U_out [out, r_out], and each keeps its own core S [r_out, r_in], so a
// group of L layers trains r_in·in + out·r_out + L·r_out·r_in values (ΔW_l = s·B·S_l·A: a Tucker decomposition of the
// stacked [L, out, in] update). The factors train: every layer built over them lists them among its parameters and
// the tape sums their gradients across the layers; give an optimizer the distinct parameters of the group
// (Parameters() here plus each layer's core). Initialised as a FLoRA layer's own factors: A ~ U(±1/√in),
// B ~ U(±1/√r_out) (PEFT's kaiming-uniform), from SplitMix64(seed). The layers reference, not own, them.
using LoraKernels.Autograd;
using LoraKernels.Families.Conv;
using LoraKernels.Runtime;

namespace LoraKernels.Layers;

public sealed class TuckerFactors : IDisposable
{
    private TuckerFactors(Parameter a, Parameter b)
    {
        A = a;
        B = b;
    }

    /// <summary>U_inᵀ [r_in, in] (shared, trained).</summary>
    public Parameter A { get; }

    /// <summary>U_out [out, r_out] (shared, trained).</summary>
    public Parameter B { get; }

    public Device Device => A.Value.Device;
    public DType DType => A.Value.DType;
    public int InFeatures => (int)A.Value.Shape[1];
    public int OutFeatures => (int)B.Value.Shape[0];
    public int RankIn => (int)A.Value.Shape[0];
    public int RankOut => (int)B.Value.Shape[1];

    /// <summary>Factors for layers [out, in] with ranks 1 ≤ r_in ≤ in and 1 ≤ r_out ≤ out.</summary>
    public static TuckerFactors Create(Device device, int inFeatures, int outFeatures, int rIn, int rOut, ulong seed = 0,
                                       DType dtype = DType.F32)
    {
        const string op = "TuckerFactors.Create";
        ArgumentNullException.ThrowIfNull(device);
        Ops.Tucker.CheckRank(op, nameof(rIn), "r_in", rIn, inFeatures, "in");
        Ops.Tucker.CheckRank(op, nameof(rOut), "r_out", rOut, outFeatures, "out");
        return Draw(device, dtype, inFeatures, outFeatures, rIn, rOut, new SplitMix64(seed));
    }

    /// <summary>A then B drawn from <paramref name="generator"/> (a layer's own factors are drawn the same way).</summary>
    internal static TuckerFactors Draw(Device device, DType dtype, long inFeatures, long outFeatures, long rIn, long rOut, SplitMix64 generator)
    {
        var a = new Parameter("tucker_A", Tensor.FromArray(device, KaimingUniform.Draw(generator, rIn * inFeatures, inFeatures), dtype, rIn, inFeatures));
        try
        {
            return new TuckerFactors(a, new Parameter("tucker_B", Tensor.FromArray(device, KaimingUniform.Draw(generator, outFeatures * rOut, rOut),
                                                                                    dtype, outFeatures, rOut)));
        }
        catch
        {
            a.Dispose();
            throw;
        }
    }

    /// <summary>A, then B.</summary>
    public IEnumerable<Parameter> Parameters()
    {
        yield return A;
        yield return B;
    }

    public void Dispose()
    {
        A.Dispose();
        B.Dispose();
    }
}
