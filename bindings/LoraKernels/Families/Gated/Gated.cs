// The gated-rank op family: y = x W0ᵀ + bias + s·((dropout(x) Aᵀ) ⊙ G) Bᵀ with a gate per rank or
// per token and rank, its backward (the gate's gradient included) and merge, the sparse top-k
// form over a pool of rank-1 experts, and SoRA's proximal step. Checks every argument, allocates
// the outputs, then dispatches to the device's kernels (native/cpu/gated.cpp or kernels/gated.cu
// with kernels/lora.cu).
using LoraKernels.Families.Gated;

namespace LoraKernels.Ops;

public static class Gated
{
    /// <summary>The largest pool size and slot count (M·k) whose indices fp32 holds exactly.</summary>
    public const int MaxExactIndex = 1 << 24;

    /// <summary>
    /// y = x W0ᵀ + bias + scale·((dropout(x) Aᵀ) ⊙ G) Bᵀ. x [M, in], W0 [out, in], bias [out] or null, A [r, in],
    /// B [out, r] (x's dtype and device); gate F32: [r] (one value per rank) or [M, r] (per token and rank).
    /// Returns Y [M, out] (x's dtype) and U = dropout(x) Aᵀ [M, r] (F32, ungated), which <see cref="Backward"/> needs.
    /// </summary>
    public static ForwardResult Forward(Tensor x, Tensor w0, Tensor? bias, Tensor a, Tensor b, Tensor gate, float scale,
                                               float dropoutP = 0f, ulong seed = 0)
    {
        const string op = "Gated.Forward";
        AdapterDims d = AdapterChecks.DenseAdapter(op, "A gated-rank adapter", x, w0, a, b);
        AdapterChecks.Bias(op, bias, d);
        Gate(op, gate, d);
        Checks.Finite(op, nameof(scale), scale);
        Checks.DropoutProbability(op, nameof(dropoutP), dropoutP);
        AdapterChecks.OutputSize(op, "y", d.M, d.Out);
        Tensor y = Tensor.Empty(d.Device, d.DType, d.M, d.Out);
        Tensor? u = null;
        try
        {
            u = Tensor.Empty(d.Device, DType.F32, d.M, d.R);
            IGatedKernels.On(d.Device).Forward(x, w0, bias, a, b, gate, scale, dropoutP, seed, y, u);
            return new(y, u);
        }
        catch
        {
            Checks.DisposeAll(y, u);
            throw;
        }
    }

    /// <summary>
    /// Gradients of <see cref="Forward"/> given dy [M, out] and the forward's u [M, r] (F32): dx [M, in], dA [r, in],
    /// dB [out, r] (x's dtype) and dGate (F32, the gate's shape), each only when requested (null otherwise). With
    /// z = scale·dy B: dGate = Σ_m z ⊙ u (per rank) or z ⊙ u (per token). Pass the forward's scale, dropout and seed.
    /// </summary>
    public static GatedGradients Backward(
        Tensor x, Tensor w0, Tensor a, Tensor b, Tensor gate, Tensor u, Tensor dy, float scale, float dropoutP = 0f, ulong seed = 0,
        bool needDx = true, bool needDA = true, bool needDB = true, bool needDGate = true)
    {
        const string op = "Gated.Backward";
        AdapterDims d = AdapterChecks.DenseAdapter(op, "A gated-rank adapter", x, w0, a, b);
        Gate(op, gate, d);
        Checks.Alive(u, op, nameof(u));
        Checks.Shape(op, nameof(u), u, "M, r", [d.M, d.R], DType.F32, d.Device);
        Checks.Alive(dy, op, nameof(dy));
        Checks.Shape(op, nameof(dy), dy, "M, out", [d.M, d.Out], d.DType, d.Device);
        Checks.Finite(op, nameof(scale), scale);
        Checks.DropoutProbability(op, nameof(dropoutP), dropoutP);
        if (!needDx && !needDA && !needDB && !needDGate) return new(null, null, null, null);
        Tensor? dx = null, dA = null, dB = null, dGate = null;
        try
        {
            if (needDx) dx = Tensor.Empty(d.Device, d.DType, d.M, d.In);
            if (needDA) dA = Tensor.Empty(d.Device, d.DType, d.R, d.In);
            if (needDB) dB = Tensor.Empty(d.Device, d.DType, d.Out, d.R);
            if (needDGate) dGate = Tensor.Empty(d.Device, DType.F32, [.. gate.Shape]);
            IGatedKernels.On(d.Device).Backward(x, w0, a, b, gate, u, dy, scale, dropoutP, seed, dx, dA, dB, dGate);
            return new(dx, dA, dB, dGate);
        }
        catch
        {
            Checks.DisposeAll(dx, dA, dB, dGate);
            throw;
        }
    }

    /// <summary>W0 += scale·B·diag(g)·A in place (a per-rank gate g [r], F32).</summary>
    public static void Merge(Tensor w0, Tensor a, Tensor b, Tensor gate, float scale) => MergeScaled("Gated.Merge", w0, a, b, gate, scale);

    /// <summary>W0 -= scale·B·diag(g)·A in place: undoes <see cref="Merge"/> up to rounding.</summary>
    public static void Unmerge(Tensor w0, Tensor a, Tensor b, Tensor gate, float scale) => MergeScaled("Gated.Unmerge", w0, a, b, gate, -scale);

    /// <summary>
    /// The top-k form over a pool of E rank-1 experts (expert j = B[:, j]·A[j, :]): h[m, t] = dropout(x_m)·A[e_mt, :] and
    /// y = x W0ᵀ + bias + scale·Σ_t w[m, t]·h[m, t]·B[:, e_mt]. A [E, in], B [out, E] (x's dtype); expert [M, k] F32 holds
    /// expert indices (integers in [0, E), as <see cref="Routing.TopK"/> writes them), weight [M, k] F32 their routing
    /// weights. Experts no token picked are not read. Returns Y [M, out] and H [M, k] (F32), which the backward needs.
    /// </summary>
    public static (Tensor Y, Tensor H) TopKForward(Tensor x, Tensor w0, Tensor? bias, Tensor a, Tensor b, Tensor expert, Tensor weight,
                                                   float scale, float dropoutP = 0f, ulong seed = 0) =>
        TopKForward("Gated.TopKForward", x, w0, bias, a, b, expert, weight, scale, dropoutP, seed, checkIndices: true);

    /// <summary>
    /// Gradients of <see cref="TopKForward"/> given dy [M, out] and its h: dx [M, in], dA [E, in], dB [out, E] (x's dtype;
    /// rows and columns of experts no token picked are zero) and dWeight [M, k] (F32), each only when requested.
    /// </summary>
    public static TopKGradients TopKBackward(
        Tensor x, Tensor w0, Tensor a, Tensor b, Tensor expert, Tensor weight, Tensor h, Tensor dy, float scale, float dropoutP = 0f,
        ulong seed = 0, bool needDx = true, bool needDA = true, bool needDB = true, bool needDWeight = true) =>
        TopKBackward("Gated.TopKBackward", x, w0, a, b, expert, weight, h, dy, scale, dropoutP, seed, needDx, needDA, needDB, needDWeight,
                     checkIndices: true);

    /// <summary>
    /// SoRA's proximal step on <paramref name="gate"/> (F32, in place), the reference optimizer's three masked
    /// assignments in order: g &gt; λ: g −= λ; then g &lt; −λ: g += λ; then |g| &lt; λ: g = 0 (REFERENCE.md 7.3).
    /// </summary>
    public static void SoftThreshold(Tensor gate, float lambda)
    {
        const string op = "Gated.SoftThreshold";
        Checks.Alive(gate, op, nameof(gate));
        Checks.NotEmpty(op, nameof(gate), gate);
        Checks.Fp32(op, nameof(gate), gate);
        if (!(lambda >= 0f) || !float.IsFinite(lambda))
            throw new ArgumentOutOfRangeException(nameof(lambda), lambda, $"{op}: lambda must be finite and >= 0.");
        IGatedKernels.On(gate.Device).SoftThreshold(gate, lambda);
    }

    /// <summary>The top-k forward; <paramref name="checkIndices"/> false skips reading the indices back (the router wrote them).</summary>
    internal static (Tensor Y, Tensor H) TopKForward(string op, Tensor x, Tensor w0, Tensor? bias, Tensor a, Tensor b, Tensor expert,
                                                     Tensor weight, float scale, float dropoutP, ulong seed, bool checkIndices)
    {
        var (d, k) = Pool(op, x, w0, a, b, expert, weight, checkIndices);
        AdapterChecks.Bias(op, bias, d);
        Checks.Finite(op, nameof(scale), scale);
        Checks.DropoutProbability(op, nameof(dropoutP), dropoutP);
        AdapterChecks.OutputSize(op, "y", d.M, d.Out);
        Tensor y = Tensor.Empty(d.Device, d.DType, d.M, d.Out);
        Tensor? h = null;
        try
        {
            h = Tensor.Empty(d.Device, DType.F32, d.M, k);
            IGatedKernels.On(d.Device).TopKForward(x, w0, bias, a, b, expert, weight, scale, dropoutP, seed, y, h);
            return (y, h);
        }
        catch
        {
            Checks.DisposeAll(y, h);
            throw;
        }
    }

    internal static TopKGradients TopKBackward(
        string op, Tensor x, Tensor w0, Tensor a, Tensor b, Tensor expert, Tensor weight, Tensor h, Tensor dy, float scale, float dropoutP,
        ulong seed, bool needDx, bool needDA, bool needDB, bool needDWeight, bool checkIndices)
    {
        var (d, k) = Pool(op, x, w0, a, b, expert, weight, checkIndices);
        Checks.Alive(h, op, nameof(h));
        Checks.Shape(op, nameof(h), h, "M, k", [d.M, k], DType.F32, d.Device);
        Checks.Alive(dy, op, nameof(dy));
        Checks.Shape(op, nameof(dy), dy, "M, out", [d.M, d.Out], d.DType, d.Device);
        Checks.Finite(op, nameof(scale), scale);
        Checks.DropoutProbability(op, nameof(dropoutP), dropoutP);
        if (!needDx && !needDA && !needDB && !needDWeight) return new(null, null, null, null);
        Tensor? dx = null, dA = null, dB = null, dWeight = null;
        try
        {
            if (needDx) dx = Tensor.Empty(d.Device, d.DType, d.M, d.In);
            if (needDA) dA = Tensor.Empty(d.Device, d.DType, d.R, d.In);
            if (needDB) dB = Tensor.Empty(d.Device, d.DType, d.Out, d.R);
            if (needDWeight) dWeight = Tensor.Empty(d.Device, DType.F32, d.M, k);
            IGatedKernels.On(d.Device).TopKBackward(x, w0, a, b, expert, weight, h, dy, scale, dropoutP, seed, dx, dA, dB, dWeight);
            return new(dx, dA, dB, dWeight);
        }
        catch
        {
            Checks.DisposeAll(dx, dA, dB, dWeight);
            throw;
        }
    }

    /// <summary>gate is F32 on the adapter's device, [r] or [M, r].</summary>
    private static void Gate(string op, Tensor gate, AdapterDims d)
    {
        Checks.Alive(gate, op, nameof(gate));
        bool perRank = gate.Rank == 1 && gate.Shape[0] == d.R;
        bool perToken = gate.Rank == 2 && gate.Shape[0] == d.M && gate.Shape[1] == d.R;
        if (!(perRank || perToken) || gate.DType != DType.F32 || !ReferenceEquals(gate.Device, d.Device))
            throw new ArgumentException(
                $"{op}: gate must be [r] = [{d.R}] (one value per rank) or [M, r] = [{d.M}, {d.R}] (one per token and rank), " +
                $"dtype F32 on {d.Device}; got {gate.Describe()}", nameof(gate));
    }

    private static void MergeScaled(string op, Tensor w0, Tensor a, Tensor b, Tensor gate, float signedScale)
    {
        Checks.Alive(w0, op, nameof(w0));
        (long outFeatures, long inFeatures) = Checks.Matrix(op, nameof(w0), w0, "out, in");
        long r = AdapterChecks.Rank(op, "A gated-rank adapter", a, inFeatures, w0.DType, w0.Device);
        Checks.Alive(b, op, nameof(b));
        Checks.Shape(op, nameof(b), b, "out, r", [outFeatures, r], w0.DType, w0.Device);
        Checks.Alive(gate, op, nameof(gate));
        Checks.Shape(op, nameof(gate), gate, "r", [r], DType.F32, w0.Device);
        Checks.Finite(op, "scale", signedScale);
        IGatedKernels.On(w0.Device).Merge(w0, a, b, gate, signedScale);
    }

    /// <summary>
    /// The pool (A [E, in], B [out, E] as a LoRA pair of rank E over W0) and the routing (expert and weight [M, k], F32,
    /// 1 ≤ k ≤ E); with <paramref name="checkIndices"/>, every index is read back and checked. Returns the dims (R = E) and k.
    /// </summary>
    private static (AdapterDims Dims, int K) Pool(string op, Tensor x, Tensor w0, Tensor a, Tensor b, Tensor expert, Tensor weight,
                                                  bool checkIndices)
    {
        AdapterDims d = AdapterChecks.DenseAdapter(op, "A pool of rank-1 experts", x, w0, a, b);
        if (d.R >= MaxExactIndex)
            throw new ArgumentException($"{op}: a is {a.Describe()}: a pool of {d.R} experts is over 2^24, whose indices fp32 cannot hold exactly.", nameof(a));
        Checks.Alive(expert, op, nameof(expert));
        if (expert.Rank != 2 || expert.Shape[0] != d.M || expert.DType != DType.F32 || !ReferenceEquals(expert.Device, d.Device))
            throw new ArgumentException($"{op}: expert must be [M, k] = [{d.M}, k] with dtype F32 on {d.Device}, got {expert.Describe()}", nameof(expert));
        long k = expert.Shape[1];
        if (k < 1 || k > d.R)
            throw new ArgumentOutOfRangeException(nameof(expert),
                $"{op}: expert is {expert.Describe()}, so k = {k}; k must be in [1, E] for a pool of E = {d.R} experts (a is {a.Describe()}).");
        if (d.M * k >= MaxExactIndex)
            throw new ArgumentException($"{op}: M·k = {d.M * k} slots is over 2^24; split the batch.", nameof(expert));
        Checks.Alive(weight, op, nameof(weight));
        Checks.Shape(op, nameof(weight), weight, "M, k", [d.M, k], DType.F32, d.Device);
        if (checkIndices) Indices(op, expert, d.R);
        return (d, (int)k);
    }

    /// <summary>Reads the indices back (M·k floats) and names the first that is not an integer in [0, E).</summary>
    internal static void Indices(string op, Tensor expert, long experts)
    {
        float[] values = expert.ToArray();
        long k = expert.Shape[1];
        for (int i = 0; i < values.Length; i++)
        {
            float e = values[i];
            if (!(e >= 0f && e < experts && e == MathF.Floor(e)))
                throw new ArgumentException(
                    $"{op}: expert[{i / k}, {i % k}] = {e} is not an expert index: indices must be integers in [0, {experts}) for a pool of {experts} experts.",
                    nameof(expert));
        }
    }
}
