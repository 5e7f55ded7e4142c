// DoRA with dropout p > 0 in training, exactly PEFT's formula (REFERENCE.md §2.2 step 6), n detached:
//   y = (x W0ᵀ + b) + (g − 1) ⊙ (x_d W0ᵀ) + g ⊙ s·(x_d Aᵀ Bᵀ),   x_d = dropout(x), g = m / n,
// rewritten as y = (x − x_d) W0ᵀ + b + g ⊙ z_d with z_d = x_d W0ᵀ + s·(x_d Aᵀ) Bᵀ, so it is the plain
// DoRA op on x_d plus one base product on x − x_d: two base products, as PEFT's. The backward
// follows: the DoRA backward on x_d gives dA, dB, dm (= Σ_t dy ⊙ z_d / n) and d(x_d); the base term
// gives dv = dy W0; dx = dv + mask ⊙ (d(x_d) − dv), i.e. dy W0 + mask ⊙ ((dy ⊙ (g − 1)) W0 + s·((dy ⊙ g) B) A).
// W0 is dense or quantized (QDoRA; deq(W) never formed). The mask is the LoRA kernels' hashed one
// (lk_dropout_factor on x's flat index). F32 only (the combination uses Elementwise.Axpy).
using LoraKernels.Families.Dora;

namespace LoraKernels.Ops;

public static partial class Dora
{
    /// <summary>The tensors the dropout forward keeps for <see cref="BackwardWithDropout"/>.</summary>
    public sealed record DropoutState(Tensor U, Tensor Z, Tensor XDropped) : IDisposable
    {
        public void Dispose()
        {
            U.Dispose();
            Z.Dispose();
            XDropped.Dispose();
        }
    }

    /// <summary>
    /// dropout(x) = x ⊙ mask with the LoRA kernels' hashed mask (0 or 1/(1 − p) per flat element, from
    /// <paramref name="seed"/>): the x_d that Lora.Forward's dropout multiplies by Aᵀ. F32.
    /// </summary>
    public static Tensor Dropout(Tensor x, float p, ulong seed)
    {
        const string op = "Dora.Dropout";
        Checks.Alive(x, op, nameof(x));
        Checks.Fp32(op, nameof(x), x);
        Checks.NotEmpty(op, nameof(x), x);
        Checks.DropoutProbability(op, nameof(p), p);
        Tensor y = Tensor.Empty(x.Device, DType.F32, [.. x.Shape]);
        try
        {
            IDoraKernels.On(x.Device).Dropout(x, p, seed, y);
            return y;
        }
        catch
        {
            y.Dispose();
            throw;
        }
    }

    /// <summary>
    /// PEFT's training forward with dropout: y = (x W0ᵀ + bias) + (g − 1) ⊙ (x_d W0ᵀ) + g ⊙ s·(x_d Aᵀ) Bᵀ,
    /// x_d = <see cref="Dropout"/>(x, p, seed), over a dense w0 (pass <paramref name="quantizedW0"/> null) or a
    /// quantized one (pass <paramref name="w0"/> null). F32. Returns Y and the state for the backward.
    /// </summary>
    public static DoraDropoutForwardResult ForwardWithDropout(Tensor x, Tensor? w0, QuantizedWeight? quantizedW0, Tensor? bias,
                                                                     Tensor a, Tensor b, Tensor magnitude, Tensor norm, float scale,
                                                                     float p, ulong seed)
    {
        const string op = "Dora.ForwardWithDropout";
        CheckBase(op, w0, quantizedW0);
        Tensor xd = Dropout(x, p, seed);
        Tensor? y = null, u = null, z = null;
        try
        {
            // The DoRA op on x_d: g ⊙ z_d, and z_d, u kept. Its checks cover x, W0, A, B, m, n, scale.
            Tensor yd;
            (yd, u, z) = quantizedW0 is not null
                ? Forward(xd, quantizedW0, null, a, b, magnitude, norm, scale)
                : Forward(xd, w0!, null, a, b, magnitude, norm, scale);
            using (yd)
            {
                // (x − x_d) W0ᵀ + bias, then + g ⊙ z_d.
                using Tensor kept = x.Clone();
                Elementwise.Axpy(-1f, xd, kept);
                if (quantizedW0 is not null)
                {
                    y = Nf4.Matmul(kept, quantizedW0, bias);
                }
                else
                {
                    var (baseY, unusedU) = Lora.Forward(kept, w0!, bias, a, b, 0f);
                    unusedU.Dispose();
                    y = baseY;
                }
                Elementwise.Axpy(1f, yd, y);
            }
            return new(y, new DropoutState(u, z!, xd));
        }
        catch
        {
            Checks.DisposeAll(y, u, z, xd);
            throw;
        }
    }

    /// <summary>
    /// Gradients of <see cref="ForwardWithDropout"/> (norm detached) given dy and its state; pass the forward's
    /// base, scale, p and seed. dm_j = Σ_t dy·z_d / n_j; dA, dB as DoRA's on x_d;
    /// dx = dy W0 + mask ⊙ ((dy ⊙ (g − 1)) W0 + s·((dy ⊙ g) B) A). Each only when requested.
    /// </summary>
    public static DoraGradients BackwardWithDropout(
        Tensor x, Tensor? w0, QuantizedWeight? quantizedW0, Tensor a, Tensor b, Tensor magnitude, Tensor norm, DropoutState state,
        Tensor dy, float scale, float p, ulong seed,
        bool needDx = true, bool needDA = true, bool needDB = true, bool needDMagnitude = true)
    {
        const string op = "Dora.BackwardWithDropout";
        CheckBase(op, w0, quantizedW0);
        ArgumentNullException.ThrowIfNull(state);
        Checks.Alive(x, op, nameof(x));
        Checks.SameAs(op, "state.XDropped", state.XDropped, nameof(x), x);
        Checks.DropoutProbability(op, nameof(p), p);
        Tensor xd = state.XDropped;
        var (dxd, dA, dB, dm) = quantizedW0 is not null
            ? Backward(xd, quantizedW0, a, b, magnitude, norm, state.U, state.Z, dy, scale, needDx, needDA, needDB, needDMagnitude)
            : Backward(xd, w0!, a, b, magnitude, norm, state.U, state.Z, dy, scale, needDx, needDA, needDB, needDMagnitude);
        Tensor? dv = null, masked = null;
        try
        {
            if (dxd is null) return new(null, dA, dB, dm);
            // dv = dy W0 (the base term's input gradient, scale 0 leaves no adapter term).
            dv = quantizedW0 is not null
                ? Qlora.Backward(xd, quantizedW0, a, b, state.U, dy, 0f, needDA: false, needDB: false).Dx
                : Lora.Backward(xd, w0!, a, b, state.U, dy, 0f, needDA: false, needDB: false).Dx;
            // dx = dv + mask ⊙ (d(x_d) − dv), written into dv.
            Elementwise.Axpy(-1f, dv!, dxd);
            masked = Dropout(dxd, p, seed);
            Elementwise.Axpy(1f, masked, dv!);
            Tensor dx = dv!;
            dv = null;
            return new(dx, dA, dB, dm);
        }
        catch
        {
            Checks.DisposeAll(dA, dB, dm, dv);
            throw;
        }
        finally
        {
            dxd?.Dispose();
            masked?.Dispose();
        }
    }

    private static void CheckBase(string op, Tensor? w0, QuantizedWeight? quantizedW0)
    {
        if ((w0 is null) == (quantizedW0 is null))
            throw new ArgumentException($"{op}: pass exactly one of w0 (dense) and quantizedW0 (QDoRA).", nameof(w0));
    }
}
