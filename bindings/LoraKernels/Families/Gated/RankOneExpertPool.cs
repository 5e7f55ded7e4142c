// The pool of rank-1 experts of the guide's MoRA (mixture of rank-1 adapters): expert j is u_j·v_jᵀ,
// held as a LoRA pair of rank E, A [E, in] (row j is v_j) and B [out, E] (column j is u_j), so that
// ΔW_i·x = Σ_j G(x)_{i,j}·u_j·(v_jᵀ·x) is the gated-rank computation with the router's gate. One pool
// is shared by every adapted module of the same width (in, out); each module has its own router
// (RankOneMixtureLinear). Init as LoRA's pair: A ~ U(±1/√in) from SplitMix64(seed), B = 0, so a new
// pool adds nothing. The pool owns its two parameters; a layer that shares it does not list them
// (train pool.Parameters() once, beside each layer's router).
using LoraKernels.Autograd;

namespace LoraKernels.Layers;

public sealed class RankOneExpertPool : IDisposable
{
    private RankOneExpertPool(Parameter a, Parameter b)
    {
        A = a;
        B = b;
    }

    /// <summary>lora_A [E, in]: row j is expert j's input direction v_j.</summary>
    public Parameter A { get; }

    /// <summary>lora_B [out, E]: column j is expert j's output direction u_j.</summary>
    public Parameter B { get; }

    public Device Device => A.Value.Device;
    public DType DType => A.Value.DType;
    public int Experts => (int)A.Value.Shape[0];
    public int InFeatures => (int)A.Value.Shape[1];
    public int OutFeatures => (int)B.Value.Shape[0];

    /// <summary>A pool of <paramref name="experts"/> rank-1 experts for layers of width (in, out).</summary>
    public static RankOneExpertPool Create(Device device, int experts, int inFeatures, int outFeatures, ulong seed = 0,
                                           DType dtype = DType.F32)
    {
        const string op = "RankOneExpertPool.Create";
        ArgumentNullException.ThrowIfNull(device);
        _ = DTypeInfo.SizeOf(dtype);
        if (experts < 1 || experts >= Ops.Gated.MaxExactIndex)
            throw new ArgumentOutOfRangeException(nameof(experts), experts, $"{op}: the pool needs 1 to 2^24 - 1 experts.");
        if (inFeatures < 1) throw new ArgumentOutOfRangeException(nameof(inFeatures), inFeatures, $"{op}: in must be >= 1.");
        if (outFeatures < 1) throw new ArgumentOutOfRangeException(nameof(outFeatures), outFeatures, $"{op}: out must be >= 1.");
        LowRankDelta.CheckArguments(op, experts, 1f, 0f, outFeatures, inFeatures);
        var a = new Parameter("lora_A", Tensor.FromArray(device, LowRankDelta.InitialA(seed, experts, inFeatures), dtype, experts, inFeatures));
        try
        {
            return new RankOneExpertPool(a, new Parameter("lora_B", Tensor.Zeros(device, dtype, outFeatures, experts)));
        }
        catch
        {
            a.Dispose();
            throw;
        }
    }

    /// <summary>The pool's trainable parameters: A, then B.</summary>
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
