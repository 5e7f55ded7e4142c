// bitsandbytes' 8-bit AdamW (AdamW8bit, REFERENCE.md §8.7): both moments stored blockwise in 8 bits,
// m (state1) as codes of the signed dynamic map, v (state2) of the unsigned one, with one fp32 absmax
// per block of 256 elements (absmax1, absmax2): 2 bytes per element plus 8 per block instead of 8.
// Each step dequantizes a block, updates it in fp32 with bitsandbytes' Adam (decay after the step),
// and requantizes it to the nearest codes (m's nudged toward its own sign) under the block's new
// absmax (kernels/optim.cu lk_optim_adamw8bit_f32, native/cpu/optim.cpp lk_cpu_adamw8bit). Parameters
// with fewer than min8bitSize elements keep fp32 state1/state2 and bitsandbytes' 32-bit update, as
// bitsandbytes does. A BF16 parameter is updated directly (read, updated in fp32, rounded back), as
// bitsandbytes does: no master copy. State starts at zero codes and zero absmax, as bitsandbytes'.
using LoraKernels.Autograd;

namespace LoraKernels.Optim;

public sealed class AdamW8bit : Optimizer
{
    /// <summary>bitsandbytes' min_8bit_size: smaller parameters keep fp32 state.</summary>
    public const int DefaultMinimum8bitSize = 4096;

    /// <summary>Elements per quantization block (bitsandbytes' blocksize for optimizer state).</summary>
    public const int BlockSize = 256;

    private readonly AdamSettings _adam;
    private readonly SegmentList<AdamWSegment> _fp32 = new();
    private readonly SegmentList<AdamW8bitSegment> _blockwise = new();

    /// <summary>One group; bitsandbytes' defaults (lr 1e-3, betas 0.9/0.999, eps 1e-8, weight decay 1e-2).</summary>
    public AdamW8bit(IEnumerable<Parameter> parameters, float lr = 1e-3f, float beta1 = 0.9f, float beta2 = 0.999f, float eps = 1e-8f,
                     float weightDecay = 0.01f, int minimum8bitSize = DefaultMinimum8bitSize, StatePaging? paging = null)
        : this([new ParameterGroup("default", parameters ?? throw new ArgumentNullException(nameof(parameters)), lr, weightDecay)],
               beta1, beta2, eps, minimum8bitSize, paging)
    {
    }

    public AdamW8bit(IEnumerable<ParameterGroup> groups, float beta1 = 0.9f, float beta2 = 0.999f, float eps = 1e-8f,
                     int minimum8bitSize = DefaultMinimum8bitSize, StatePaging? paging = null)
        : base("AdamW8bit", groups, paging)
    {
        _adam = AdamSettings.Checked(Name, beta1, beta2, eps);
        if (minimum8bitSize < 1)
            throw new ArgumentOutOfRangeException(nameof(minimum8bitSize), minimum8bitSize, $"{Name}: minimum8bitSize must be >= 1.");
        Minimum8bitSize = minimum8bitSize;
    }

    public float Beta1 => _adam.Beta1;
    public float Beta2 => _adam.Beta2;
    public float Eps => _adam.Eps;

    /// <summary>Parameters with fewer elements keep fp32 state (bitsandbytes' min_8bit_size).</summary>
    public int Minimum8bitSize { get; }

    /// <summary>Whether <paramref name="parameter"/>'s moments are stored in 8 bits (else fp32).</summary>
    public bool IsBlockwise(Parameter parameter)
    {
        ArgumentNullException.ThrowIfNull(parameter);
        return parameter.Value.ElementCount >= Minimum8bitSize;
    }

    internal override IReadOnlyDictionary<string, double> Hyperparameters =>
        new Dictionary<string, double>(_adam.Describe()) { ["min_8bit_size"] = Minimum8bitSize, ["block_size"] = BlockSize };

    private protected override ParameterState CreateState(Parameter parameter)
    {
        bool blockwise = IsBlockwise(parameter);
        return State.Create(parameter, blockwise ? BlockSize : 1, buffers =>
        {
            long n = parameter.Value.ElementCount;
            StateElement moments = blockwise ? StateElement.U8 : StateElement.F32;
            buffers.Add(State.Zeros("state1", moments, n));
            buffers.Add(State.Zeros("state2", moments, n));
            if (!blockwise) return;
            long blocks = (n + BlockSize - 1) / BlockSize;
            buffers.Add(State.Zeros("absmax1", StateElement.F32, blocks, BlockSize));
            buffers.Add(State.Zeros("absmax2", StateElement.F32, blocks, BlockSize));
        });
    }

    private protected override void Update(IReadOnlyList<ParameterUpdate> updates, float gradScale) =>
        RunPaged(updates, (pieces, at) =>
        {
            _fp32.Clear();
            _blockwise.Clear();
            foreach (StatePiece piece in pieces)
            {
                ParameterUpdate u = updates[piece.Entry];
                var (decay, stepSize, eps) = _adam.Bitsandbytes(u.LearningRate, u.Group.WeightDecay, u.State.Steps);
                bool fp32 = u.Parameter.Value.DType == DType.F32;
                ulong parameter = at(u.Parameter.Value, piece.First), grad = at(u.Parameter.Grad!, piece.First);
                ulong[] state = piece.StateAddresses;
                if (u.State.Granule == BlockSize)
                {
                    _blockwise.Add(new AdamW8bitSegment
                    {
                        Param = fp32 ? parameter : 0, ParamBf16 = fp32 ? 0 : parameter, Grad = grad,
                        MCodes = state[0], VCodes = state[1], MAbsmax = state[2], VAbsmax = state[3],
                        N = piece.Count, Decay = decay, StepSize = stepSize, Eps = eps,
                    });
                }
                else
                {
                    _fp32.Add(new AdamWSegment
                    {
                        Param = fp32 ? parameter : 0, ParamBf16 = fp32 ? 0 : parameter, Grad = grad, M = state[0], V = state[1],
                        N = piece.Count, Decay = decay, StepSize = stepSize, BiasCorrection2Sqrt = 1f, Eps = eps,
                    });
                }
            }
            if (_blockwise.Count > 0) Kernels.AdamW8bit(_blockwise, _adam.Beta1, _adam.Beta2, gradScale);
            if (_fp32.Count > 0) Kernels.AdamW(_fp32, _adam.Beta1, _adam.Beta2, gradScale, bnbForm: true);
        });

    private protected override void DisposeSegmentLists()
    {
        _fp32.Dispose();
        _blockwise.Dispose();
    }
}
