// The Tucker op family (FLoRA / LoTR): ΔW = scale·(S ×₁ U_out ×₂ U_in ...), a low-rank core S with one factor
// per mode. For a linear layer (two modes) ΔW = scale·B·S·A with A = U_inᵀ [r_in, in] (as LoRA's A), the core
// S [r_out, r_in] and B = U_out [out, r_out]: LoRA with a trainable core between its factors. For a convolution
// (four modes, the spatial ones kept whole) ΔW[o, c, a, b] = scale·Σ B[o, p]·S[p, q, a, b]·A[q, c]. Every mode
// product is one strided batched product (kernels/tucker.cu, native/cpu/tucker.cpp); the linear adapter's heavy
// products are LoRA's fused kernels on the folded factor B' = B·S [out, r_in] (O(out·r_out·r_in) per call), so
// the adapter is applied without forming ΔW: 2·M·r_in·(in + out) FLOPs against the base's 2·M·in·out.
// Checks every argument, allocates the outputs, then dispatches to the device's kernels.
using LoraKernels.Families.Lora;
using LoraKernels.Families.Tucker;

namespace LoraKernels.Ops;

public static class Tucker
{
    /// <summary>
    /// The mode-<paramref name="mode"/> product X ×_mode U: Y has X's shape with dimension <paramref name="mode"/>
    /// (0-based) replaced by J, and Y[.., j, ..] = Σ_i U[j, i]·X[.., i, ..]. U [J, I] with I = X's dimension
    /// <paramref name="mode"/>; one dtype and device. A Tucker reconstruction S ×₁ U₁ ... ×_N U_N is N of these.
    /// </summary>
    public static Tensor ModeProduct(Tensor x, Tensor u, int mode)
    {
        const string op = "Tucker.ModeProduct";
        Checks.Alive(x, op, nameof(x));
        Checks.Alive(u, op, nameof(u));
        if (x.Rank < 1 || x.ElementCount < 1)
            throw new ArgumentException($"{op}: x must have at least one dimension and one element, got {x.Describe()}", nameof(x));
        if (mode < 0 || mode >= x.Rank)
            throw new ArgumentOutOfRangeException(nameof(mode), mode, $"{op}: mode must name a dimension of x (0 to {x.Rank - 1}), x is {x.Describe()}.");
        Checks.Size(op, nameof(x), x);
        long inner = 1, batch = 1;
        for (int d = 0; d < mode; d++) batch *= x.Shape[d];
        for (int d = mode + 1; d < x.Rank; d++) inner *= x.Shape[d];
        long i = x.Shape[mode];
        if (u.Rank != 2 || u.Shape[0] < 1 || u.Shape[1] != i || u.DType != x.DType || !ReferenceEquals(u.Device, x.Device))
            throw new ArgumentException(
                $"{op}: u must be [J, I] = [J, {i}] (I = x's dimension {mode}) with J >= 1, dtype {x.DType} on {x.Device}, got {u.Describe()}", nameof(u));
        Checks.Size(op, nameof(u), u);
        long j = u.Shape[0];
        long[] shape = x.Shape.ToArray();
        shape[mode] = j;
        AdapterChecks.OutputSize(op, "y", batch * j, inner);
        Tensor y = Tensor.Empty(x.Device, x.DType, shape);
        try
        {
            Product(new BatchedProduct(batch, j, inner, i, false, 0, false, i * inner, j * inner), u, x, 1f, 0f, y);
            return y;
        }
        catch
        {
            y.Dispose();
            throw;
        }
    }

    /// <summary>
    /// The linear Tucker adapter: y = x W0ᵀ + bias + scale·((x Aᵀ) Sᵀ) Bᵀ, i.e. ΔW = scale·B·S·A. x [M, in], W0 [out, in],
    /// bias [out] or null, A [r_in, in], core S [r_out, r_in], B [out, r_out], all of x's dtype and device. Returns
    /// Y [M, out] and U = x Aᵀ [M, r_in] (F32), which <see cref="Backward"/> needs. ΔW is never formed.
    /// </summary>
    public static ForwardResult Forward(Tensor x, Tensor w0, Tensor? bias, Tensor a, Tensor core, Tensor b, float scale)
    {
        const string op = "Tucker.Forward";
        TuckerDims d = CheckLinear(op, x, w0, a, core, b);
        AdapterChecks.Bias(op, bias, d.Adapter);
        Checks.Finite(op, nameof(scale), scale);
        AdapterChecks.OutputSize(op, "y", d.Adapter.M, d.Adapter.Out);
        Tensor y = Tensor.Empty(d.Adapter.Device, d.Adapter.DType, d.Adapter.M, d.Adapter.Out);
        Tensor? u = null;
        try
        {
            u = Tensor.Empty(d.Adapter.Device, DType.F32, d.Adapter.M, d.RIn);
            using Tensor folded = FoldCore(core, b, d);
            ILoraKernels.On(d.Adapter.Device).Forward(x, w0, bias, a, folded, scale, 0f, 0, y, u);
            return new(y, u);
        }
        catch
        {
            Checks.DisposeAll(y, u);
            throw;
        }
    }

    /// <summary>
    /// Gradients of <see cref="Forward"/> given dy [M, out] and the forward's u [M, r_in] (F32): dx [M, in], dA [r_in, in],
    /// dS [r_out, r_in] and dB [out, r_out] (x's dtype), each only when requested (null otherwise). With G = scale·dyᵀ·u
    /// [out, r_in] (LoRA's dB on the folded B' = B·S): dB = G·Sᵀ and dS = Bᵀ·G.
    /// </summary>
    public static TuckerGradients Backward(
        Tensor x, Tensor w0, Tensor a, Tensor core, Tensor b, Tensor u, Tensor dy, float scale, bool needDx = true,
        bool needDA = true, bool needDCore = true, bool needDB = true)
    {
        const string op = "Tucker.Backward";
        TuckerDims d = CheckLinear(op, x, w0, a, core, b);
        AdapterDims ad = d.Adapter;
        Checks.Alive(u, op, nameof(u));
        Checks.Shape(op, nameof(u), u, "M, r_in", [ad.M, d.RIn], DType.F32, ad.Device);
        Checks.Alive(dy, op, nameof(dy));
        Checks.Shape(op, nameof(dy), dy, "M, out", [ad.M, ad.Out], ad.DType, ad.Device);
        Checks.Finite(op, nameof(scale), scale);
        if (!needDx && !needDA && !needDCore && !needDB) return new(null, null, null, null);

        Tensor? dx = null, dA = null, dCore = null, dB = null, g = null;
        try
        {
            bool needG = needDCore || needDB;
            if (needDx) dx = Tensor.Empty(ad.Device, ad.DType, ad.M, ad.In);
            if (needDA) dA = Tensor.Empty(ad.Device, ad.DType, d.RIn, ad.In);
            if (needG) g = Tensor.Empty(ad.Device, ad.DType, ad.Out, d.RIn);
            using (Tensor folded = FoldCore(core, b, d))
                ILoraKernels.On(ad.Device).Backward(x, w0, a, folded, u, dy, scale, 0f, 0, dx, dA, g);
            if (needDCore)
            {
                dCore = Tensor.Empty(ad.Device, ad.DType, d.ROut, d.RIn);
                Product(BatchedProduct.Single(d.ROut, d.RIn, ad.Out, transA: true), b, g!, 1f, 0f, dCore);
            }
            if (needDB)
            {
                dB = Tensor.Empty(ad.Device, ad.DType, ad.Out, d.ROut);
                Product(BatchedProduct.Single(ad.Out, d.ROut, d.RIn, transB: true), g!, core, 1f, 0f, dB);
            }
            return new(dx, dA, dCore, dB);
        }
        catch
        {
            Checks.DisposeAll(dx, dA, dCore, dB);
            throw;
        }
        finally
        {
            g?.Dispose();
        }
    }

    /// <summary>
    /// W0 += scale·B·S·A in place: a linear weight [out, in] (S [r_out, r_in]) or a convolution weight [O, C, kh, kw]
    /// (S [r_out, r_in, kh, kw], A [r_in, C], B [O, r_out]). One dtype and device.
    /// </summary>
    public static void Merge(Tensor w0, Tensor a, Tensor core, Tensor b, float scale) => MergeScaled("Tucker.Merge", w0, a, core, b, scale);

    /// <summary>W0 -= scale·B·S·A in place: undoes <see cref="Merge"/> up to rounding.</summary>
    public static void Unmerge(Tensor w0, Tensor a, Tensor core, Tensor b, float scale) => MergeScaled("Tucker.Unmerge", w0, a, core, b, -scale);

    private static void MergeScaled(string op, Tensor w0, Tensor a, Tensor core, Tensor b, float signedScale)
    {
        Checks.Alive(w0, op, nameof(w0));
        Checks.Finite(op, "scale", signedScale);
        if (w0.Rank == 2)
        {
            Checks.Matrix(op, nameof(w0), w0, "out, in");
            TuckerDims d = CheckFactors(op, w0, a, core, b, 0);
            using Tensor folded = FoldCore(core, b, d);
            ILoraKernels.On(w0.Device).Merge(w0, a, folded, signedScale);
            return;
        }
        if (w0.Rank != 4 || w0.ElementCount < 1)
            throw new ArgumentException($"{op}: w0 must be a linear weight [out, in] or a convolution weight [O, C, kh, kw], got {w0.Describe()}", nameof(w0));
        Checks.Size(op, nameof(w0), w0);
        long outChannels = w0.Shape[0], inChannels = w0.Shape[1], taps = w0.Shape[2] * w0.Shape[3];
        (long rIn, long rOut) = CheckConvFactors(op, w0, a, core, b);
        // M_p [C, kh·kw] = Aᵀ·S_p for each of the r_out core slices, then W [O, C·kh·kw] += scale·B·M: r_out small
        // products and one GEMM (forming per output channel instead would take O small products).
        using Tensor m = Tensor.Empty(w0.Device, w0.DType, rOut, inChannels * taps);
        Product(new BatchedProduct(rOut, inChannels, taps, rIn, true, 0, false, rIn * taps, inChannels * taps), a, core, 1f, 0f, m);
        Product(BatchedProduct.Single(outChannels, inChannels * taps, rOut), b, m, signedScale, 1f, w0);
    }

    /// <summary>
    /// The core and factors of a convolution's Tucker adapter against W0 [O, C, kh, kw]: A [r_in, C], S [r_out, r_in, kh, kw],
    /// B [O, r_out], 1 ≤ r_in ≤ C and 1 ≤ r_out ≤ O, W0's dtype and device; returns (r_in, r_out).
    /// </summary>
    internal static (long RIn, long ROut) CheckConvFactors(string op, Tensor w0, Tensor a, Tensor core, Tensor b)
    {
        long outChannels = w0.Shape[0], inChannels = w0.Shape[1];
        Checks.Alive(a, op, nameof(a));
        Checks.Alive(core, op, nameof(core));
        Checks.Alive(b, op, nameof(b));
        if (a.Rank != 2 || a.Shape[1] != inChannels || a.DType != w0.DType || !ReferenceEquals(a.Device, w0.Device))
            throw new ArgumentException($"{op}: a must be [r_in, C] = [r_in, {inChannels}] with dtype {w0.DType} on {w0.Device}, got {a.Describe()}", nameof(a));
        if (b.Rank != 2 || b.Shape[0] != outChannels || b.DType != w0.DType || !ReferenceEquals(b.Device, w0.Device))
            throw new ArgumentException($"{op}: b must be [O, r_out] = [{outChannels}, r_out] with dtype {w0.DType} on {w0.Device}, got {b.Describe()}", nameof(b));
        long rIn = a.Shape[0], rOut = b.Shape[1];
        CheckRank(op, "a", "r_in", rIn, inChannels, "C");
        CheckRank(op, "b", "r_out", rOut, outChannels, "O");
        Checks.Shape(op, nameof(core), core, "r_out, r_in, kh, kw", [rOut, rIn, w0.Shape[2], w0.Shape[3]], w0.DType, w0.Device);
        return (rIn, rOut);
    }

    /// <summary>
    /// A strided batched product on the tensors' device after checking that every batch element of a, b and c lies
    /// inside its tensor (the kernels read and write raw memory through the strides), and that a, b and c share one
    /// dtype and device. The families' own ops call it with shapes they have already checked.
    /// </summary>
    internal static void Product(in BatchedProduct p, Tensor a, Tensor b, float alpha, float beta, Tensor c)
    {
        static void Extent(string name, Tensor t, long batch, long stride, long size)
        {
            if (size > 0 && (batch - 1) * stride + size > t.ElementCount)
                throw new InvalidOperationException($"Tucker.Product: operand {name} ({t.Describe()}) is too small for {batch} products of {size} elements {stride} apart.");
        }
        if (a.DType != c.DType || b.DType != c.DType || !ReferenceEquals(a.Device, c.Device) || !ReferenceEquals(b.Device, c.Device))
            throw new InvalidOperationException($"Tucker.Product: the operands {a.Describe()}, {b.Describe()} and {c.Describe()} must share one dtype and device.");
        Extent("a", a, p.Batch, p.StrideA, p.M * p.K);
        Extent("b", b, p.Batch, p.StrideB, p.K * p.N);
        Extent("c", c, p.Reduce ? 1 : p.Batch, p.StrideC, p.M * p.N);
        if (p.Batch < 1 || p.M < 1 || p.N < 1) return;
        ITuckerKernels.On(c.Device).BatchedMatmul(p, a, b, alpha, beta, c);
    }

    /// <summary>B' = B·S [out, r_in], the factor the LoRA kernels multiply u by (a new tensor, caller-owned).</summary>
    private static Tensor FoldCore(Tensor core, Tensor b, TuckerDims d)
    {
        Tensor folded = Tensor.Empty(b.Device, b.DType, d.Adapter.Out, d.RIn);
        try
        {
            Product(BatchedProduct.Single(d.Adapter.Out, d.RIn, d.ROut), b, core, 1f, 0f, folded);
            return folded;
        }
        catch
        {
            folded.Dispose();
            throw;
        }
    }

    private readonly record struct TuckerDims(AdapterDims Adapter, long RIn, long ROut);

    /// <summary>x [M, in] against W0 [out, in], then the factors (<see cref="CheckFactors"/>).</summary>
    private static TuckerDims CheckLinear(string op, Tensor x, Tensor w0, Tensor a, Tensor core, Tensor b)
    {
        Checks.Alive(w0, op, nameof(w0));
        (_, long inFeatures) = Checks.Matrix(op, nameof(w0), w0, "out, in");
        long m = AdapterChecks.Activations(op, x, inFeatures, w0.DType, w0.Device, "w0");
        return CheckFactors(op, w0, a, core, b, m);
    }

    /// <summary>A [r_in, in] with 1 ≤ r_in ≤ in, S [r_out, r_in], B [out, r_out] with 1 ≤ r_out ≤ out; W0's dtype and device.</summary>
    private static TuckerDims CheckFactors(string op, Tensor w0, Tensor a, Tensor core, Tensor b, long m)
    {
        long outFeatures = w0.Shape[0], inFeatures = w0.Shape[1];
        long rIn = AdapterChecks.Rank(op, "the Tucker adapter", a, inFeatures, w0.DType, w0.Device);
        CheckRank(op, "a", "r_in", rIn, inFeatures, "in");
        Checks.Alive(b, op, nameof(b));
        if (b.Rank != 2 || b.Shape[0] != outFeatures || b.DType != w0.DType || !ReferenceEquals(b.Device, w0.Device))
            throw new ArgumentException($"{op}: b must be [out, r_out] = [{outFeatures}, r_out] with dtype {w0.DType} on {w0.Device}, got {b.Describe()}", nameof(b));
        long rOut = b.Shape[1];
        CheckRank(op, "b", "r_out", rOut, outFeatures, "out");
        Checks.Size(op, nameof(b), b);
        Checks.Alive(core, op, nameof(core));
        Checks.Shape(op, nameof(core), core, "r_out, r_in", [rOut, rIn], w0.DType, w0.Device);
        return new TuckerDims(new AdapterDims(m, inFeatures, outFeatures, rIn, w0.DType, w0.Device), rIn, rOut);
    }

    /// <summary>A mode's rank must be at least 1 and at most the dimension it compresses.</summary>
    internal static void CheckRank(string op, string tensor, string rank, long value, long dimension, string dimensionName)
    {
        if (value < 1 || value > dimension)
            throw new ArgumentOutOfRangeException(tensor,
                $"{op}: {tensor} gives {rank} = {value}, but a Tucker rank must be in [1, {dimensionName}] = [1, {dimension}] (a rank above the dimension it compresses adds parameters and no expressiveness).");
    }
}
