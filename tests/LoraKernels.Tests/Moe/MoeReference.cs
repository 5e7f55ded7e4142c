using LoraKernels.Layers;

namespace LoraKernels.Tests.MixtureOfExperts;

/// <summary>The values of one MoE layer (frozen experts, router, bias, LoRA tables) and a batch x, as float arrays.</summary>
internal sealed class MoeModel
{
    public required MoeExpertKind Kind { get; init; }
    public required int T { get; init; }
    public required int In { get; init; }
    public required int Hidden { get; init; }
    public required int Out { get; init; }
    public required int Experts { get; init; }
    public required int TopK { get; init; }
    public required int Rank { get; init; }
    public required float Scale { get; init; }
    public required float[] X { get; set; }
    public required float[] Router { get; set; }
    public required float[]? Bias { get; init; }
    /// <summary>[E, out_p, in_p] per projection.</summary>
    public required Dictionary<string, float[]> Tables { get; init; }
    /// <summary>A [E, r, in_p] and B [E, out_p, r] per targeted projection.</summary>
    public Dictionary<string, (float[] A, float[] B)> Lora { get; } = new();

    public (int In, int Out) Dims(string projection) => projection switch
    {
        "weight" => (In, Out),
        "gate_proj" or "up_proj" => (In, Hidden),
        _ => (Hidden, Out),
    };
}

/// <summary>
/// The MoE layer in double, looping over each token's chosen experts (no sorting, no grouping, no segments):
/// top-k by logit (ties: the lower expert), softmax over the chosen logits, each expert's projections with
/// their LoRA, the weighted sum; and its chain-rule backward for L = Σ dy ⊙ y. Every value is Tracked, so the
/// device tolerances scale with the magnitudes the fp32 computation can drift by.
/// </summary>
internal static class MoeReference
{
    public sealed record ForwardResult(Tracked[] Y, int[] Choice, double MinimumMargin);

    public sealed record BackwardResult(Tracked[] Dx, Tracked[] DRouter, Dictionary<string, (Tracked[] DA, Tracked[] DB)> Lora);

    /// <summary>Per token and choice: the expert and what its backward reads.</summary>
    private sealed record Choice(int Expert, Tracked Gate, Tracked[] Output, Dictionary<string, (Tracked[] Input, Tracked[] U)> Projections,
                                 Tracked[]? GatePre, Tracked[]? UpPre, Tracked[]? Hidden);

    private sealed record TokenPass(Tracked[] X, Tracked[] Logits, Choice[] Choices);

    public static ForwardResult Forward(MoeModel m)
    {
        var y = new Tracked[m.T * m.Out];
        var choice = new int[m.T * m.TopK];
        double margin = double.PositiveInfinity;
        for (int t = 0; t < m.T; t++)
        {
            TokenPass pass = Token(m, t, out double tokenMargin);
            margin = Math.Min(margin, tokenMargin);
            for (int n = 0; n < m.Out; n++)
            {
                Tracked sum = m.Bias is null ? Tracked.Zero : Tracked.Leaf(m.Bias[n]);
                foreach (Choice c in pass.Choices) sum += c.Gate * c.Output[n];
                y[t * m.Out + n] = sum;
            }
            for (int j = 0; j < m.TopK; j++) choice[t * m.TopK + j] = pass.Choices[j].Expert;
        }
        return new ForwardResult(y, choice, margin);
    }

    public static BackwardResult Backward(MoeModel m, float[] dy)
    {
        var dx = new Tracked[m.T * m.In];
        var dRouter = new Tracked[m.Experts * m.In];
        Array.Fill(dx, Tracked.Zero);
        Array.Fill(dRouter, Tracked.Zero);
        var lora = m.Lora.ToDictionary(kv => kv.Key, kv => (DA: Filled(kv.Value.A.Length), DB: Filled(kv.Value.B.Length)));
        for (int t = 0; t < m.T; t++)
        {
            TokenPass pass = Token(m, t, out _);
            Tracked[] dyRow = Tracked.Leaves(dy[(t * m.Out)..((t + 1) * m.Out)]);
            var dGates = new Tracked[m.TopK];
            var dxRow = new Tracked[m.In];
            Array.Fill(dxRow, Tracked.Zero);
            for (int j = 0; j < m.TopK; j++)
            {
                Choice c = pass.Choices[j];
                dGates[j] = Dot(dyRow, c.Output);
                Tracked[] dOut = Array.ConvertAll(dyRow, g => c.Gate * g);
                Tracked[] dInput;
                if (m.Kind == MoeExpertKind.Linear)
                {
                    dInput = ProjectBackward(m, "weight", c, dOut, lora);
                }
                else
                {
                    Tracked[] dHidden = ProjectBackward(m, "down_proj", c, dOut, lora);
                    var dGate = new Tracked[m.Hidden];
                    var dUp = new Tracked[m.Hidden];
                    for (int i = 0; i < m.Hidden; i++)
                    {
                        Tracked a = c.GatePre![i], b = c.UpPre![i];
                        dGate[i] = dHidden[i] * b * a.Apply(SiluGrad(a.Value), SiluSecond(a.Value));
                        dUp[i] = dHidden[i] * a.Apply(Silu(a.Value), SiluGrad(a.Value));
                    }
                    dInput = Add(ProjectBackward(m, "gate_proj", c, dGate, lora), ProjectBackward(m, "up_proj", c, dUp, lora));
                }
                dxRow = Add(dxRow, dInput);
            }
            // Router: dz_i = g_i·(dg_i − Σ_l g_l·dg_l) over the chosen experts.
            Tracked mean = Tracked.Zero;
            for (int j = 0; j < m.TopK; j++) mean += pass.Choices[j].Gate * dGates[j];
            for (int j = 0; j < m.TopK; j++)
            {
                int e = pass.Choices[j].Expert;
                Tracked dz = pass.Choices[j].Gate * (dGates[j] - mean);
                for (int c = 0; c < m.In; c++)
                {
                    dRouter[e * m.In + c] += dz * pass.X[c];
                    dxRow[c] += m.Router[e * m.In + c] * dz;
                }
            }
            dxRow.CopyTo(dx, t * m.In);
        }
        return new BackwardResult(dx, dRouter, lora.ToDictionary(kv => kv.Key, kv => (kv.Value.DA, kv.Value.DB)));
    }

    /// <summary>The loss Σ dy ⊙ y in double (values only), for central differences.</summary>
    public static double Loss(MoeModel m, float[] dy)
    {
        Tracked[] y = Forward(m).Y;
        double sum = 0;
        for (int i = 0; i < y.Length; i++) sum += dy[i] * y[i].Value;
        return sum;
    }

    private static TokenPass Token(MoeModel m, int t, out double margin)
    {
        Tracked[] x = Tracked.Leaves(m.X[(t * m.In)..((t + 1) * m.In)]);
        var logits = new Tracked[m.Experts];
        for (int e = 0; e < m.Experts; e++)
        {
            Tracked z = Tracked.Zero;
            for (int c = 0; c < m.In; c++) z += m.Router[e * m.In + c] * x[c];
            logits[e] = z;
        }
        int[] order = Enumerable.Range(0, m.Experts).OrderByDescending(e => logits[e].Value).ThenBy(e => e).ToArray();
        margin = m.TopK < m.Experts ? logits[order[m.TopK - 1]].Value - logits[order[m.TopK]].Value : double.PositiveInfinity;
        double top = logits[order[0]].Value, sum = 0;
        for (int j = 0; j < m.TopK; j++) sum += Math.Exp(logits[order[j]].Value - top);
        // δg_j = g_j·(δz_j − Σ_l g_l·δz_l): magnitude g_j·(M_zj + Σ_l g_l·M_zl), plus its own rounding.
        double[] g = Enumerable.Range(0, m.TopK).Select(j => Math.Exp(logits[order[j]].Value - top) / sum).ToArray();
        double spread = Enumerable.Range(0, m.TopK).Sum(j => g[j] * logits[order[j]].Magnitude);
        var choices = new Choice[m.TopK];
        for (int j = 0; j < m.TopK; j++)
        {
            var gate = new Tracked(g[j], g[j] * (logits[order[j]].Magnitude + spread) + g[j]);
            var projections = new Dictionary<string, (Tracked[] Input, Tracked[] U)>();
            int e = order[j];
            if (m.Kind == MoeExpertKind.Linear)
            {
                choices[j] = new Choice(e, gate, Project(m, "weight", e, x, projections), projections, null, null, null);
                continue;
            }
            Tracked[] a = Project(m, "gate_proj", e, x, projections), b = Project(m, "up_proj", e, x, projections);
            var h = new Tracked[m.Hidden];
            for (int i = 0; i < m.Hidden; i++) h[i] = a[i].Apply(Silu(a[i].Value), SiluGrad(a[i].Value)) * b[i];
            choices[j] = new Choice(e, gate, Project(m, "down_proj", e, h, projections), projections, a, b, h);
        }
        return new TokenPass(x, logits, choices);
    }

    /// <summary>W_e·input + s·B_e·(A_e·input), keeping the input and u = A_e·input for the backward.</summary>
    private static Tracked[] Project(MoeModel m, string projection, int e, Tracked[] input,
                                     Dictionary<string, (Tracked[] Input, Tracked[] U)> keep)
    {
        var (inP, outP) = m.Dims(projection);
        float[] w = m.Tables[projection];
        var output = new Tracked[outP];
        for (int i = 0; i < outP; i++)
        {
            Tracked sum = Tracked.Zero;
            for (int c = 0; c < inP; c++) sum += w[(e * outP + i) * inP + c] * input[c];
            output[i] = sum;
        }
        Tracked[] u = [];
        if (m.Lora.TryGetValue(projection, out var lora))
        {
            u = new Tracked[m.Rank];
            for (int j = 0; j < m.Rank; j++)
            {
                Tracked sum = Tracked.Zero;
                for (int c = 0; c < inP; c++) sum += lora.A[(e * m.Rank + j) * inP + c] * input[c];
                u[j] = sum;
            }
            for (int i = 0; i < outP; i++)
            {
                Tracked sum = Tracked.Zero;
                for (int j = 0; j < m.Rank; j++) sum += lora.B[(e * outP + i) * m.Rank + j] * u[j];
                output[i] += m.Scale * sum;
            }
        }
        keep[projection] = (input, u);
        return output;
    }

    /// <summary>d input = W_eᵀ·dOut + A_eᵀ·(s·B_eᵀ·dOut); dB_e += s·dOut ⊗ u; dA_e += (s·B_eᵀ·dOut) ⊗ input.</summary>
    private static Tracked[] ProjectBackward(MoeModel m, string projection, Choice c, Tracked[] dOut,
                                             Dictionary<string, (Tracked[] DA, Tracked[] DB)> grads)
    {
        var (inP, outP) = m.Dims(projection);
        int e = c.Expert;
        var (input, u) = c.Projections[projection];
        float[] w = m.Tables[projection];
        var dInput = new Tracked[inP];
        for (int k = 0; k < inP; k++)
        {
            Tracked sum = Tracked.Zero;
            for (int i = 0; i < outP; i++) sum += w[(e * outP + i) * inP + k] * dOut[i];
            dInput[k] = sum;
        }
        if (!m.Lora.TryGetValue(projection, out var lora)) return dInput;
        var (dA, dB) = grads[projection];
        for (int j = 0; j < m.Rank; j++)
        {
            Tracked du = Tracked.Zero;
            for (int i = 0; i < outP; i++)
            {
                du += lora.B[(e * outP + i) * m.Rank + j] * dOut[i];
                dB[(e * outP + i) * m.Rank + j] += m.Scale * (dOut[i] * u[j]);
            }
            du = m.Scale * du;
            for (int k = 0; k < inP; k++)
            {
                dInput[k] += lora.A[(e * m.Rank + j) * inP + k] * du;
                dA[(e * m.Rank + j) * inP + k] += du * input[k];
            }
        }
        return dInput;
    }

    private static Tracked Dot(Tracked[] a, Tracked[] b)
    {
        Tracked sum = Tracked.Zero;
        for (int i = 0; i < a.Length; i++) sum += a[i] * b[i];
        return sum;
    }

    private static Tracked[] Add(Tracked[] a, Tracked[] b) => a.Zip(b, (p, q) => p + q).ToArray();

    private static Tracked[] Filled(int n)
    {
        var values = new Tracked[n];
        Array.Fill(values, Tracked.Zero);
        return values;
    }

    public static double Sigmoid(double x) => 1 / (1 + Math.Exp(-x));
    public static double Silu(double x) => x * Sigmoid(x);
    public static double SiluGrad(double x) => Sigmoid(x) * (1 + x * (1 - Sigmoid(x)));
    public static double SiluSecond(double x) => Sigmoid(x) * (1 - Sigmoid(x)) * (2 + x * (1 - 2 * Sigmoid(x)));
}
