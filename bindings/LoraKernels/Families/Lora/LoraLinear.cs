// A linear layer with a LoRA adapter, as PEFT's lora.Linear (REFERENCE.md section 1):
//   y = x W0ᵀ + bias + s·(dropout(x) Aᵀ) Bᵀ,   s = alpha/r, or alpha/sqrt(r) with rsLoRA.
// W0 and bias are frozen copies owned by the layer (DenseAdapterLinear); A [r, in] starts
// U(±1/sqrt(in)) drawn from the library's SplitMix64 generator seeded with `seed` (reproducible
// within LoraKernels, not PyTorch's draws; REFERENCE.md section 11) and B [out, r] starts at zero
// (RankAdapter, shared with LoRA-FA and QLoRA), so a new layer computes exactly the base layer.
// Dropout acts on the adapter branch only, only while Training, with a fresh seed drawn for every
// forward call (the tape keeps it for the backward pass). Merge folds s·B·A into W0 for inference;
// while merged the layer computes x W0ᵀ + bias alone and refuses to be trained.
using LoraKernels.Autograd;
using LoraKernels.Runtime;

namespace LoraKernels.Layers;

public sealed class LoraLinear : DenseAdapterLinear
{
    private readonly SplitMix64 _dropoutSeeds;

    /// <summary>
    /// Wraps the base weight <paramref name="w0"/> [out, in] (and <paramref name="bias"/> [out]),
    /// copied to <paramref name="device"/> in <paramref name="dtype"/>; the caller keeps its tensors.
    /// </summary>
    public LoraLinear(Device device, Tensor w0, Tensor? bias, int r, float alpha, float dropout = 0f,
                      bool useRsLora = false, ulong seed = 0, DType dtype = DType.F32)
        : base("LoraLinear", device, w0, bias, dtype, (outFeatures, inFeatures) =>
                   RankAdapter.CheckArguments("LoraLinear", r, alpha, dropout, outFeatures, inFeatures))
    {
        Rank = r;
        Alpha = alpha;
        Dropout = dropout;
        UseRsLora = useRsLora;
        Scale = RankAdapter.Scale(alpha, r, useRsLora);
        _dropoutSeeds = RankAdapter.DropoutSeeds(seed);
        A = Create(() => RankAdapter.CreateA(device, dtype, r, InFeatures, seed));
        B = Create(() => RankAdapter.CreateB(device, dtype, r, OutFeatures));
    }

    public int Rank { get; }
    public float Alpha { get; }
    public float Dropout { get; }
    public bool UseRsLora { get; }

    /// <summary>s = alpha/r, or alpha/sqrt(r) with rsLoRA.</summary>
    public float Scale { get; }

    /// <summary>lora_A [r, in].</summary>
    public Parameter A { get; }

    /// <summary>lora_B [out, r].</summary>
    public Parameter B { get; }

    public bool Merged { get; private set; }

    /// <summary>y [M, out] for x [M, in] without recording gradients (dropout still applies while Training).</summary>
    public override Tensor Forward(Tensor x)
    {
        ThrowIfDisposed();
        if (Merged)
        {
            // W0 already holds s·B·A: a zero scale leaves x W0ᵀ + bias (the adapter branch is multiplied by 0).
            var (merged, unusedU) = Ops.Lora.Forward(x, W0, Bias, A.Value, B.Value, 0f);
            unusedU.Dispose();
            return merged;
        }
        float dropoutP = Training ? Dropout : 0f;
        ulong seed = dropoutP > 0f ? NextDropoutSeed() : 0;
        var (y, u) = Ops.Lora.Forward(x, W0, Bias, A.Value, B.Value, Scale, dropoutP, seed);
        u.Dispose();
        return y;
    }

    /// <summary>W0 += s·B·A (PEFT merge). Does nothing when already merged, as PEFT (which warns).</summary>
    public void Merge()
    {
        ThrowIfDisposed();
        if (Merged) return;
        Ops.Lora.Merge(W0, A.Value, B.Value, Scale);
        Merged = true;
    }

    /// <summary>W0 -= s·B·A (PEFT unmerge; exact up to rounding, and bf16 rounding for a BF16 layer). Does nothing when not merged.</summary>
    public void Unmerge()
    {
        ThrowIfDisposed();
        if (!Merged) return;
        Ops.Lora.Unmerge(W0, A.Value, B.Value, Scale);
        Merged = false;
    }

    /// <summary>The trainable parameters: A, then B.</summary>
    public override IEnumerable<Parameter> Parameters()
    {
        yield return A;
        yield return B;
    }

    /// <summary>The dropout seed of the next forward call.</summary>
    internal ulong NextDropoutSeed() => _dropoutSeeds.NextUInt64();

    /// <summary>See <see cref="Tape.Lora"/>.</summary>
    private protected override Variable Record(Tape tape, Variable x) => tape.Lora(this, x);
}
