// A linear layer with a LoRA adapter, as PEFT's lora.Linear (REFERENCE.md section 1):
//   y = x W0ᵀ + bias + s·(dropout(x) Aᵀ) Bᵀ,   s = alpha/r, or alpha/sqrt(r) with rsLoRA.
// W0 and bias are frozen copies owned by the layer; A [r, in] starts U(±1/sqrt(in)) (PEFT's
// kaiming_uniform with a = sqrt(5)) drawn from the library's SplitMix64 generator seeded with
// `seed` (reproducible within LoraKernels, not PyTorch's draws; REFERENCE.md section 11) and B [out, r]
// starts at zero, so a new layer computes exactly the base layer. Dropout acts on the adapter
// branch only, only while Training, with a fresh seed drawn for every forward call (the tape
// keeps it for the backward pass). Merge folds s·B·A into W0 for inference; while merged the
// layer computes x W0ᵀ + bias alone and refuses to be trained.
using LoraKernels.Autograd;
using LoraKernels.Runtime;

namespace LoraKernels.Layers;

public sealed class LoraLinear : IAdapterLayer
{
    // Separates the dropout seed stream from the initialisation stream drawn from the same seed.
    private const ulong DropoutStream = 0xD1B54A32D192ED03ul;

    private readonly SplitMix64 _dropoutSeeds;
    private bool _disposed;

    /// <summary>
    /// Wraps the base weight <paramref name="w0"/> [out, in] (and <paramref name="bias"/> [out]),
    /// copied to <paramref name="device"/> in <paramref name="dtype"/>; the caller keeps its tensors.
    /// </summary>
    public LoraLinear(Device device, Tensor w0, Tensor? bias, int r, float alpha, float dropout = 0f,
                      bool useRsLora = false, ulong seed = 0, DType dtype = DType.F32)
    {
        const string op = "LoraLinear";
        ArgumentNullException.ThrowIfNull(device);
        Ops.Checks.Alive(w0, op, nameof(w0));
        (long outFeatures, long inFeatures) = Ops.Checks.Matrix(op, nameof(w0), w0, "out, in");
        if (bias is not null)
        {
            Ops.Checks.Alive(bias, op, nameof(bias));
            if (bias.Rank != 1 || bias.Shape[0] != outFeatures)
                throw new ArgumentException($"{op}: bias must be [out] = [{outFeatures}], got {bias.Describe()}", nameof(bias));
        }
        CheckAdapterArguments(op, r, alpha, dropout);
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
        Scale = AdapterScale(alpha, r, useRsLora);
        _dropoutSeeds = DropoutSeeds(seed);

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
            (A, B) = CreateAdapter(device, dtype, r, InFeatures, OutFeatures, seed);
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

    /// <summary>lora_A [r, in].</summary>
    public Parameter A { get; }

    /// <summary>lora_B [out, r].</summary>
    public Parameter B { get; }

    /// <summary>The frozen base weight [out, in] (holding W0 + s·B·A while merged).</summary>
    public Tensor W0 { get; }

    /// <summary>The frozen base bias [out], or null.</summary>
    public Tensor? Bias { get; }

    /// <summary>Whether dropout is active (PyTorch's module.training; true for a new layer).</summary>
    public bool Training { get; set; } = true;

    public bool Merged { get; private set; }

    /// <summary>Records the layer on <paramref name="tape"/> (see <see cref="Tape.Lora"/>).</summary>
    public Variable Forward(Tape tape, Variable x)
    {
        ArgumentNullException.ThrowIfNull(tape);
        ThrowIfDisposed();
        return tape.Lora(this, x);
    }

    /// <summary>y [M, out] for x [M, in] without recording gradients (dropout still applies while Training).</summary>
    public Tensor Forward(Tensor x)
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
    public IEnumerable<Parameter> Parameters()
    {
        yield return A;
        yield return B;
    }

    /// <summary>The dropout seed of the next forward call.</summary>
    internal ulong NextDropoutSeed() => _dropoutSeeds.NextUInt64();

    // The adapter's parameter handling, shared with QloraLinear (the same adapter over a quantized base).

    /// <summary>Throws unless r ≥ 1, alpha is finite and the dropout probability is in [0, 1).</summary>
    internal static void CheckAdapterArguments(string op, int r, float alpha, float dropout)
    {
        if (r < 1) throw new ArgumentOutOfRangeException(nameof(r), r, $"{op}: the rank r must be >= 1.");
        if (!float.IsFinite(alpha)) throw new ArgumentOutOfRangeException(nameof(alpha), alpha, $"{op}: alpha must be finite.");
        Ops.Checks.DropoutProbability(op, nameof(dropout), dropout);
    }

    /// <summary>s = alpha/r, or alpha/sqrt(r) with rsLoRA.</summary>
    internal static float AdapterScale(float alpha, int r, bool useRsLora) => useRsLora ? alpha / MathF.Sqrt(r) : alpha / r;

    /// <summary>The generator of per-forward dropout seeds, a stream apart from the initialisation's.</summary>
    internal static SplitMix64 DropoutSeeds(ulong seed) => new(seed ^ DropoutStream);

    /// <summary>lora_A [r, in] = U(±1/sqrt(in)) from SplitMix64(seed) and lora_B [out, r] = 0, on <paramref name="device"/>.</summary>
    internal static (Parameter A, Parameter B) CreateAdapter(Device device, DType dtype, int r, int inFeatures, int outFeatures, ulong seed)
    {
        var a = new Parameter("lora_A", Tensor.FromArray(device, InitialA(seed, r, inFeatures), dtype, r, inFeatures));
        try
        {
            return (a, new Parameter("lora_B", Tensor.Zeros(device, dtype, outFeatures, r)));
        }
        catch
        {
            a.Dispose();
            throw;
        }
    }

    /// <summary>A's initial values: U(±1/sqrt(in)), row-major [r, in], from SplitMix64(seed).</summary>
    internal static float[] InitialA(ulong seed, int r, int inFeatures)
    {
        var generator = new SplitMix64(seed);
        float bound = 1f / MathF.Sqrt(inFeatures);
        float[] values = new float[(long)r * inFeatures];
        for (int i = 0; i < values.Length; i++) values[i] = generator.NextUniform(bound);
        return values;
    }

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

    private void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(_disposed, this);

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        A.Dispose();
        B.Dispose();
        W0.Dispose();
        Bias?.Dispose();
    }
}
