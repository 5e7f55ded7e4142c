// A linear layer with an AdaLoRA adapter, PEFT's SVDLinear (REFERENCE.md 6.2):
//   y = x W0ᵀ + bias + (dropout(x) (A ⊙ E)ᵀ) Bᵀ · scaling / (ranknum + 1e-5)
// with P = lora_B [out, r], Λ = lora_E [r] (PEFT stores [r, 1]) and Q = lora_A [r, in]: the gated-rank
// layer with Λ as its gate. Init as PEFT: E = 0 (a new layer computes the base layer), A and B ~ N(0, 0.02)
// (Box-Muller on SplitMix64, not PyTorch's draws: REFERENCE.md 11); scaling = alpha (or init_r when
// alpha ≤ 0), ranknum = init_r. A layer sliced to r' < init_r ranks (a rank_pattern) keeps ranknum =
// init_r, so the scale never changes. AdaLoraAllocator trains the rank budget: it masks Λ in place and
// records the kept ranks in RankPattern.
using LoraKernels.Autograd;
using LoraKernels.Variants;

namespace LoraKernels.Layers;

public sealed class AdaLoraLinear : GatedRankLinear
{
    /// <summary>PEFT's initial standard deviation of lora_A and lora_B.</summary>
    public const float InitialStd = 0.02f;

    // Separates B's draw from A's.
    private const ulong BStream = 0xADA1_0AB5_7EA4_0002ul;

    /// <summary>
    /// Wraps <paramref name="w0"/> [out, in] (and <paramref name="bias"/>), copied to <paramref name="device"/> in
    /// <paramref name="dtype"/>, with an AdaLoRA adapter of <paramref name="initR"/> triplets (PEFT's init_r).
    /// </summary>
    public AdaLoraLinear(Device device, Tensor w0, Tensor? bias, int initR, float alpha, float dropout = 0f, ulong seed = 0,
                         DType dtype = DType.F32)
        : this(device, w0, bias, initR, initR, alpha, dropout, seed, dtype)
    {
    }

    /// <summary>A layer holding <paramref name="rank"/> of the <paramref name="rankNum"/> triplets it was created with (a PEFT rank_pattern).</summary>
    public AdaLoraLinear(Device device, Tensor w0, Tensor? bias, int rank, int rankNum, float alpha, float dropout = 0f, ulong seed = 0,
                         DType dtype = DType.F32)
        : base("AdaLoraLinear", device, w0, bias, rank, alpha, CheckedScale(alpha, rank, rankNum), dropout, seed, dtype,
               new float[Math.Max(rank, 0)], "lora_E")
    {
        RankNum = rankNum;
        A.Value.CopyFrom(Normal(seed, (long)rank * InFeatures));
        B.Value.CopyFrom(Normal(seed ^ BStream, (long)OutFeatures * rank));
    }

    /// <summary>PEFT's ranknum: init_r, kept when the layer holds fewer triplets.</summary>
    public int RankNum { get; }

    /// <summary>lora_E, Λ [r] (F32): the gate.</summary>
    public Parameter E => Gate;

    /// <summary>The kept triplets after AdaLoraAllocator's last masking (PEFT's rank_pattern entry), or null before any.</summary>
    public bool[]? RankPattern { get; internal set; }

    /// <summary>scaling / (ranknum + 1e-5) as PEFT computes it (fp32 ranknum + 1e-5).</summary>
    public static float ScaleOf(float alpha, int rankNum) => (alpha > 0f ? alpha : rankNum) / (rankNum + 1e-5f);

    /// <summary>ScaleOf, after checking that ranknum is at least the rank held (before anything is allocated).</summary>
    private static float CheckedScale(float alpha, int rank, int rankNum)
    {
        if (rankNum < rank)
            throw new ArgumentOutOfRangeException(nameof(rankNum), rankNum, $"AdaLoraLinear: ranknum (init_r) = {rankNum} is below the rank {rank} the layer holds.");
        return ScaleOf(alpha, rankNum);
    }

    private protected override GatedRankLinear Shrunk(int rank, float[] gate)
    {
        var layer = new AdaLoraLinear(Device, W0, Bias, rank, RankNum, Alpha, Dropout, seed: 0, DType);
        try
        {
            layer.E.Value.CopyFrom(gate);
            return layer;
        }
        catch
        {
            layer.Dispose();
            throw;
        }
    }

    /// <summary><paramref name="count"/> values of N(0, InitialStd²).</summary>
    private static float[] Normal(ulong seed, long count)
    {
        float[] values = count > 0 ? Pissa.GaussianSketch(seed, count, 1) : [];
        for (long i = 0; i < values.Length; i++) values[i] *= InitialStd;
        return values;
    }
}
