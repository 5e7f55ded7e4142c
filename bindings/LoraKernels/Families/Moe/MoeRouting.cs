// Token-choice top-k routing of one batch, on the host (the router's logits are [T, E], small): each
// token picks the k experts with the largest logits (ties: the lower expert), weighted by a softmax over
// those k logits (Mixtral's: softmax(topk(logits)), equal to the full softmax renormalized over the
// chosen). The T·k assignments are then sorted by expert, token order kept within an expert, so each
// expert's rows form one segment of the segmented products (and an expert nobody chose an empty one:
// it is not computed). The router gradient is the softmax's over the chosen logits (the choice itself
// is piecewise constant). This is the family's own small op: the gated families (SoRA, AdaLoRA, MoRA)
// bring their own softmax/top-k, to be unified after both land.
using LoraKernels.Ops;

namespace LoraKernels.Families.Moe;

internal sealed class MoeRouting
{
    private MoeRouting(int tokens, int experts, int topK)
    {
        Tokens = tokens;
        Experts = experts;
        TopK = topK;
        Choice = new int[tokens * topK];
        Weights = new float[tokens * topK];
        AssignmentTokens = new int[tokens * topK];
        Positions = new int[tokens * topK];
        SortedGates = new float[tokens * topK];
        Counts = new int[experts];
    }

    public int Tokens { get; }
    public int Experts { get; }
    public int TopK { get; }

    /// <summary>The expert of token t's j-th choice, at [t·k + j], by descending logit.</summary>
    public int[] Choice { get; }

    /// <summary>The routing weight of token t's j-th choice (softmax over its k logits), at [t·k + j].</summary>
    public float[] Weights { get; }

    /// <summary>The token of each assignment in expert-sorted order [P = T·k].</summary>
    public int[] AssignmentTokens { get; }

    /// <summary>The sorted position of token t's j-th choice, at [t·k + j].</summary>
    public int[] Positions { get; }

    /// <summary>The routing weight of each assignment in sorted order [P].</summary>
    public float[] SortedGates { get; }

    /// <summary>Rows per expert (0: the expert is not computed and its adapter gets a zero gradient).</summary>
    public int[] Counts { get; }

    /// <summary>One segment per expert over the sorted assignments.</summary>
    public SegmentTable Segments { get; private set; } = null!;

    /// <summary>Routes <paramref name="tokens"/> tokens given their logits [T, E] (row-major).</summary>
    public static MoeRouting Route(ReadOnlySpan<float> logits, int tokens, int experts, int topK)
    {
        var routing = new MoeRouting(tokens, experts, topK);
        Span<int> order = experts <= 256 ? stackalloc int[experts] : new int[experts];
        for (int t = 0; t < tokens; t++)
        {
            ReadOnlySpan<float> row = logits.Slice(t * experts, experts);
            for (int e = 0; e < experts; e++) order[e] = e;
            // Insertion sort by descending logit, the lower expert first among equals: a stable order.
            for (int i = 1; i < experts; i++)
                for (int j = i; j > 0 && row[order[j]] > row[order[j - 1]]; j--) (order[j], order[j - 1]) = (order[j - 1], order[j]);
            double top = row[order[0]], sum = 0;
            for (int j = 0; j < topK; j++) sum += Math.Exp(row[order[j]] - top);
            for (int j = 0; j < topK; j++)
            {
                routing.Choice[t * topK + j] = order[j];
                routing.Weights[t * topK + j] = (float)(Math.Exp(row[order[j]] - top) / sum);
                routing.Counts[order[j]]++;
            }
        }
        var starts = new int[experts];
        for (int e = 1; e < experts; e++) starts[e] = starts[e - 1] + routing.Counts[e - 1];
        var next = (int[])starts.Clone();
        for (int t = 0; t < tokens; t++)
            for (int j = 0; j < topK; j++)
            {
                int i = t * topK + j, p = next[routing.Choice[i]]++;
                routing.AssignmentTokens[p] = t;
                routing.Positions[i] = p;
                routing.SortedGates[p] = routing.Weights[i];
            }
        routing.Segments = SegmentTable.FromSegments(tokens * topK, experts,
                                                     Enumerable.Range(0, experts).Select(e => new Segment(starts[e], routing.Counts[e], e)));
        return routing;
    }

    /// <summary>
    /// d loss / d logits [T, E] from the gradient of each sorted assignment's weight: for the chosen set S of
    /// token t, dz_i = g_i·(dg_i − Σ_{j∈S} g_j·dg_j) for i ∈ S and 0 elsewhere (in double, rounded once).
    /// </summary>
    public float[] LogitGradient(ReadOnlySpan<float> sortedGateGradient)
    {
        var dz = new float[Tokens * Experts];
        for (int t = 0; t < Tokens; t++)
        {
            double mean = 0;
            for (int j = 0; j < TopK; j++) mean += (double)Weights[t * TopK + j] * sortedGateGradient[Positions[t * TopK + j]];
            for (int j = 0; j < TopK; j++)
            {
                int i = t * TopK + j;
                dz[t * Experts + Choice[i]] = (float)(Weights[i] * (sortedGateGradient[Positions[i]] - mean));
            }
        }
        return dz;
    }
}
