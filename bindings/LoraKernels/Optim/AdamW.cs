// AdamW with torch.optim.AdamW semantics (decoupled weight decay before the moment update, bias-
// corrected moments, eps outside the square root, a step count per parameter that advances only when
// the parameter has a gradient), fused: one launch (one CPU call) updates every parameter of a step
// (kernels/optim.cu lk_optim_adamw_f32, native/cpu/optim.cpp lk_cpu_adamw). State per parameter:
// exp_avg and exp_avg_sq in fp32 and, for a BF16 parameter, an fp32 master copy (created from the
// parameter's value at its first step) that the kernel updates and rounds into the parameter, so small
// updates accumulate instead of vanishing in bf16 rounding. Groups, clipping, accumulation, schedules,
// the non-finite guard and paging are the Optimizer base's.
using LoraKernels.Autograd;

namespace LoraKernels.Optim;

public sealed class AdamW : Optimizer
{
    private readonly AdamSettings _adam;
    private readonly SegmentList<AdamWSegment> _segments = new();

    public AdamW(IEnumerable<Parameter> parameters, float lr = 1e-3f, float beta1 = 0.9f, float beta2 = 0.999f,
                 float eps = 1e-8f, float weightDecay = 0.01f, StatePaging? paging = null)
        : this([new ParameterGroup("default", parameters ?? throw new ArgumentNullException(nameof(parameters)), lr, weightDecay)],
               beta1, beta2, eps, paging)
    {
    }

    /// <summary>AdamW over parameter groups, each stepped with its own learning rate and weight decay.</summary>
    public AdamW(IEnumerable<ParameterGroup> groups, float beta1 = 0.9f, float beta2 = 0.999f, float eps = 1e-8f, StatePaging? paging = null)
        : base("AdamW", groups, paging)
    {
        _adam = AdamSettings.Checked(Name, beta1, beta2, eps);
    }

    public float Beta1 => _adam.Beta1;
    public float Beta2 => _adam.Beta2;
    public float Eps => _adam.Eps;

    internal override IReadOnlyDictionary<string, double> Hyperparameters => _adam.Describe();

    private protected override ParameterState CreateState(Parameter parameter) =>
        State.Create(parameter, granule: 1, buffers =>
        {
            long n = parameter.Value.ElementCount;
            buffers.Add(State.Zeros("exp_avg", StateElement.F32, n));
            buffers.Add(State.Zeros("exp_avg_sq", StateElement.F32, n));
            if (parameter.Value.DType == DType.F32) return;
            StateBuffer master = State.Zeros("master", StateElement.F32, n);
            buffers.Add(master);
            CopyIntoMaster(parameter, master);
        });

    private void CopyIntoMaster(Parameter parameter, StateBuffer master)
    {
        using Tensor value = Ops.Elementwise.Cast(parameter.Value, DType.F32);
        Device.Copy(value.Buffer, 0, master.Buffer, 0, value.SizeInBytes);
    }

    private protected override void Update(IReadOnlyList<ParameterUpdate> updates, float gradScale)
    {
        // A BF16 value assigned since the master copy was taken (Parameter.Value = t) replaces it, as torch's
        // param.data = t would be seen by an optimizer stepping the parameter itself.
        foreach (ParameterUpdate u in updates)
        {
            if (u.State.ValueVersion == u.Parameter.Version) continue;
            if (u.Parameter.Value.DType != DType.F32) CopyIntoMaster(u.Parameter, u.State["master"]);
            u.State.ValueVersion = u.Parameter.Version;
        }
        UpdatePieces(updates, gradScale);
    }

    private void UpdatePieces(IReadOnlyList<ParameterUpdate> updates, float gradScale) =>
        RunPaged(updates, (pieces, at) =>
        {
            _segments.Clear();
            foreach (StatePiece piece in pieces)
            {
                ParameterUpdate u = updates[piece.Entry];
                var (decay, stepSize, bc2Sqrt, eps) = _adam.Torch(u.LearningRate, u.Group.WeightDecay, u.State.Steps);
                bool master = u.Parameter.Value.DType != DType.F32;
                ulong parameter = at(u.Parameter.Value, piece.First);
                _segments.Add(new AdamWSegment
                {
                    Param = master ? piece.StateAddresses[2] : parameter,
                    ParamBf16 = master ? parameter : 0,
                    Grad = at(u.Parameter.Grad!, piece.First),
                    M = piece.StateAddresses[0],
                    V = piece.StateAddresses[1],
                    N = piece.Count,
                    Decay = decay,
                    StepSize = stepSize,
                    BiasCorrection2Sqrt = bc2Sqrt,
                    Eps = eps,
                });
            }
            Kernels.AdamW(_segments, _adam.Beta1, _adam.Beta2, gradScale, bnbForm: false);
        });

    private protected override void DisposeSegmentLists() => _segments.Dispose();
}
