// The catalogue of every LoRA variant the project covers: each variant of the variant guide
// (000_9cd751effa0af045.txt) and of REFERENCE.md, with its family, paper, trainable-parameter count
// per layer, backends, dtypes, defaults and availability, and Create, which builds an adapter layer
// by name. Parameter counts are for one linear layer W0 [out, in]; shared or frozen tensors (VeRA's
// projections, LoRA-FA's A, a quantized base) are not trainable and not counted.
using System.Globalization;
using System.Text;
using LoraKernels.Layers;
using LoraKernels.Runtime;

namespace LoraKernels.Variants;

public static class Catalogue
{
    private const string ThisIssue = "issue 4";
    private const string QuantizationIssue = "issue 3";
    private const string FoundationIssue = "issue 2";
    private const string LaterIssue = "a later issue";

    private static readonly DeviceKind[] AllDevices = [DeviceKind.Cpu, DeviceKind.Simt, DeviceKind.Cuda];
    private static readonly DType[] DenseDTypes = [DType.F32, DType.BF16];

    private static readonly VariantInfo[] Entries =
    [
        new()
        {
            Name = "lora", DisplayName = "LoRA", Family = VariantFamily.Basic,
            Paper = new("LoRA: Low-Rank Adaptation of Large Language Models", 2021, "2106.09685"),
            Summary = "ΔW = s·B·A with A [r, in] random and B [out, r] = 0; mergeable, no inference cost.",
            ParameterFormula = "r·(in + out)", CountParameters = (i, o, opt) => Rank(opt, 8) * (i + o),
            Backends = AllDevices, DTypes = DenseDTypes,
            Defaults = "r = 8, alpha = 8 (s = alpha/r), dropout 0, A ~ U(±1/√in), B = 0",
            Availability = Availability.Available, Issue = FoundationIssue,
        },
        new()
        {
            Name = "rslora", DisplayName = "rsLoRA", Family = VariantFamily.Basic,
            Paper = new("A Rank Stabilization Scaling Factor for Fine-Tuning with LoRA", 2023, "2312.03732"),
            Summary = "LoRA with s = alpha/√r, so the update's scale stays stable as r grows.",
            ParameterFormula = "r·(in + out)", CountParameters = (i, o, opt) => Rank(opt, 8) * (i + o),
            Backends = AllDevices, DTypes = DenseDTypes,
            Defaults = "as LoRA, s = alpha/√r",
            Availability = Availability.Available, Issue = FoundationIssue,
        },
        new()
        {
            Name = "adalora", DisplayName = "AdaLoRA", Family = VariantFamily.Structural,
            Paper = new("Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning", 2023, "2303.10512"),
            Summary = "ΔW = P·Λ·Q (SVD form); prunes singular values by importance to share a rank budget.",
            ParameterFormula = "init_r·(in + out) + init_r", CountParameters = (i, o, opt) => Rank(opt, 12) * (i + o + 1),
            DefaultRank = 12,
            Defaults = "init_r = 12, target_r = 8, alpha = 8, s = alpha/init_r, orth_reg_weight = 0.5, β1 = β2 = 0.85",
            Availability = Availability.NotYetAvailable, Issue = LaterIssue,
        },
        new()
        {
            Name = "dora", DisplayName = "DoRA", Family = VariantFamily.Structural,
            Paper = new("DoRA: Weight-Decomposed Low-Rank Adaptation", 2024, "2402.09353"),
            Summary = "W' = m ⊙ (W0 + s·B·A)/‖W0 + s·B·A‖_row: a trained magnitude per output and a LoRA direction.",
            ParameterFormula = "r·(in + out) + out", CountParameters = (i, o, opt) => Rank(opt, 8) * (i + o) + o,
            Backends = AllDevices, DTypes = DenseDTypes,
            Defaults = "as LoRA; m = ‖W0‖_row; the norm is detached from the graph",
            Availability = Availability.Available, Issue = ThisIssue,
        },
        new()
        {
            Name = "lokr", DisplayName = "LoKr / KronA", Aliases = ["krona", "klora"], Family = VariantFamily.Structural,
            Paper = new("KronA: Parameter Efficient Tuning with Kronecker Adapter", 2022, "2212.10650",
                        "LoKr: LyCORIS, arXiv:2309.14859"),
            Summary = "ΔW = s·kron(w1, w2), w1 [out_l, in_m], w2 [out_k, in_n] (low-rank when r < max(out_k, in_n)/2).",
            ParameterFormula = "|w1| + |w2|; w1, w2 Kronecker factors of [out, in]",
            CountParameters = LoKrParameters,
            Defaults = "r = 8, alpha = 8, decompose_factor = -1, decompose_both = false, w1 = 0",
            Availability = Availability.NotYetAvailable, Issue = LaterIssue,
        },
        new()
        {
            Name = "flora", DisplayName = "FLoRA (Tucker)", Family = VariantFamily.Structural,
            Paper = new("FLoRA: Low-Rank Core Space for N-dimension", 2024, "2405.14739"),
            Summary = "ΔW = G ×₁ U₁ ×₂ U₂ (Tucker, a trainable core); for a linear layer U₁ G U₂ᵀ, G [r, r].",
            ParameterFormula = "r·(in + out) + r²", CountParameters = (i, o, opt) => Rank(opt, 8) * (i + o) + Rank(opt, 8) * Rank(opt, 8),
            Defaults = "r = 8 per mode",
            Availability = Availability.NotYetAvailable, Issue = LaterIssue,
        },
        new()
        {
            Name = "vera", DisplayName = "VeRA", Family = VariantFamily.MathematicalFoundation,
            Paper = new("VeRA: Vector-based Random Matrix Adaptation", 2023, "2310.11454"),
            Summary = "ΔW = diag(λ_b)·B·diag(λ_d)·A with A, B frozen random and shared by all layers; trains two vectors.",
            ParameterFormula = "r + out", CountParameters = (i, o, opt) => Rank(opt, 256) + o,
            DefaultRank = 256,
            Backends = AllDevices, DTypes = DenseDTypes,
            Defaults = "r = 256, projection_prng_key = 0, d_initial = 0.1, λ_b = 0, A, B ~ U(±√(6/fan_in))",
            Availability = Availability.Available, Issue = ThisIssue,
        },
        new()
        {
            Name = "pissa", DisplayName = "PiSSA", Family = VariantFamily.MathematicalFoundation,
            Paper = new("PiSSA: Principal Singular Values and Singular Vectors Adaptation of Large Language Models", 2024, "2404.02948"),
            Summary = "LoRA initialised with W0's top-r singular triplets; the base keeps the residual W0 − s·B·A.",
            ParameterFormula = "r·(in + out)", CountParameters = (i, o, opt) => Rank(opt, 8) * (i + o),
            Backends = AllDevices, DTypes = DenseDTypes,
            Defaults = "as LoRA; exact SVD, or randomized with K subspace iterations (pissa_niter_K); S_r/s",
            Availability = Availability.Available, Issue = ThisIssue,
        },
        new()
        {
            Name = "lora+", DisplayName = "LoRA+", Aliases = ["loraplus", "lora-plus"], Family = VariantFamily.MathematicalFoundation,
            Paper = new("LoRA+: Efficient Low Rank Adaptation of Large Models", 2024, "2402.12354"),
            Summary = "LoRA trained with B's learning rate ratio× A's (Optim.LoraPlus groups the parameters).",
            ParameterFormula = "r·(in + out)", CountParameters = (i, o, opt) => Rank(opt, 8) * (i + o),
            Backends = AllDevices, DTypes = DenseDTypes,
            Defaults = "ratio η_B/η_A = 16, weight decay 0 (PEFT's groups: groupA, groupB, groupB_no_decay)",
            Availability = Availability.Available, Issue = ThisIssue,
        },
        new()
        {
            Name = "sora", DisplayName = "SoRA", Family = VariantFamily.MathematicalFoundation,
            Paper = new("Sparse Low-rank Adaptation of Pre-trained Language Models", 2023, "2311.11696"),
            Summary = "LoRA with a gate g [r] between A and B, made sparse by a proximal (soft-threshold) step.",
            ParameterFormula = "r·(in + out) + r", CountParameters = (i, o, opt) => Rank(opt, 8) * (i + o + 1),
            Defaults = "r = 8, alpha = 16, sparse_lambda = 1e-3, sparse_lambda_2 = 1e-3, g ~ N(0, 1)",
            Availability = Availability.NotYetAvailable, Issue = LaterIssue,
        },
        new()
        {
            Name = "qlora", DisplayName = "QLoRA", Family = VariantFamily.MemoryEfficiency,
            Paper = new("QLoRA: Efficient Finetuning of Quantized LLMs", 2023, "2305.14314"),
            Summary = "LoRA over a frozen 4-bit NormalFloat base with double-quantized absmax.",
            ParameterFormula = "r·(in + out)", CountParameters = (i, o, opt) => Rank(opt, 8) * (i + o),
            Backends = AllDevices, DTypes = DenseDTypes,
            Defaults = "NF4, block 64, double quantization, compute dtype of the layer; LoRA defaults",
            Availability = Availability.Available, Issue = QuantizationIssue,
        },
        new()
        {
            Name = "qdora", DisplayName = "QDoRA", Family = VariantFamily.MemoryEfficiency,
            Paper = new("DoRA: Weight-Decomposed Low-Rank Adaptation", 2024, "2402.09353",
                        "QDoRA (Answer.AI, 2024) is DoRA over a QLoRA base and has no paper of its own"),
            Summary = "DoRA over a frozen NF4 base (the base is dequantized for the row norm).",
            ParameterFormula = "r·(in + out) + out", CountParameters = (i, o, opt) => Rank(opt, 8) * (i + o) + o,
            Backends = AllDevices, DTypes = [DType.F32],
            Defaults = "as DoRA and QLoRA (NF4, block 64, double quantization); F32 compute dtype; no merge",
            Availability = Availability.Available, Issue = ThisIssue,
        },
        new()
        {
            Name = "loftq", DisplayName = "LoftQ", Family = VariantFamily.MemoryEfficiency,
            Paper = new("LoftQ: LoRA-Fine-Tuning-Aware Quantization for Large Language Models", 2023, "2310.08659"),
            Summary = "QLoRA whose NF4 base and A, B are initialised jointly: W0 ≈ deq(Q) + B·A by alternating quantization and SVD.",
            ParameterFormula = "r·(in + out)", CountParameters = (i, o, opt) => Rank(opt, 8) * (i + o),
            Backends = AllDevices, DTypes = [DType.F32],
            Defaults = "4 bits (NF4), loftq_iter = 1, no alpha/r compensation (as PEFT)",
            Availability = Availability.Available, Issue = QuantizationIssue,
        },
        new()
        {
            Name = "lora-fa", DisplayName = "LoRA-FA", Aliases = ["lorafa"], Family = VariantFamily.MemoryEfficiency,
            Paper = new("LoRA-FA: Memory-efficient Low-rank Adaptation for Large Language Models Fine-tuning", 2023, "2308.03303"),
            Summary = "LoRA with A frozen at its random init: only B trains, and backward keeps x·Aᵀ instead of x.",
            ParameterFormula = "r·out", CountParameters = (i, o, opt) => Rank(opt, 8) * o,
            Backends = AllDevices, DTypes = DenseDTypes,
            Defaults = "as LoRA; A frozen",
            Availability = Availability.Available, Issue = ThisIssue,
        },
        new()
        {
            Name = "lotr", DisplayName = "LoTR", Family = VariantFamily.ArchitectureExtension,
            Paper = new("LoTR: Low Tensor Rank Weight Adaptation", 2024, "2402.01376"),
            Summary = "Tucker-form adapters U·G_l·Vᵀ with U, V shared across layers and a small core per layer (4-D kernels too).",
            ParameterFormula = "r² per layer (+ r·(in + out) shared by the layers)", CountParameters = (i, o, opt) => Rank(opt, 8) * Rank(opt, 8) + Rank(opt, 8) * (i + o),
            Defaults = "r = 8; parameter count shown for one layer holding the shared factors",
            Availability = Availability.NotYetAvailable, Issue = LaterIssue,
        },
        new()
        {
            Name = "mixture-rank1", DisplayName = "Mixture of rank-1 experts", Aliases = ["mora-mixture", "smora"],
            Family = VariantFamily.ArchitectureExtension,
            Paper = new("Each Rank Could be an Expert: Single-Ranked Mixture of Experts LoRA for Multi-Task Learning", 2025, "2501.15103",
                        "the guide's \"MoRA (Mixture of Rank-1 Adapters)\"; SMoRA is the published form"),
            Summary = "ΔW x = Σ_j G(x)_j·u_j v_jᵀ x: rank-1 experts chosen per token by a router.",
            ParameterFormula = "E·(in + out) + E·in (router), E = experts (default r)",
            CountParameters = (i, o, opt) => (opt.Experts ?? Rank(opt, 8)) * (i + o) + (opt.Experts ?? Rank(opt, 8)) * i,
            Defaults = "E = r = 8 experts, top-k routing",
            Availability = Availability.NotYetAvailable, Issue = LaterIssue,
        },
        new()
        {
            Name = "lora-moe", DisplayName = "LoRA for MoE experts", Family = VariantFamily.ArchitectureExtension,
            Paper = new("none: PEFT's target_parameters (ParamWrapper) for stacked expert weights", 2025, null,
                        "no single paper; REFERENCE.md 7.5"),
            Summary = "One LoRA per expert of a 3-D [E, in, out] expert weight: A [E·r, in], B [out, E·r].",
            ParameterFormula = "E·r·(in + out) for E experts (shown for E = 8)",
            CountParameters = (i, o, opt) => (opt.Experts ?? 8) * Rank(opt, 8) * (i + o),
            Defaults = "as LoRA, per expert",
            Availability = Availability.NotYetAvailable, Issue = LaterIssue,
        },
        new()
        {
            Name = "lora-ssm", DisplayName = "LoRA for SSM (Mamba)", Family = VariantFamily.ArchitectureExtension,
            Paper = new("MambaPEFT: Exploring Parameter-Efficient Fine-Tuning for Mamba", 2024, "2411.03855"),
            Summary = "LoRA on Mamba's input-dependent projections (partial LoRA on x_proj, dt_proj, in/out_proj).",
            ParameterFormula = "r·(in + out) per adapted projection", CountParameters = (i, o, opt) => Rank(opt, 8) * (i + o),
            Defaults = "as LoRA",
            Availability = Availability.NotYetAvailable, Issue = LaterIssue,
        },
        new()
        {
            Name = "auto-rank", DisplayName = "Automated r/alpha search", Aliases = ["mira", "autolora"], Family = VariantFamily.Automation,
            Paper = new("AutoLoRA: Automatically Tuning Matrix Ranks in Low-Rank Adaptation Based on Meta Learning", 2024, "2403.09113",
                        "the guide's \"MiRA\" (bilevel search over r, alpha) was not found as a paper; AutoLoRA is the closest published method"),
            Summary = "Bilevel optimization: the inner loop trains the adapter, the outer loop tunes r (and alpha) on validation data.",
            ParameterFormula = "r_max·(in + out) + r_max (selection variables) during search",
            CountParameters = (i, o, opt) => Rank(opt, 8) * (i + o + 1),
            Defaults = "r_max = 8 while searching",
            Availability = Availability.NotYetAvailable, Issue = LaterIssue,
        },
    ];

    /// <summary>Every variant, in the guide's order of families.</summary>
    public static IReadOnlyList<VariantInfo> Variants => Entries;

    /// <summary>The variant called <paramref name="name"/> (its key or an alias, any case).</summary>
    /// <exception cref="ArgumentException">No variant has that name.</exception>
    public static VariantInfo Get(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        string key = name.Trim().ToLowerInvariant();
        foreach (VariantInfo info in Entries)
        {
            if (info.Name == key || info.Aliases.Contains(key)) return info;
        }
        throw new ArgumentException($"Catalogue: no variant is called '{name}'; known: {string.Join(", ", Entries.Select(e => e.Name))}.", nameof(name));
    }

    /// <summary>
    /// An adapter layer of variant <paramref name="name"/> over the base weight <paramref name="w0"/> [out, in]
    /// (and <paramref name="bias"/>), on <paramref name="device"/>; the caller keeps its tensors.
    /// LoRA+ creates a plain LoRA layer: its difference is the optimizer (Optim.LoraPlus.CreateOptimizer).
    /// </summary>
    /// <exception cref="NotSupportedException">The variant is not available in this build; the message names the issue that brings it.</exception>
    public static IAdapterLayer Create(string name, Device device, Tensor w0, Tensor? bias, AdapterOptions? options = null)
    {
        VariantInfo info = Get(name);
        ArgumentNullException.ThrowIfNull(device);
        options ??= new AdapterOptions();
        int r = info.RankOf(options);
        float alpha = options.AlphaOrDefault;
        switch (info.Name)
        {
            case "lora":
            case "lora+":
                return new LoraLinear(device, w0, bias, r, alpha, options.Dropout, useRsLora: false, options.Seed, options.DType);
            case "rslora":
                return new LoraLinear(device, w0, bias, r, alpha, options.Dropout, useRsLora: true, options.Seed, options.DType);
            case "pissa":
                return Pissa.CreateLayer(device, w0, bias, r, alpha, options.Dropout, useRsLora: false, options.PissaIterations,
                                         options.Seed, options.DType);
            case "dora":
                return new DoraLinear(device, w0, bias, r, alpha, options.Dropout, useRsLora: false, options.Seed, options.DType);
            case "vera":
                return CreateVera(device, w0, bias, r, options);
            case "lora-fa":
                return new LoraFaLinear(device, w0, bias, r, alpha, options.Dropout, useRsLora: false, options.Seed, options.DType);
            case "qlora":
                return new QloraLinear(device, w0, bias, r, alpha, options.Dropout, useRsLora: false, options.Seed, options.DType);
            case "qdora":
                return CreateQDora(device, w0, bias, r, alpha, options);
            case "loftq":
                return CreateLoftQ(device, w0, bias, r, alpha, options);
            default:
                throw new NotSupportedException(
                    $"Catalogue: {info.DisplayName} ('{info.Name}') is not yet available in this build; it comes with {info.Issue}.");
        }
    }

    /// <summary>The catalogue as a text table, with parameter counts for one [out, in] layer.</summary>
    public static string FormatTable(int inFeatures = 4096, int outFeatures = 4096, AdapterOptions? options = null)
    {
        options ??= new AdapterOptions();
        var rows = new List<string[]>
        {
            new[] { "variant", "family", "paper", $"trainable @ {outFeatures}x{inFeatures}", "formula", "backends / dtypes", "status" },
        };
        foreach (VariantInfo info in Entries)
        {
            string paper = info.Paper.ArxivId is null ? $"{info.Paper.Year}, no arXiv paper" : $"{info.Paper.Year}, arXiv:{info.Paper.ArxivId}";
            string where = info.IsAvailable
                ? $"{string.Join("/", info.Backends.Select(b => b.ToString().ToLowerInvariant()))} · {string.Join("/", info.DTypes)}"
                : "-";
            string status = info.IsAvailable ? $"available ({info.Issue})" : $"not yet available ({info.Issue})";
            rows.Add([
                info.DisplayName, FamilyName(info.Family), paper,
                info.TrainableParameters(inFeatures, outFeatures, options).ToString("N0", CultureInfo.InvariantCulture)
                    + $" (r={info.RankOf(options)})",
                info.ParameterFormula, where, status,
            ]);
        }
        int[] widths = Enumerable.Range(0, rows[0].Length).Select(c => rows.Max(row => DisplayWidth(row[c]))).ToArray();
        var text = new StringBuilder();
        string rule = "+" + string.Join("+", widths.Select(w => new string('-', w + 2))) + "+";
        text.AppendLine(rule);
        for (int i = 0; i < rows.Count; i++)
        {
            text.AppendLine("| " + string.Join(" | ", rows[i].Select((cell, c) => cell + new string(' ', widths[c] - DisplayWidth(cell)))) + " |");
            if (i == 0) text.AppendLine(rule);
        }
        text.AppendLine(rule);
        return text.ToString();
    }

    /// <summary>Terminal columns of <paramref name="text"/>: the guide's CJK family names take two columns a character.</summary>
    private static int DisplayWidth(string text) =>
        text.Sum(c => c is >= '\u2E80' and <= '\uA4CF' or >= '\uAC00' and <= '\uD7A3' or >= '\uF900' and <= '\uFAFF' or >= '\uFF00' and <= '\uFF60' ? 2 : 1);

    /// <summary>The guide's name of a family (English, with the guide's Chinese term).</summary>
    public static string FamilyName(VariantFamily family) => family switch
    {
        VariantFamily.Basic => "basic (基础 LoRA)",
        VariantFamily.Structural => "structural (结构优化型)",
        VariantFamily.MathematicalFoundation => "mathematical (数学基础型)",
        VariantFamily.MemoryEfficiency => "memory (内存效率型)",
        VariantFamily.ArchitectureExtension => "architecture (架构扩展型)",
        VariantFamily.Automation => "automation (自动化型)",
        _ => throw new ArgumentOutOfRangeException(nameof(family), family, null),
    };

    private static long Rank(AdapterOptions options, int defaultRank) => options.Rank ?? defaultRank;

    /// <summary>PEFT's factorization(d, f) (REFERENCE.md 5.2): a divisor pair (m ≤ n) of d, nearest √d when f = -1.</summary>
    internal static (long M, long N) Factorization(long dimension, int factor)
    {
        if (factor > 0 && dimension % factor == 0)
        {
            long other = dimension / factor;
            return (Math.Min(factor, other), Math.Max(factor, other));
        }
        long limit = factor == -1 || factor <= 0 ? dimension : factor;
        long m = 1, n = dimension;
        while (m < n)
        {
            long next = m + 1;
            while (dimension % next != 0) next++;
            long nextN = dimension / next;
            if (next + nextN > m + n || next > limit) break;
            m = next;
            n = nextN;
        }
        return (Math.Min(m, n), Math.Max(m, n));
    }

    /// <summary>LoKr's trainable parameters (REFERENCE.md 5.3): w1 full or low-rank, w2 full or low-rank.</summary>
    private static long LoKrParameters(long inFeatures, long outFeatures, AdapterOptions options)
    {
        long r = Rank(options, 8);
        (long inM, long inN) = Factorization(inFeatures, options.LoKrFactor);
        (long outL, long outK) = Factorization(outFeatures, options.LoKrFactor);
        long w1 = options.LoKrDecomposeBoth && r < Math.Max(outL, inM) / 2.0 ? r * (outL + inM) : outL * inM;
        long w2 = r >= Math.Max(outK, inN) / 2.0 ? outK * inN : r * (outK + inN);
        return w1 + w2;
    }

    /// <summary>A VeRA layer over the caller's shared projections (they must hold rank r and this layer's shape).</summary>
    private static IAdapterLayer CreateVera(Device device, Tensor w0, Tensor? bias, int r, AdapterOptions options)
    {
        VeraProjections projections = options.VeraProjections
            ?? throw new ArgumentException(
                "Catalogue: VeRA's frozen projections are shared by all the VeRA layers of a model; create them once with " +
                "VeraProjections.ForLayers and pass them as AdapterOptions.VeraProjections.", nameof(options));
        if (projections.Rank != r)
            throw new ArgumentException($"Catalogue: the VeRA projections have rank {projections.Rank}, the options ask for r = {r}.", nameof(options));
        return new VeraLinear(device, w0, bias, projections, options.Dropout, options.VeraDInitial, options.DType, options.Seed);
    }

    /// <summary>A DoRA layer over w0 quantized as QLoRA's base (NF4, block 64, double quantization), F32 only.</summary>
    private static IAdapterLayer CreateQDora(Device device, Tensor w0, Tensor? bias, int r, float alpha, AdapterOptions options)
    {
        if (options.DType != DType.F32)
            throw new NotSupportedException($"Catalogue: QDoRA builds F32 layers in this build (its norm reads A·deq(W)ᵀ in fp32); got {options.DType}.");
        QuantizedWeight quantized;
        using (Tensor onDevice = w0.To(device))
        {
            if (onDevice.DType == DType.F32)
            {
                quantized = Ops.Nf4.Quantize(onDevice, QuantType.Nf4, blockSize: 64, doubleQuant: true);
            }
            else
            {
                using Tensor weight = Ops.Elementwise.Cast(onDevice, DType.F32);
                quantized = Ops.Nf4.Quantize(weight, QuantType.Nf4, blockSize: 64, doubleQuant: true);
            }
        }
        // The layer owns the quantized weight from here (it disposes it if construction fails).
        return new DoraLinear(device, quantized, bias, r, alpha, options.Dropout, useRsLora: false, options.Seed);
    }

    /// <summary>A QLoRA layer initialised by LoftQ: its NF4 base and A, B from LoftQ.Initialize.</summary>
    private static IAdapterLayer CreateLoftQ(Device device, Tensor w0, Tensor? bias, int r, float alpha, AdapterOptions options)
    {
        if (options.DType != DType.F32)
            throw new NotSupportedException($"Catalogue: LoftQ builds F32 layers in this build (its quantized base dequantizes to F32); got {options.DType}.");
        float scale = alpha / r;
        Tensor onDevice = w0.To(device);
        Tensor weight = onDevice;
        try
        {
            if (weight.DType != DType.F32) weight = Ops.Elementwise.Cast(onDevice, DType.F32);
            var (q, a, b) = LoftQ.Initialize(weight, r, options.LoftQIterations, scale: scale);
            using (a)
            using (b)
            {
                var layer = new QloraLinear(new Nf4Linear(q, bias), r, alpha, options.Dropout, useRsLora: false, options.Seed);
                try
                {
                    layer.A.Value.CopyFrom(a.ToArray());
                    layer.B.Value.CopyFrom(b.ToArray());
                    return layer;
                }
                catch
                {
                    layer.Dispose();
                    throw;
                }
            }
        }
        finally
        {
            if (!ReferenceEquals(weight, onDevice)) weight.Dispose();
            onDevice.Dispose();
        }
    }
}
