// The shape and the frozen weights of a Mamba block (mamba_simple.py's Mamba mixer): d_model → in_proj (x and the
// gate z, 2·d_inner) → causal depthwise conv (width d_conv) + SiLU → x_proj (dt_rank + 2·d_state: dt, B, C) → dt_proj
// (d_inner, bias inside the softplus) → selective scan (A = -exp(A_log), D skip, gate silu(z)) → out_proj (d_model).
// Random draws Mamba's initialisation from LoraKernels' SplitMix64 (reproducible within LoraKernels, not PyTorch's
// draws): Linear layers U(±1/√fan_in), the conv U(±1/√d_conv), dt_proj U(±dt_rank^-1/2), its bias the inverse
// softplus of dt ~ exp(U(ln 1e-3, ln 1e-1)) (floor 1e-4), A_log[d, n] = ln(n + 1), D = 1.
using LoraKernels.Runtime;

namespace LoraKernels.Layers;

/// <summary>A Mamba block's dimensions: d_model, d_state (N ≤ 16), d_conv, expand (d_inner = expand·d_model) and dt_rank (default ⌈d_model/16⌉).</summary>
public sealed record MambaConfig(int ModelFeatures, int States = 16, int ConvWidth = 4, int Expand = 2, int? DtRank = null)
{
    public int InnerFeatures => Expand * ModelFeatures;
    public int Rank => DtRank ?? (ModelFeatures + 15) / 16;

    /// <summary>x_proj's output width: dt_rank + 2·d_state.</summary>
    public int XProjFeatures => Rank + 2 * States;

    public void Check()
    {
        const string op = "MambaConfig";
        if (ModelFeatures < 1) throw new ArgumentOutOfRangeException(nameof(ModelFeatures), ModelFeatures, $"{op}: d_model must be >= 1.");
        if (States < 1 || States > Ops.Ssm.MaxStates)
            throw new ArgumentOutOfRangeException(nameof(States), States, $"{op}: d_state must be in [1, {Ops.Ssm.MaxStates}].");
        if (ConvWidth < 1) throw new ArgumentOutOfRangeException(nameof(ConvWidth), ConvWidth, $"{op}: d_conv must be >= 1.");
        if (Expand < 1) throw new ArgumentOutOfRangeException(nameof(Expand), Expand, $"{op}: expand must be >= 1.");
        if (Rank < 1) throw new ArgumentOutOfRangeException(nameof(DtRank), Rank, $"{op}: dt_rank must be >= 1.");
    }
}

/// <summary>The frozen weights of one Mamba block (owned; F32 on one device).</summary>
public sealed class MambaWeights : IDisposable
{
    /// <summary>[2·d_inner, d_model]: rows [0, d_inner) give x, rows [d_inner, 2·d_inner) the gate z.</summary>
    public required Tensor InProj { get; init; }
    /// <summary>[d_inner, d_conv] and [d_inner].</summary>
    public required Tensor ConvWeight { get; init; }
    public required Tensor ConvBias { get; init; }
    /// <summary>[dt_rank + 2·d_state, d_inner]: dt, then B, then C.</summary>
    public required Tensor XProj { get; init; }
    /// <summary>[d_inner, dt_rank] and its bias [d_inner] (added inside the softplus, as Mamba's delta_bias).</summary>
    public required Tensor DtProj { get; init; }
    public required Tensor DtBias { get; init; }
    /// <summary>[d_inner, d_state]; A = -exp(A_log).</summary>
    public required Tensor ALog { get; init; }
    /// <summary>[d_inner], the skip connection.</summary>
    public required Tensor D { get; init; }
    /// <summary>[d_model, d_inner].</summary>
    public required Tensor OutProj { get; init; }

    internal IEnumerable<(string Name, Tensor Tensor, long[] Shape)> Named(MambaConfig c)
    {
        int di = c.InnerFeatures;
        yield return ("InProj", InProj, [2L * di, c.ModelFeatures]);
        yield return ("ConvWeight", ConvWeight, [di, c.ConvWidth]);
        yield return ("ConvBias", ConvBias, [di]);
        yield return ("XProj", XProj, [c.XProjFeatures, di]);
        yield return ("DtProj", DtProj, [di, c.Rank]);
        yield return ("DtBias", DtBias, [di]);
        yield return ("ALog", ALog, [di, c.States]);
        yield return ("D", D, [di]);
        yield return ("OutProj", OutProj, [c.ModelFeatures, di]);
    }

    /// <summary>Mamba's initialisation (see the file comment), drawn from SplitMix64(<paramref name="seed"/>).</summary>
    public static MambaWeights Random(Device device, MambaConfig config, ulong seed = 0)
    {
        ArgumentNullException.ThrowIfNull(device);
        ArgumentNullException.ThrowIfNull(config);
        config.Check();
        var generator = new SplitMix64(seed);
        int dm = config.ModelFeatures, di = config.InnerFeatures, n = config.States, r = config.Rank, k = config.ConvWidth;
        float[] Uniform(long count, float bound)
        {
            var values = new float[count];
            for (long i = 0; i < count; i++) values[i] = generator.NextUniform(bound);
            return values;
        }
        float[] inProj = Uniform(2L * di * dm, 1f / MathF.Sqrt(dm));
        float[] conv = Uniform((long)di * k, 1f / MathF.Sqrt(k)), convBias = Uniform(di, 1f / MathF.Sqrt(k));
        float[] xProj = Uniform((long)config.XProjFeatures * di, 1f / MathF.Sqrt(di));
        float[] dtProj = Uniform((long)di * r, 1f / MathF.Sqrt(r));
        var dtBias = new float[di];
        for (int d = 0; d < di; d++)
        {
            double dt = Math.Max(Math.Exp(Math.Log(1e-3) + generator.NextSingle() * (Math.Log(1e-1) - Math.Log(1e-3))), 1e-4);
            dtBias[d] = (float)(dt + Math.Log(-double.ExpM1(-dt)));  // softplus⁻¹(dt)
        }
        var aLog = new float[(long)di * n];
        for (int d = 0; d < di; d++)
            for (int s = 0; s < n; s++) aLog[d * n + s] = MathF.Log(s + 1);
        var skip = new float[di];
        Array.Fill(skip, 1f);
        float[] outProj = Uniform((long)dm * di, 1f / MathF.Sqrt(di));
        var tensors = new List<Tensor>();
        Tensor Make(float[] values, params long[] shape)
        {
            Tensor t = Tensor.FromArray(device, values, shape);
            tensors.Add(t);
            return t;
        }
        try
        {
            return new MambaWeights
            {
                InProj = Make(inProj, 2L * di, dm), ConvWeight = Make(conv, di, k), ConvBias = Make(convBias, di),
                XProj = Make(xProj, config.XProjFeatures, di), DtProj = Make(dtProj, di, r), DtBias = Make(dtBias, di),
                ALog = Make(aLog, di, n), D = Make(skip, di), OutProj = Make(outProj, dm, di),
            };
        }
        catch
        {
            foreach (Tensor t in tensors) t.Dispose();
            throw;
        }
    }

    public void Dispose()
    {
        foreach (Tensor t in new[] { InProj, ConvWeight, ConvBias, XProj, DtProj, DtBias, ALog, D, OutProj }) t?.Dispose();
    }
}
