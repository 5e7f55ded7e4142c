// A Mamba block with LoRA on its input-dependent projections (the variant guide's "LoRA for SSM"; MambaPEFT's
// LoRA on in_proj, x_proj, dt_proj and out_proj): any subset, chosen by name as PEFT's target_modules. The
// block (MambaWeights) stays frozen; a targeted projection is a LoraLinear over its weight, the others frozen
// dense products. The forward, for a batch of sequences stored token-major ([batch·L, d_model]):
//   xz = in_proj(x); u = silu(conv(xz[:, :d_inner])); x_dbl = x_proj(u); Δ = dt_proj(x_dbl[:, :dt_rank]);
//   y = scan(u, Δ + dt_bias, A, B = x_dbl's next d_state columns, C = the last d_state, D, z = xz[:, d_inner:]);
//   out = out_proj(y)
// Each step is one tape op (the projections record themselves), so LoRA trains end to end through the selective
// scan; the column slices z, B, C are read and their gradients written in place (Ops.Ssm's column forms), and a
// slice's gradient reaches its wide activation by the tape's sum. Decode runs one token per sequence with the
// recurrent state (MambaState: the conv window and the scan state).
using LoraKernels.Autograd;
using LoraKernels.Families.Ssm;
using LoraKernels.Ops;

namespace LoraKernels.Layers;

public sealed class MambaBlock : IAdapterLayer
{
    /// <summary>The projections LoRA may target, by the names mamba_simple.py gives them.</summary>
    public static readonly string[] ProjectionNames = ["in_proj", "x_proj", "dt_proj", "out_proj"];

    private readonly IAdapterLayer[] _projections;  // in ProjectionNames' order
    private readonly Tensor _convWeight, _convBias, _dtBias, _a, _d;
    private bool _disposed;

    /// <summary>
    /// A block over <paramref name="weights"/> (copied; the caller keeps them) with LoRA of rank <paramref name="r"/> and
    /// <paramref name="alpha"/> on the projections named in <paramref name="targets"/> (each A drawn from its own seed).
    /// </summary>
    public MambaBlock(Device device, MambaConfig config, MambaWeights weights, int r, float alpha, IEnumerable<string> targets,
                      ulong seed = 0)
    {
        const string op = "MambaBlock";
        ArgumentNullException.ThrowIfNull(device);
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(weights);
        ArgumentNullException.ThrowIfNull(targets);
        config.Check();
        string[] chosen = targets.ToArray();
        foreach (string target in chosen)
            if (!ProjectionNames.Contains(target))
                throw new ArgumentException($"{op}: '{target}' is not a Mamba projection ({string.Join(", ", ProjectionNames)}).", nameof(targets));
        foreach (var (name, tensor, shape) in weights.Named(config))
        {
            Checks.Alive(tensor, op, name);
            if (tensor.Rank != shape.Length || !tensor.Shape.SequenceEqual(shape))
                throw new ArgumentException($"{op}: weights.{name} must be [{string.Join(", ", shape)}] for {config}, got {tensor.Describe()}", nameof(weights));
            Checks.AllFinite(op, $"weights.{name}", tensor, "a frozen weight holding NaN or Inf makes every output of the block non-finite.");
        }
        LowRankDelta.CheckArguments(op, r, alpha, 0f);
        Config = config;
        Device = device;
        Targets = chosen.Distinct().ToArray();
        var owned = new List<IDisposable>();
        try
        {
            Tensor[] projectionWeights = [weights.InProj, weights.XProj, weights.DtProj, weights.OutProj];
            _projections = new IAdapterLayer[ProjectionNames.Length];
            for (int i = 0; i < ProjectionNames.Length; i++)
            {
                _projections[i] = Targets.Contains(ProjectionNames[i])
                    ? new LoraLinear(device, projectionWeights[i], null, r, alpha, seed: seed + (ulong)i)
                    : new FrozenProjection(device, projectionWeights[i]);
                owned.Add(_projections[i]);
            }
            Tensor Keep(Tensor t)
            {
                owned.Add(t);
                return t;
            }
            _convWeight = Keep(FrozenLinear.CopyTo(weights.ConvWeight, device, DType.F32));
            _convBias = Keep(FrozenLinear.CopyTo(weights.ConvBias, device, DType.F32));
            _dtBias = Keep(FrozenLinear.CopyTo(weights.DtBias, device, DType.F32));
            _d = Keep(FrozenLinear.CopyTo(weights.D, device, DType.F32));
            _a = Keep(Tensor.FromArray(device, Array.ConvertAll(weights.ALog.ToArray(), v => -MathF.Exp(v)), config.InnerFeatures, config.States));
        }
        catch
        {
            foreach (IDisposable item in owned) item.Dispose();
            throw;
        }
    }

    public MambaConfig Config { get; }
    public Device Device { get; }
    public int InFeatures => Config.ModelFeatures;
    public int OutFeatures => Config.ModelFeatures;

    /// <summary>The projections that carry LoRA.</summary>
    public IReadOnlyList<string> Targets { get; }

    /// <summary>No dropout: training and evaluation compute the same.</summary>
    public bool Training { get; set; } = true;

    /// <summary>The adapted layer of a targeted projection.</summary>
    public LoraLinear Adapter(string projection) =>
        _projections[Array.IndexOf(ProjectionNames, projection)] as LoraLinear
        ?? throw new ArgumentException($"MambaBlock: '{projection}' carries no LoRA (targets: {string.Join(", ", Targets)}).", nameof(projection));

    /// <summary>Every targeted projection's A and B.</summary>
    public IEnumerable<Parameter> Parameters() => _projections.SelectMany(p => p.Parameters());

    /// <summary>One sequence x [L, d_model].</summary>
    public Variable Forward(Tape tape, Variable x) => Forward(tape, x, 1);

    /// <summary>One sequence x [L, d_model], without recording.</summary>
    public Tensor Forward(Tensor x) => Forward(x, 1);

    /// <summary><paramref name="batch"/> sequences x [batch·L, d_model], without gradients (the steps run on a scratch tape).</summary>
    public Tensor Forward(Tensor x, int batch)
    {
        using var tape = new Tape();
        Variable y = Forward(tape, new Variable(x), batch);
        return y.Value.Clone();
    }

    /// <summary>
    /// <paramref name="batch"/> sequences of equal length, x [batch·L, d_model] (rows b·L + t), recorded on
    /// <paramref name="tape"/>: the backward fills the adapters' gradients and x's.
    /// </summary>
    public Variable Forward(Tape tape, Variable x, int batch)
    {
        ArgumentNullException.ThrowIfNull(tape);
        ArgumentNullException.ThrowIfNull(x);
        ObjectDisposedException.ThrowIf(_disposed, this);
        const string op = "MambaBlock.Forward";
        AdapterChecks.Activations(op, x.Value, Config.ModelFeatures, DType.F32, Device, "the block");
        if (batch < 1 || x.Value.Shape[0] % batch != 0)
            throw new ArgumentOutOfRangeException(nameof(batch), batch, $"{op}: batch must be >= 1 and divide x's {x.Value.Shape[0]} rows.");
        int di = Config.InnerFeatures, r = Config.Rank, n = Config.States;
        Variable xz = _projections[0].Forward(tape, x);
        Variable u = tape.Record(Ssm.ConvolutionColumns(batch, new Columns(xz.Value, 0, di), _convWeight, _convBias), [xz], [], g =>
        {
            Tensor dxz = Tensor.Zeros(Device, DType.F32, xz.Value.Shape[0], 2 * di);
            Ssm.ConvolutionBackwardColumns(batch, new Columns(xz.Value, 0, di), _convWeight, _convBias, g.OutputGradient, new Columns(dxz, 0, di));
            return Gradients.ForInputs(dxz);
        });
        Variable xdbl = _projections[1].Forward(tape, u);
        Variable dt = tape.Record(CopyOut(new Columns(xdbl.Value, 0, r)), [xdbl], [], g =>
        {
            Tensor dxdbl = Tensor.Zeros(Device, DType.F32, xdbl.Value.Shape[0], Config.XProjFeatures);
            ISsmKernels.On(Device).CopyColumns(Columns.Of(g.OutputGradient), new Columns(dxdbl, 0, r));
            return Gradients.ForInputs(dxdbl);
        });
        Variable delta = _projections[2].Forward(tape, dt);
        ScanProblem problem = Problem(batch, u.Value, delta.Value, xdbl.Value, xz.Value);
        var (scanned, last) = Ssm.ScanForward(problem);
        last.Dispose();
        Variable y = tape.Record(scanned, [u, delta, xdbl, xz], [], g =>
        {
            Tensor du = Tensor.Empty(Device, DType.F32, problem.Rows, di), dDelta = Tensor.Empty(Device, DType.F32, problem.Rows, di);
            Tensor dxdbl = Tensor.Zeros(Device, DType.F32, problem.Rows, Config.XProjFeatures), dxz = Tensor.Zeros(Device, DType.F32, problem.Rows, 2 * di);
            ISsmKernels.On(Device).ScanBackward(problem, g.OutputGradient, du, dDelta, new Columns(dxdbl, r, n), new Columns(dxdbl, r + n, n),
                                                new Columns(dxz, di, di));
            return Gradients.ForInputs(du, dDelta, dxdbl, dxz);
        });
        return _projections[3].Forward(tape, y);
    }

    /// <summary>A fresh decode state (zeros) for <paramref name="batch"/> sequences.</summary>
    public MambaState NewState(int batch) => MambaState.Zeros(Device, Config, batch);

    /// <summary>One token per sequence, x [batch, d_model]: the recurrent form (conv window, scan state), advancing <paramref name="state"/>.</summary>
    public Tensor Step(Tensor x, MambaState state)
    {
        ArgumentNullException.ThrowIfNull(state);
        ObjectDisposedException.ThrowIf(_disposed, this);
        const string op = "MambaBlock.Step";
        long batch = AdapterChecks.Activations(op, x, Config.ModelFeatures, DType.F32, Device, "the block");
        if (batch != state.Batch) throw new ArgumentException($"{op}: x has {batch} rows but the state is for {state.Batch} sequences.", nameof(x));
        int di = Config.InnerFeatures, r = Config.Rank;
        using Tensor xz = _projections[0].Forward(x);
        using Tensor u = Ssm.ConvolutionStepColumns(new Columns(xz, 0, di), _convWeight, _convBias, state.Conv);
        using Tensor xdbl = _projections[1].Forward(u);
        using Tensor dt = CopyOut(new Columns(xdbl, 0, r));
        using Tensor delta = _projections[2].Forward(dt);
        using Tensor y = Ssm.StepColumns(Problem((int)batch, u, delta, xdbl, xz), state.Scan);
        return _projections[3].Forward(y);
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        foreach (IAdapterLayer projection in _projections) projection.Dispose();
        foreach (Tensor t in new[] { _convWeight, _convBias, _dtBias, _a, _d }) t.Dispose();
    }

    /// <summary>The scan over u and Δ, with B, C in x_dbl's columns after dt and the gate z in xz's second half.</summary>
    private ScanProblem Problem(int batch, Tensor u, Tensor delta, Tensor xdbl, Tensor xz)
    {
        int di = Config.InnerFeatures, r = Config.Rank, n = Config.States;
        return Ssm.Problem("MambaBlock", batch, u, delta, _dtBias, _a, new Columns(xdbl, r, n), new Columns(xdbl, r + n, n), _d,
                           new Columns(xz, di, di), null, "B", "C", "z");
    }

    /// <summary>A dense copy of a column slice.</summary>
    private Tensor CopyOut(Columns source)
    {
        Tensor copy = Tensor.Empty(Device, DType.F32, source.Rows, source.Width);
        try
        {
            ISsmKernels.On(Device).CopyColumns(source, Columns.Of(copy));
            return copy;
        }
        catch
        {
            copy.Dispose();
            throw;
        }
    }
}

/// <summary>A Mamba block's decode state for a batch of sequences: the conv window [batch, d_inner, d_conv - 1] and the scan state [batch, d_inner, d_state].</summary>
public sealed class MambaState : IDisposable
{
    private MambaState(int batch, Tensor conv, Tensor scan)
    {
        Batch = batch;
        Conv = conv;
        Scan = scan;
    }

    public int Batch { get; }
    public Tensor Conv { get; }
    public Tensor Scan { get; }

    internal static MambaState Zeros(Device device, MambaConfig config, int batch)
    {
        if (batch < 1) throw new ArgumentOutOfRangeException(nameof(batch), batch, "MambaState: batch must be >= 1.");
        Tensor conv = Tensor.Zeros(device, DType.F32, batch, config.InnerFeatures, config.ConvWidth - 1);
        try
        {
            return new MambaState(batch, conv, Tensor.Zeros(device, DType.F32, batch, config.InnerFeatures, config.States));
        }
        catch
        {
            conv.Dispose();
            throw;
        }
    }

    public void Dispose()
    {
        Conv.Dispose();
        Scan.Dispose();
    }
}
