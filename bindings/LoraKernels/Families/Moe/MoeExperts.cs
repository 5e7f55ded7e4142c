// The frozen experts of a mixture-of-experts layer, a frozen base in → out (docs/ARCHITECTURE.md: a new
// base derives from FrozenLinear): E experts stored as tables, one [E, out_p, in_p] tensor per projection
// p, so the grouped products (Ops.Segmented.GroupedForward) read expert e's weights as one slice.
//   Linear: expert(x) = W_e x                                    projection "weight"  [E, out, in]
//   SwiGLU: expert(x) = W_down,e (silu(W_gate,e x) ⊙ (W_up,e x))  "gate_proj" [E, H, in], "up_proj" [E, H, in],
//                                                                  "down_proj" [E, out, H] (Mixtral's w1, w3, w2)
// plus an optional bias [out] added once after the weighted sum (the routing weights sum to 1). The
// tables are copied to the layer's device as F32 (the MoE layer is F32) after every check; NaN or Inf
// is refused, as for every frozen base.
namespace LoraKernels.Layers;

public enum MoeExpertKind { Linear, SwiGlu }

public sealed class MoeExperts : FrozenLinear
{
    /// <summary>The projection names of each kind, in the order the experts apply them.</summary>
    public static readonly string[] LinearProjections = ["weight"];
    public static readonly string[] SwiGluProjections = ["gate_proj", "up_proj", "down_proj"];

    private readonly Dictionary<string, Tensor> _tables;

    private MoeExperts(Device device, MoeExpertKind kind, Dictionary<string, Tensor> tables, int count, int hidden, int inFeatures,
                       int outFeatures, Tensor? bias)
        : base(device, DType.F32, inFeatures, outFeatures, bias)
    {
        Kind = kind;
        _tables = tables;
        Count = count;
        HiddenFeatures = hidden;
    }

    public MoeExpertKind Kind { get; }

    /// <summary>The number of experts E.</summary>
    public int Count { get; }

    /// <summary>H, the SwiGLU experts' hidden width (0 for linear experts).</summary>
    public int HiddenFeatures { get; }

    /// <summary>The projection names (<see cref="LinearProjections"/> or <see cref="SwiGluProjections"/>).</summary>
    public IReadOnlyList<string> Projections => Kind == MoeExpertKind.Linear ? LinearProjections : SwiGluProjections;

    /// <summary>The frozen table [E, out_p, in_p] of <paramref name="projection"/> (owned).</summary>
    public Tensor Table(string projection) =>
        _tables.TryGetValue(projection, out Tensor? table)
            ? table
            : throw new ArgumentException($"MoeExperts: no projection '{projection}'; the {Kind} experts have {string.Join(", ", Projections)}.",
                                          nameof(projection));

    public override long WeightBytes => _tables.Values.Sum(t => t.SizeInBytes) + (Bias?.SizeInBytes ?? 0);

    /// <summary>E linear experts W [E, out, in] (copied to <paramref name="device"/>, F32), and an optional bias [out].</summary>
    public static MoeExperts Linear(Device device, Tensor weight, Tensor? bias = null)
    {
        const string op = "MoeExperts.Linear";
        ArgumentNullException.ThrowIfNull(device);
        var (count, outFeatures, inFeatures) = Table3(op, nameof(weight), weight);
        CheckShape(op, nameof(weight), weight.Describe(), outFeatures, inFeatures, bias);
        return Create(op, device, MoeExpertKind.Linear, [("weight", weight)], count, 0, inFeatures, outFeatures, bias);
    }

    /// <summary>E SwiGLU experts: gate [E, H, in], up [E, H, in], down [E, out, H] (copied to <paramref name="device"/>, F32), and an optional bias [out].</summary>
    public static MoeExperts SwiGlu(Device device, Tensor gate, Tensor up, Tensor down, Tensor? bias = null)
    {
        const string op = "MoeExperts.SwiGlu";
        ArgumentNullException.ThrowIfNull(device);
        var (count, hidden, inFeatures) = Table3(op, nameof(gate), gate);
        var upShape = Table3(op, nameof(up), up);
        if (upShape != (count, hidden, inFeatures))
            throw new ArgumentException($"{op}: up must be [E, H, in] = [{count}, {hidden}, {inFeatures}] like gate, got {up.Describe()}", nameof(up));
        var (downCount, outFeatures, downIn) = Table3(op, nameof(down), down);
        if (downCount != count || downIn != hidden)
            throw new ArgumentException($"{op}: down must be [E, out, H] = [{count}, out, {hidden}], got {down.Describe()}", nameof(down));
        CheckShape(op, nameof(down), down.Describe(), outFeatures, inFeatures, bias);
        return Create(op, device, MoeExpertKind.SwiGlu, [("gate_proj", gate), ("up_proj", up), ("down_proj", down)], count, (int)hidden,
                      inFeatures, outFeatures, bias);
    }

    /// <summary>(E, rows, columns) of a rank-3 table with every dimension ≥ 1 and within 32-bit indexing.</summary>
    private static (int Count, int Rows, int Columns) Table3(string op, string name, Tensor table)
    {
        Ops.Checks.Alive(table, op, name);
        if (table.Rank != 3 || table.Shape.Any(d => d < 1))
            throw new ArgumentException($"{op}: {name} must be a table [E, rows, columns] with every dimension >= 1, got {table.Describe()}", name);
        Ops.Checks.Size(op, name, table);
        return ((int)table.Shape[0], (int)table.Shape[1], (int)table.Shape[2]);
    }

    private static MoeExperts Create(string op, Device device, MoeExpertKind kind, (string Name, Tensor Table)[] tables, int count,
                                     int hidden, int inFeatures, int outFeatures, Tensor? bias)
    {
        foreach (var (name, table) in tables)
            Ops.Checks.AllFinite(op, name, table, "a frozen expert weight holding NaN or Inf makes every token routed to it non-finite.");
        Ops.Checks.FiniteBias(op, bias);
        var copies = new Dictionary<string, Tensor>();
        Tensor? biasCopy = null;
        try
        {
            foreach (var (name, table) in tables) copies[name] = CopyTo(table, device, DType.F32);
            if (bias is not null) biasCopy = CopyTo(bias, device, DType.F32);
            return new MoeExperts(device, kind, copies, count, hidden, inFeatures, outFeatures, biasCopy);
        }
        catch
        {
            foreach (Tensor copy in copies.Values) copy.Dispose();
            biasCopy?.Dispose();
            throw;
        }
    }

    private protected override void DisposeWeight()
    {
        foreach (Tensor table in _tables.Values) table.Dispose();
    }
}
