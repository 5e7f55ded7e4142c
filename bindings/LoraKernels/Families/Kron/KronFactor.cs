// One factor of a Kronecker adapter as PEFT stores it (REFERENCE.md §5.3): a full matrix (lokr_w1, lokr_w2) or the
// product of two low-rank pieces (lokr_w1_a [rows, r] · lokr_w1_b [r, cols], likewise w2; for a convolution's w2 the
// columns are in_n·kh·kw and the product is read as [out_k, in_n, kh, kw]). The kernels take dense factors, so a
// low-rank factor is formed for each call (rows·r·cols FLOPs, a factor-sized temporary, never [out, in]) and its
// gradient split back: for w = a·b, dA = dW·bᵀ and dB = aᵀ·dW.
using LoraKernels.Autograd;
using LoraKernels.Families.Tucker;

namespace LoraKernels.Families.Kron;

internal sealed class KronFactor : IDisposable
{
    private KronFactor(Parameter? full, Parameter? a, Parameter? b, long[] shape)
    {
        Full = full;
        A = a;
        B = b;
        Shape = shape;
    }

    /// <summary>A full factor (owns <paramref name="value"/>).</summary>
    public static KronFactor Dense(string name, Tensor value) => new(new Parameter(name, value), null, null, value.Shape.ToArray());

    /// <summary>A factor a·b read as <paramref name="shape"/> (owns both tensors; disposes them if it cannot be built).</summary>
    public static KronFactor LowRank(string nameA, Tensor a, string nameB, Tensor b, long[] shape)
    {
        Parameter? pa = null;
        try
        {
            pa = new Parameter(nameA, a);
            return new KronFactor(null, pa, new Parameter(nameB, b), shape);
        }
        catch
        {
            if (pa is null) a.Dispose(); else pa.Dispose();
            b.Dispose();
            throw;
        }
    }

    /// <summary>The full factor (lokr_w1 / lokr_w2), or null when low-rank.</summary>
    public Parameter? Full { get; }

    /// <summary>The low-rank pieces (lokr_w*_a [rows, r], lokr_w*_b [r, cols]), or null when full.</summary>
    public Parameter? A { get; }
    public Parameter? B { get; }

    /// <summary>The dense factor's shape ([rows, cols], or [out_k, in_n, kh, kw] for a convolution's w2).</summary>
    public long[] Shape { get; }

    public long Rows => Shape[0];
    public long Columns => Shape.Skip(1).Aggregate(1L, (p, d) => p * d);

    /// <summary>Its trainable parameters: the full one, or a then b.</summary>
    public IEnumerable<Parameter> Parameters() => Full is not null ? [Full] : [A!, B!];

    /// <summary>
    /// The dense factor: the full parameter's value (Owned false: do not dispose it), or a·b in a new tensor
    /// (Owned true).
    /// </summary>
    public (Tensor Value, bool Owned) Form()
    {
        if (Full is not null) return (Full.Value, false);
        Tensor a = A!.Value;
        Tensor w = Tensor.Empty(a.Device, a.DType, Shape);
        try
        {
            Ops.Tucker.Product(BatchedProduct.Single(Rows, Columns, a.Shape[1]), a, B!.Value, 1f, 0f, w);
            return (w, true);
        }
        catch
        {
            w.Dispose();
            throw;
        }
    }

    /// <summary>
    /// The parameters' gradients (in <see cref="Parameters"/>' order) from the dense factor's gradient
    /// <paramref name="dense"/> (taken: returned as the full factor's gradient, or disposed after the split).
    /// <paramref name="needs"/> says which parameter's gradient is wanted.
    /// </summary>
    public Tensor?[] Gradients(Tensor? dense, Func<int, bool> needs)
    {
        if (Full is not null) return [dense];
        if (dense is null) return [null, null];
        Tensor a = A!.Value, b = B!.Value;
        long rank = a.Shape[1];
        Tensor? dA = null, dB = null;
        try
        {
            if (needs(0))
            {
                dA = Tensor.Empty(a.Device, a.DType, Rows, rank);
                Ops.Tucker.Product(BatchedProduct.Single(Rows, rank, Columns, transB: true), dense, b, 1f, 0f, dA);
            }
            if (needs(1))
            {
                dB = Tensor.Empty(b.Device, b.DType, rank, Columns);
                Ops.Tucker.Product(BatchedProduct.Single(rank, Columns, Rows, transA: true), a, dense, 1f, 0f, dB);
            }
            return [dA, dB];
        }
        catch
        {
            Ops.Checks.DisposeAll(dA, dB);
            throw;
        }
        finally
        {
            dense.Dispose();
        }
    }

    public void Dispose()
    {
        Full?.Dispose();
        A?.Dispose();
        B?.Dispose();
    }
}
