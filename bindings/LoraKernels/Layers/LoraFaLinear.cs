// LoRA-FA (Zhang et al. 2023, arXiv:2308.03303; REFERENCE.md 7.2): a LoRA layer whose A is frozen at
// its random initialisation and whose B alone trains, so
//   y = x W0ᵀ + bias + s·(dropout(x) Aᵀ) Bᵀ,   s = alpha/r (or alpha/sqrt(r) with rsLoRA),
// with A [r, in] ~ U(±1/sqrt(in)) from SplitMix64(seed) (LoRA's init) and B [out, r] = 0.
// Why it saves memory: the gradients it needs are dB = s·dyᵀ u and dx = dy W0 + dropout'(s·dy B A),
// where u = dropout(x) Aᵀ [M, r]; neither needs x, so the backward pass keeps u (M·r·4 bytes)
// instead of x and u (M·in·4 + M·r·4 bytes for LoRA, whose dA = duᵀ dropout(x) needs x).
// The dropout mask is a pure function of (seed, element index), so backward regenerates it.
// Gradients are plain (PEFT's LoraFAOptimizer additionally preconditions dB by (A Aᵀ)⁻¹/s²; that
// optimizer is not part of this layer).
using LoraKernels.Autograd;
using LoraKernels.Runtime;

namespace LoraKernels.Layers;

public sealed class LoraFaLinear : IAdapterLayer
{
    // The same stream separation as LoraLinear, so equal seeds give equal A and equal dropout masks.
    private const ulong DropoutStream = 0xD1B54A32D192ED03ul;

    private readonly SplitMix64 _dropoutSeeds;
    private bool _disposed;

    /// <summary>
    /// Wraps the base weight <paramref name="w0"/> [out, in] (and <paramref name="bias"/> [out]),
    /// copied to <paramref name="device"/> in <paramref name="dtype"/>; the caller keeps its tensors.
    /// A is drawn exactly as <see cref="LoraLinear"/> draws it for the same seed.
    /// </summary>
    public LoraFaLinear(Device device, Tensor w0, Tensor? bias, int r, float alpha, float dropout = 0f,
                        bool useRsLora = false, ulong seed = 0, DType dtype = DType.F32)
    {
        const string op = "LoraFaLinear";
        ArgumentNullException.ThrowIfNull(device);
        Ops.Checks.Alive(w0, op, nameof(w0));
        (long outFeatures, long inFeatures) = Ops.Checks.Matrix(op, nameof(w0), w0, "out, in");
        if (bias is not null)
        {
            Ops.Checks.Alive(bias, op, nameof(bias));
            if (bias.Rank != 1 || bias.Shape[0] != outFeatures)
                throw new ArgumentException($"{op}: bias must be [out] = [{outFeatures}], got {bias.Describe()}", nameof(bias));
        }
        if (r < 1) throw new ArgumentOutOfRangeException(nameof(r), r, $"{op}: the rank r must be >= 1.");
        if (!float.IsFinite(alpha)) throw new ArgumentOutOfRangeException(nameof(alpha), alpha, $"{op}: alpha must be finite.");
        Ops.Checks.DropoutProbability(op, nameof(dropout), dropout);
        if (inFeatures > int.MaxValue || outFeatures > int.MaxValue)
            throw new ArgumentException($"{op}: w0 is {w0.Describe()}; in and out must fit in 32 bits.", nameof(w0));

        Device = device;
        DType = dtype;
        InFeatures = (int)inFeatures;
        OutFeatures = (int)outFeatures;
        Rank = r;
        Alpha = alpha;
        Dropout = dropout;
        UseRsLora = useRsLora;
        Scale = useRsLora ? alpha / MathF.Sqrt(r) : alpha / r;
        _dropoutSeeds = new SplitMix64(seed ^ DropoutStream);

        var created = new List<IDisposable>();
        try
        {
            W0 = CopyTo(w0, device, dtype);
            created.Add(W0);
            if (bias is not null)
            {
                Bias = CopyTo(bias, device, dtype);
                created.Add(Bias);
            }
            A = Tensor.FromArray(device, LoraLinear.InitialA(seed, r, InFeatures), dtype, r, InFeatures);
            created.Add(A);
            B = new Parameter("lora_B", Tensor.Zeros(device, dtype, OutFeatures, r));
        }
        catch
        {
            foreach (IDisposable item in created) item.Dispose();
            throw;
        }
    }

    public Device Device { get; }
    public DType DType { get; }
    public int InFeatures { get; }
    public int OutFeatures { get; }
    public int Rank { get; }
    public float Alpha { get; }
    public float Dropout { get; }
    public bool UseRsLora { get; }

    /// <summary>s = alpha/r, or alpha/sqrt(r) with rsLoRA.</summary>
    public float Scale { get; }

    /// <summary>The frozen lora_A [r, in] (not a parameter: it never receives a gradient).</summary>
    public Tensor A { get; }

    /// <summary>lora_B [out, r], the only trainable tensor.</summary>
    public Parameter B { get; }

    /// <summary>The frozen base weight [out, in].</summary>
    public Tensor W0 { get; }

    /// <summary>The frozen base bias [out], or null.</summary>
    public Tensor? Bias { get; }

    public bool Training { get; set; } = true;

    /// <summary>
    /// Bytes of activations that the backward pass of the last <see cref="Forward(Tape, Variable)"/>
    /// keeps alive: u = dropout(x) Aᵀ, M·r·4 (u is F32). LoRA's backward keeps x as well.
    /// </summary>
    public long RetainedActivationBytes { get; internal set; }

    /// <summary>Records the layer on <paramref name="tape"/> (see <see cref="Tape.LoraFa"/>).</summary>
    public Variable Forward(Tape tape, Variable x)
    {
        ArgumentNullException.ThrowIfNull(tape);
        ThrowIfDisposed();
        return tape.LoraFa(this, x);
    }

    /// <summary>y [M, out] for x [M, in] without recording gradients (dropout still applies while Training).</summary>
    public Tensor Forward(Tensor x)
    {
        ThrowIfDisposed();
        float dropoutP = Training ? Dropout : 0f;
        ulong seed = dropoutP > 0f ? NextDropoutSeed() : 0;
        var (y, u) = Ops.Lora.Forward(x, W0, Bias, A, B.Value, Scale, dropoutP, seed);
        u.Dispose();
        return y;
    }

    /// <summary>The trainable parameters: B only.</summary>
    public IEnumerable<Parameter> Parameters()
    {
        yield return B;
    }

    /// <summary>The dropout seed of the next forward call.</summary>
    internal ulong NextDropoutSeed() => _dropoutSeeds.NextUInt64();

    internal void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(_disposed, this);

    private static Tensor CopyTo(Tensor source, Device device, DType dtype)
    {
        Tensor moved = source.To(device);
        if (moved.DType == dtype) return moved;
        try
        {
            return Ops.Elementwise.Cast(moved, dtype);
        }
        finally
        {
            moved.Dispose();
        }
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        B.Dispose();
        A.Dispose();
        W0.Dispose();
        Bias?.Dispose();
    }
}
