// A mixture-of-experts layer with LoRA on each expert (the variant guide's "LoRA for MoE": adapt only the
// activated experts): y = bias + Σ_{j<k} g_j·expert_{e_j}(x), where a router [E, in] (frozen, or trained)
// picks each token's k experts and weights them (MoeRouting), and every targeted projection p of every
// expert carries its own LoRA: W_p,e x + s·B_p,e (A_p,e x). Frozen experts are MoeExperts (linear or
// SwiGLU). The tokens' T·k assignments are sorted by expert and gathered (kernels/moe.cu), each projection
// runs as one grouped product over the expert segments with the expert's LoRA fused in
// (Ops.Segmented.GroupedForward: the base expert GEMMs grouped the same way as the adapters), and the
// outputs are combined back in token order with the routing weights. Only the chosen experts are
// computed; an expert no token chose gets a zero gradient. Each targeted projection's adapters are two
// parameter tables, A [E, r, in_p] (PEFT's target_parameters lora_A [E·r, in], row e·r + j, the same
// memory) and B [E, out_p, r] (zero at first, so a new layer computes the frozen MoE); A starts
// U(±1/√in_p) per expert as PEFT's LoRA. F32 only; no dropout.
using LoraKernels.Autograd;
using LoraKernels.Families.Moe;
using LoraKernels.Ops;
using LoraKernels.Variants;

namespace LoraKernels.Layers;

public sealed class MoeLoraLayer : AdaptedLinear<MoeExperts>
{
    // The targeted projections in the experts' order; parameter i of the tape record is the router (0),
    // then A and B of each of these (1 + 2i, 2 + 2i).
    private readonly List<(string Projection, Parameter A, Parameter B)> _adapters = new();
    private readonly Tensor? _scales;

    /// <summary>
    /// Takes ownership of <paramref name="experts"/>; copies <paramref name="router"/> [E, in] (finite) to the experts'
    /// device. LoRA of rank <paramref name="r"/> (scale alpha/r, or alpha/√r with rsLoRA) goes on every projection named in
    /// <paramref name="targets"/> (default: all of the experts' projections), A drawn from <paramref name="seed"/>.
    /// </summary>
    public MoeLoraLayer(MoeExperts experts, Tensor router, int topK, int r, float alpha, IEnumerable<string>? targets = null,
                        bool trainRouter = false, bool useRsLora = false, ulong seed = 0)
        : base(CheckedExperts(experts, router, topK, r, alpha, targets))
    {
        string[] chosen = (targets ?? experts.Projections).ToArray();
        TopK = topK;
        Rank = r;
        Scale = LowRankDelta.ScaleOf(alpha, r, useRsLora);
        Router = Create(() => new Parameter("router", FrozenLinear.CopyTo(router, Device, DType.F32), requiresGrad: trainRouter));
        ulong stream = seed;
        foreach (string projection in experts.Projections.Where(chosen.Contains))
        {
            Tensor table = experts.Table(projection);
            int outP = (int)table.Shape[1], inP = (int)table.Shape[2], count = experts.Count;
            var a = new float[(long)count * r * inP];
            for (int e = 0; e < count; e++) LowRankDelta.InitialA(stream++, r, inP).CopyTo(a, (long)e * r * inP);
            Parameter pa = Create(() => new Parameter($"experts.{projection}.lora_A", Tensor.FromArray(Device, a, count, r, inP)));
            Parameter pb = Create(() => new Parameter($"experts.{projection}.lora_B", Tensor.Zeros(Device, DType.F32, count, outP, r)));
            _adapters.Add((projection, pa, pb));
        }
        if (_adapters.Count > 0)
        {
            var scales = new float[experts.Count];
            Array.Fill(scales, Scale);
            _scales = Create(() => Tensor.FromArray(Device, scales, experts.Count));
        }
    }

    /// <summary>Experts per token.</summary>
    public int TopK { get; }
    public int Rank { get; }

    /// <summary>s = alpha/r, or alpha/√r with rsLoRA (the same for every expert).</summary>
    public float Scale { get; }

    /// <summary>The router [E, in] (trained when its RequiresGrad is true).</summary>
    public Parameter Router { get; }

    /// <summary>The LoRA tables (A [E, r, in_p], B [E, out_p, r]) of each targeted projection.</summary>
    public IReadOnlyDictionary<string, (Parameter A, Parameter B)> Adapters => _adapters.ToDictionary(a => a.Projection, a => (a.A, a.B));

    /// <summary>Rows each expert received in the last forward (its adapter is computed only when > 0).</summary>
    public IReadOnlyList<int> LastExpertCounts { get; private set; } = [];

    /// <summary>The trainable parameters: the router when trained, then each targeted projection's A and B tables.</summary>
    public override IEnumerable<Parameter> Parameters()
    {
        if (Router.RequiresGrad) yield return Router;
        foreach (var (_, a, b) in _adapters)
        {
            yield return a;
            yield return b;
        }
    }

    public override Tensor Forward(Tensor x)
    {
        ThrowIfDisposed();
        using Pass pass = Run(x);
        return pass.TakeOutput();
    }

    private protected override Variable Record(Tape tape, Variable x)
    {
        Pass pass = Run(x.Value);
        Tensor input = x.Value;
        Parameter[] parameters = [Router, .. _adapters.SelectMany(p => new[] { p.A, p.B })];
        return tape.Record(pass.TakeOutput(), [x], parameters, g => pass.Backward(this, input, g), pass.Saved());
    }

    /// <summary>Routes, gathers, runs the experts' grouped products and combines: one forward pass and what its backward needs.</summary>
    private Pass Run(Tensor x)
    {
        const string op = "MoeLoraLayer.Forward";
        long m = AdapterChecks.Activations(op, x, InFeatures, DType.F32, Device, "the layer");
        AdapterChecks.OutputSize(op, "assignments", m * TopK, Math.Max(InFeatures, Math.Max(OutFeatures, Base.HiddenFeatures)));
        var pass = new Pass();
        try
        {
            using (Tensor logits = DenseMath.Matmul(x, false, Router.Value, true))
                pass.Routing = MoeRouting.Route(logits.ToArray(), (int)m, Base.Count, TopK);
            LastExpertCounts = pass.Routing.Counts;
            IMoeKernels kernels = IMoeKernels.On(Device);
            pass.Gates = Tensor.FromArray(Device, pass.Routing.SortedGates, pass.Routing.SortedGates.Length);
            pass.Gathered = Tensor.Empty(Device, DType.F32, pass.Routing.SortedGates.Length, InFeatures);
            kernels.Gather(x, pass.Routing.AssignmentTokens, pass.Gathered);
            if (Base.Kind == MoeExpertKind.Linear)
            {
                pass.Output = Project(pass, "weight", pass.Gathered);
            }
            else
            {
                pass.GatePre = Project(pass, "gate_proj", pass.Gathered);
                pass.UpPre = Project(pass, "up_proj", pass.Gathered);
                pass.Hidden = Tensor.Empty(Device, DType.F32, pass.GatePre.Shape[0], pass.GatePre.Shape[1]);
                kernels.SwiGlu(pass.GatePre, pass.UpPre, pass.Hidden);
                pass.Output = Project(pass, "down_proj", pass.Hidden);
            }
            pass.Y = Tensor.Empty(Device, DType.F32, m, OutFeatures);
            kernels.Combine(pass.Output, pass.Routing.Positions, TopK, pass.Gates, Bias, pass.Y);
            return pass;
        }
        catch
        {
            pass.Dispose();
            throw;
        }
    }

    /// <summary>The index of <paramref name="projection"/> among the targeted projections, or -1.</summary>
    private int AdapterIndex(string projection) => _adapters.FindIndex(a => a.Projection == projection);

    /// <summary>One projection over the expert segments, with its LoRA when targeted; keeps u for the backward.</summary>
    private Tensor Project(Pass pass, string projection, Tensor input)
    {
        int index = AdapterIndex(projection);
        bool adapted = index >= 0;
        var lora = adapted ? _adapters[index] : default;
        var (y, u) = Segmented.GroupedForward(input, Base.Table(projection), adapted ? lora.A.Value : null, adapted ? lora.B.Value : null,
                                              adapted ? _scales : null, pass.Routing.Segments);
        if (u is not null) pass.U[projection] = u;
        return y;
    }

    /// <summary>The backward of one projection: its input gradient and, when targeted, its LoRA tables' gradients (at 1 + 2i, 2 + 2i).</summary>
    private Tensor? ProjectBackward(Pass pass, string projection, Tensor input, Tensor dOutput, BackwardContext g,
                                    Tensor?[] parameterGradients, bool needInput)
    {
        int index = AdapterIndex(projection);
        bool adapted = index >= 0;
        var lora = adapted ? _adapters[index] : default;
        int parameterIndex = 1 + 2 * index;
        bool needA = adapted && g.NeedsParameter(parameterIndex), needB = adapted && g.NeedsParameter(parameterIndex + 1);
        var (dx, dA, dB) = Segmented.GroupedBackward(input, Base.Table(projection), adapted ? lora.A.Value : null, adapted ? lora.B.Value : null,
                                                     adapted ? _scales : null, pass.U.GetValueOrDefault(projection), dOutput,
                                                     pass.Routing.Segments, needInput, needA, needB);
        if (adapted)
        {
            parameterGradients[parameterIndex] = dA;
            parameterGradients[parameterIndex + 1] = dB;
        }
        return dx;
    }

    /// <summary>The tensors of one forward pass (owned until the tape or the caller frees them) and its backward.</summary>
    private sealed class Pass : IDisposable
    {
        public MoeRouting Routing = null!;
        public Tensor? Gates, Gathered, GatePre, UpPre, Hidden, Output, Y;
        public readonly Dictionary<string, Tensor> U = new();

        /// <summary>y, which the caller (or the tape) owns from now on.</summary>
        public Tensor TakeOutput()
        {
            Tensor y = Y!;
            Y = null;
            return y;
        }

        /// <summary>What the backward reads, handed to the tape (which frees it on Reset).</summary>
        public Tensor[] Saved() => new[] { Gates, Gathered, GatePre, UpPre, Hidden, Output }.OfType<Tensor>().Concat(U.Values).ToArray();

        /// <summary>
        /// dy [T, out] → d(assignment outputs) = g·dy and d(gates); back through the experts' projections (and
        /// SwiGLU); dx = Σ_j d(gathered rows) + dz·W_r through the logits; d router = dzᵀ x when it trains.
        /// </summary>
        public Gradients Backward(MoeLoraLayer layer, Tensor x, BackwardContext g)
        {
            Device device = layer.Device;
            IMoeKernels kernels = IMoeKernels.On(device);
            // x reaches the output through the routing weights too (its logits), whether or not the router trains.
            bool needRouter = g.NeedsParameter(0), needX = g.NeedsInput(0), needGates = needRouter || needX;
            var parameterGradients = new Tensor?[1 + 2 * layer._adapters.Count];
            var owned = new List<Tensor>();
            Tensor? dx = null;
            try
            {
                Tensor dOutput = Keep(owned, Tensor.Empty(device, DType.F32, Output!.Shape[0], Output.Shape[1]));
                Tensor? dGates = needGates ? Keep(owned, Tensor.Empty(device, DType.F32, Routing.SortedGates.Length)) : null;
                kernels.CombineBackward(g.OutputGradient, needGates ? Output : null, Routing.AssignmentTokens, Gates!, dOutput, dGates);

                Tensor? dGathered;
                if (layer.Base.Kind == MoeExpertKind.Linear)
                {
                    dGathered = layer.ProjectBackward(this, "weight", Gathered!, dOutput, g, parameterGradients, needX);
                }
                else
                {
                    Tensor dHidden = Keep(owned, layer.ProjectBackward(this, "down_proj", Hidden!, dOutput, g, parameterGradients, true)!);
                    Tensor dGate = Keep(owned, Tensor.Empty(device, DType.F32, Hidden!.Shape[0], Hidden.Shape[1]));
                    Tensor dUp = Keep(owned, Tensor.Empty(device, DType.F32, Hidden.Shape[0], Hidden.Shape[1]));
                    kernels.SwiGluBackward(GatePre!, UpPre!, dHidden, dGate, dUp);
                    dGathered = layer.ProjectBackward(this, "gate_proj", Gathered!, dGate, g, parameterGradients, needX);
                    using Tensor? fromUp = layer.ProjectBackward(this, "up_proj", Gathered!, dUp, g, parameterGradients, needX);
                    if (dGathered is not null) Elementwise.Axpy(1f, fromUp!, dGathered);
                }
                if (dGathered is not null)
                {
                    Keep(owned, dGathered);
                    dx = Tensor.Empty(device, DType.F32, x.Shape[0], x.Shape[1]);
                    kernels.Combine(dGathered, Routing.Positions, layer.TopK, null, null, dx);
                }
                if (needGates)
                {
                    float[] dz = Routing.LogitGradient(dGates!.ToArray());
                    using Tensor dLogits = Tensor.FromArray(device, dz, Routing.Tokens, Routing.Experts);
                    if (needRouter) parameterGradients[0] = DenseMath.Matmul(dLogits, true, x, false);
                    if (dx is not null)
                    {
                        using Tensor throughRouter = DenseMath.Matmul(dLogits, false, layer.Router.Value, false);
                        Elementwise.Axpy(1f, throughRouter, dx);
                    }
                }
                return new Gradients([dx], parameterGradients);
            }
            catch
            {
                dx?.Dispose();
                Checks.DisposeAll(parameterGradients);
                throw;
            }
            finally
            {
                foreach (Tensor tensor in owned) tensor.Dispose();
            }
        }

        private static Tensor Keep(List<Tensor> owned, Tensor tensor)
        {
            owned.Add(tensor);
            return tensor;
        }

        public void Dispose()
        {
            foreach (Tensor? tensor in new[] { Gates, Gathered, GatePre, UpPre, Hidden, Output, Y }) tensor?.Dispose();
            foreach (Tensor tensor in U.Values) tensor.Dispose();
        }
    }

    /// <summary>The constructor's checks, before anything is copied; returns the experts it takes over.</summary>
    private static MoeExperts CheckedExperts(MoeExperts experts, Tensor router, int topK, int r, float alpha, IEnumerable<string>? targets)
    {
        const string op = "MoeLoraLayer";
        ArgumentNullException.ThrowIfNull(experts);
        foreach (string target in targets ?? [])
            if (!experts.Projections.Contains(target))
                throw new ArgumentException($"{op}: '{target}' is not a projection of the {experts.Kind} experts ({string.Join(", ", experts.Projections)}).",
                                            nameof(targets));
        ObjectDisposedException.ThrowIf(experts.IsDisposed, experts);
        Checks.Alive(router, op, nameof(router));
        if (router.Rank != 2 || router.Shape[0] != experts.Count || router.Shape[1] != experts.InFeatures)
            throw new ArgumentException($"{op}: router must be [E, in] = [{experts.Count}, {experts.InFeatures}], got {router.Describe()}", nameof(router));
        Checks.AllFinite(op, nameof(router), router, "a router holding NaN or Inf routes every token at random.");
        if (topK < 1 || topK > experts.Count)
            throw new ArgumentOutOfRangeException(nameof(topK), topK, $"{op}: topK must be in [1, {experts.Count}] (the number of experts).");
        LowRankDelta.CheckArguments(op, r, alpha, 0f);
        return experts;
    }
}
