// A linear layer with a VeRA adapter, as PEFT's vera.Linear (REFERENCE.md §3):
//   y = x W0ᵀ + bias + λ_b ⊙ ((λ_d ⊙ (dropout(x) A_lᵀ)) B_lᵀ)   (no alpha or scaling)
// with A_l, B_l the slices of shared frozen VeraProjections and two trainable vectors: λ_d [r]
// starting at dInitial (PEFT's d_initial, 0.1) and λ_b [out] starting at 0, so a new layer computes
// exactly the base layer. r + out trainable values per layer. W0 and bias are frozen copies owned by
// the layer; the projections are shared and not owned. Dropout acts on the adapter branch only,
// only while Training, with a fresh seed per forward call. Merge folds diag(λ_b)·B_l·diag(λ_d)·A_l
// into W0; while merged the layer computes x W0ᵀ + bias alone and refuses to be trained.
using LoraKernels.Autograd;
using LoraKernels.Runtime;

namespace LoraKernels.Layers;

public sealed class VeraLinear : IAdapterLayer
{
    private readonly SplitMix64 _dropoutSeeds;
    private bool _disposed;

    /// <summary>
    /// Wraps <paramref name="w0"/> [out, in] (and <paramref name="bias"/> [out]), copied to
    /// <paramref name="device"/> in <paramref name="dtype"/>; <paramref name="projections"/> must be on
    /// that device in that dtype and at least [r, in] / [out, r].
    /// </summary>
    public VeraLinear(Device device, Tensor w0, Tensor? bias, VeraProjections projections, float dropout = 0f,
                      float dInitial = 0.1f, DType dtype = DType.F32, ulong dropoutSeed = 0)
    {
        const string op = "VeraLinear";
        ArgumentNullException.ThrowIfNull(device);
        ArgumentNullException.ThrowIfNull(projections);
        Ops.Checks.Alive(w0, op, nameof(w0));
        (long outFeatures, long inFeatures) = Ops.Checks.Matrix(op, nameof(w0), w0, "out, in");
        if (bias is not null)
        {
            Ops.Checks.Alive(bias, op, nameof(bias));
            if (bias.Rank != 1 || bias.Shape[0] != outFeatures)
                throw new ArgumentException($"{op}: bias must be [out] = [{outFeatures}], got {bias.Describe()}", nameof(bias));
        }
        Ops.Checks.Alive(projections.VeraA, op, "projections.VeraA");
        Ops.Checks.Alive(projections.VeraB, op, "projections.VeraB");
        if (!ReferenceEquals(projections.Device, device) || projections.DType != dtype)
            throw new ArgumentException(
                $"{op}: the projections are {projections.DType} on {projections.Device}; the layer needs {dtype} on {device}.", nameof(projections));
        if (projections.MaxIn < inFeatures || projections.MaxOut < outFeatures)
            throw new ArgumentException(
                $"{op}: the projections cover in <= {projections.MaxIn} and out <= {projections.MaxOut}, but w0 is {w0.Describe()}; create them with VeraProjections.ForLayers over every layer.",
                nameof(projections));
        Ops.Checks.DropoutProbability(op, nameof(dropout), dropout);
        if (!float.IsFinite(dInitial)) throw new ArgumentOutOfRangeException(nameof(dInitial), dInitial, $"{op}: dInitial must be finite.");

        Device = device;
        DType = dtype;
        InFeatures = (int)inFeatures;
        OutFeatures = (int)outFeatures;
        Projections = projections;
        Dropout = dropout;
        _dropoutSeeds = new SplitMix64(dropoutSeed);

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
            float[] d = new float[projections.Rank];
            Array.Fill(d, dInitial);
            LambdaD = new Parameter("vera_lambda_d", Tensor.FromArray(device, d, dtype, projections.Rank));
            created.Add(LambdaD);
            LambdaB = new Parameter("vera_lambda_b", Tensor.Zeros(device, dtype, OutFeatures));
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
    public int Rank => Projections.Rank;
    public float Dropout { get; }

    /// <summary>The shared frozen projections (not owned by the layer).</summary>
    public VeraProjections Projections { get; }

    /// <summary>vera_lambda_d [r].</summary>
    public Parameter LambdaD { get; }

    /// <summary>vera_lambda_b [out].</summary>
    public Parameter LambdaB { get; }

    /// <summary>The frozen base weight [out, in] (holding W0 + ΔW while merged).</summary>
    public Tensor W0 { get; }

    /// <summary>The frozen base bias [out], or null.</summary>
    public Tensor? Bias { get; }

    public bool Training { get; set; } = true;

    public bool Merged { get; private set; }

    /// <summary>Records the layer on <paramref name="tape"/> (see <see cref="Tape.Vera"/>).</summary>
    public Variable Forward(Tape tape, Variable x)
    {
        ArgumentNullException.ThrowIfNull(tape);
        ThrowIfDisposed();
        return tape.Vera(this, x);
    }

    /// <summary>y [M, out] for x [M, in] without recording gradients (dropout still applies while Training).</summary>
    public Tensor Forward(Tensor x)
    {
        ThrowIfDisposed();
        if (Merged)
        {
            // W0 already holds ΔW: the adapter branch runs with λ_b = 0, leaving x W0ᵀ + bias.
            using Tensor zero = Tensor.Zeros(Device, DType, OutFeatures);
            var (merged, unusedU) = Ops.Vera.Forward(x, W0, Bias, Projections.VeraA, Projections.VeraB, LambdaD.Value, zero);
            unusedU.Dispose();
            return merged;
        }
        float dropoutP = Training ? Dropout : 0f;
        ulong seed = dropoutP > 0f ? NextDropoutSeed() : 0;
        var (y, u) = Ops.Vera.Forward(x, W0, Bias, Projections.VeraA, Projections.VeraB, LambdaD.Value, LambdaB.Value,
                                      dropoutP, seed);
        u.Dispose();
        return y;
    }

    /// <summary>W0 += diag(λ_b)·B_l·diag(λ_d)·A_l (PEFT merge). Does nothing when already merged.</summary>
    public void Merge()
    {
        ThrowIfDisposed();
        if (Merged) return;
        Ops.Vera.Merge(W0, Projections.VeraA, Projections.VeraB, LambdaD.Value, LambdaB.Value);
        Merged = true;
    }

    /// <summary>W0 -= diag(λ_b)·B_l·diag(λ_d)·A_l (exact up to rounding). Does nothing when not merged.</summary>
    public void Unmerge()
    {
        ThrowIfDisposed();
        if (!Merged) return;
        Ops.Vera.Unmerge(W0, Projections.VeraA, Projections.VeraB, LambdaD.Value, LambdaB.Value);
        Merged = false;
    }

    /// <summary>The trainable parameters: λ_d, then λ_b (the projections are frozen and shared).</summary>
    public IEnumerable<Parameter> Parameters()
    {
        yield return LambdaD;
        yield return LambdaB;
    }

    /// <summary>The dropout seed of the next forward call.</summary>
    internal ulong NextDropoutSeed() => _dropoutSeeds.NextUInt64();

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
        LambdaD.Dispose();
        LambdaB.Dispose();
        W0.Dispose();
        Bias?.Dispose();
    }
}
